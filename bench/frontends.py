"""Front ends side by side: the same app, model and machine, one run, slow clients included.

    apt-get install -y wrk nginx && .venv/bin/pip install granian waitress
    .venv/bin/python bench/frontends.py [--duration 6] [--rounds 3] [--baseline] [--out DIR]

Candidates, each started by emotion_server.launcher on a loopback port with 2 workers (one
process for waitress) serving the bundled INT8 model:
- sync: gunicorn's sync workers, the design before this benchmark;
- gevent: `emotion-server serve` now (emotion_server.workers.GeventWorker: gevent with the
  per-request read deadline, EMOTION_READ_TIMEOUT_S=10);
- gthread-2x4: gunicorn gthread, 4 threads per worker, with the same read deadline;
- granian: granian's WSGI interface (Rust HTTP server), 2 workers, header read timeout 10 s;
- waitress: one process, 4 threads, channel timeout 10 s (waitress reads whole requests on
  its event loop before a thread sees them);
- nginx+sync: nginx (client_header_timeout and client_body_timeout 10 s, request buffering)
  in front of gunicorn's sync workers on another loopback port.
All candidates run at once; the 48x48 face-crop load (wrk, bench/post.lua; 1 and 8
connections) goes to each in turn, --rounds times over, and the median run is kept (the
machine is shared, and its load changes over minutes), with each worker's share of the CPU
during the 8-connection run (keep-alive spread) and the cores wrk used. Then, per candidate:
64 slow clients (emotion_server.slowclients: a third trickle headers at 1 byte/s, a third
trickle a body, a third stay silent) with /healthz timed, alone and with the 8-connection
crop load, then how and when each was cut off (cap: 25 s); 1,000
connections at once sending GET /healthz; RSS of each process after the load; cold start
(process start to the first 200 of /readyz). Also the in-process ceiling of the model
(bench/run.py) and, with --baseline (the [bench] extra), the original design.
Writes frontends.json and frontends.md into --out and prints the markdown.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from emotion_server.launcher import Server, free_port
from emotion_server.slowclients import SlowClients, burst, healthz_seconds, summarize

# bench/run.py's helpers are imported where used (python puts bench/ on the path when it runs
# this script), so scripts/docs.py can load this file for to_markdown() alone.
ROOT = Path(__file__).resolve().parents[1]
READ_TIMEOUT_S = 10
SLOW_CLIENTS = 64
SLOW_CAP_S = 25.0
SLOW_ONLY_S = 1.5  # /healthz probed with the slow clients alone, before the crop load starts
GUNICORN = (sys.executable, "-m", "gunicorn", "--config", "python:emotion_server.gunicorn_conf")
APP = "emotion_server.api:create_app()"
NGINX_CONF = """daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    client_header_timeout {timeout}s;
    client_body_timeout {timeout}s;
    client_max_body_size 64m;
    keepalive_timeout 5s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_request_buffering on;
            proxy_read_timeout 30s;
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def candidates(metrics_dir: str) -> dict[str, dict]:
    """name -> Server options. `{port}` is the public port."""
    shared = {"PROMETHEUS_MULTIPROC_DIR": None, "EMOTION_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}
    granian = shutil.which("granian") or str(Path(sys.executable).with_name("granian"))
    return {
        "sync": {"command": [*GUNICORN, "--worker-class", "sync", APP], "env": shared},
        "gevent": {"env": shared},
        "gthread-2x4": {"env": {**shared, "EMOTION_WORKER_THREADS": "4"}},
        "granian": {
            "command": [
                *(granian, "--interface", "wsgi", "--factory", "--workers", "2"),
                *("--host", "127.0.0.1", "--port", "{port}"),
                *("--http1-header-read-timeout", str(READ_TIMEOUT_S * 1000)),
                "emotion_server.api:create_app",
            ],
            "env": {**shared, "PROMETHEUS_MULTIPROC_DIR": metrics_dir + "/granian"},
            "workers": 2,
        },
        "waitress": {
            "command": [
                *(sys.executable, "-m", "waitress", "--listen=127.0.0.1:{port}", "--threads=4"),
                f"--channel-timeout={READ_TIMEOUT_S}",
                *("--call", "emotion_server.api:create_app"),
            ],
            "env": {**shared, "PROMETHEUS_MULTIPROC_DIR": metrics_dir + "/waitress"},
            "workers": None,
        },
        "nginx+sync": {
            "command": [sys.executable, str(Path(__file__).resolve()), "--nginx-front", "{port}"],
            "env": shared,
            "workers": None,
        },
    }


def nginx_front(port: int) -> int:
    """Run nginx on `port` in front of gunicorn's sync workers until SIGTERM, then stop both
    (nginx at once: it holds no work; gunicorn drains)."""
    tmp = tempfile.mkdtemp(prefix="bench-nginx-")
    upstream = free_port()
    conf = Path(tmp) / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(tmp=tmp, timeout=READ_TIMEOUT_S, port=port, upstream=upstream)
    )
    env = {**os.environ, "PORT": str(upstream)}
    gunicorn = subprocess.Popen([*GUNICORN, "--worker-class", "sync", APP], env=env)
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-e", "stderr"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.2):
        if gunicorn.poll() is not None or nginx.poll() is not None:
            break
    nginx.send_signal(signal.SIGQUIT)
    gunicorn.send_signal(signal.SIGTERM)
    code = gunicorn.wait(timeout=60)
    nginx.wait(timeout=30)
    shutil.rmtree(tmp, ignore_errors=True)
    return code


def leaves(pid: int) -> list[psutil.Process]:
    """The processes under `pid` that have no children: the workers (or the one process)."""
    try:
        root = psutil.Process(pid)
        found = [p for p in root.children(recursive=True) if not p.children()]
        return found or [root]
    except psutil.NoSuchProcess:
        return []


def _children_cpu_s() -> float:
    """CPU seconds this process's finished children (the wrk runs) have used so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_of(processes: list[psutil.Process]) -> dict[int, float]:
    times = {}
    for process in processes:
        try:
            t = process.cpu_times()
            times[process.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return times


def crop_row(server: Server, crop: Path, connections: int, duration: int) -> dict:
    """One wrk run against `server`, with the server's CPU per request, the busiest worker's
    share of that CPU (keep-alive spread) and the cores wrk itself used."""
    from run import cpu_seconds, run_wrk

    pids = [server.pid] + [p.pid for p in psutil.Process(server.pid).children(True)]
    workers = leaves(server.pid)
    before, cpu_before, wrk_before = cpu_of(workers), cpu_seconds(pids), _children_cpu_s()
    row = run_wrk(server.url, crop, connections, duration)
    row["load_generator_cores"] = round((_children_cpu_s() - wrk_before) / duration, 2)
    used = {pid: t - before.get(pid, 0.0) for pid, t in cpu_of(workers).items()}
    row["server_cpu_ms_per_request"] = round(
        (cpu_seconds(pids) - cpu_before) / max(row["requests"], 1) * 1000, 3
    )
    total = sum(used.values()) or 1.0
    row["busiest_worker_cpu_share"] = round(max(used.values(), default=0) / total, 2)
    row["load_average"] = round(os.getloadavg()[0], 2)
    return row


def median_row(rows: list[dict]) -> dict:
    """The run with the median throughput, and every run's throughput beside it."""
    ordered = sorted(rows, key=lambda row: row["throughput_rps"])
    return {**ordered[len(ordered) // 2], "runs_rps": [row["throughput_rps"] for row in rows]}


def slow_clients_phase(server: Server, crop: Path, duration: int) -> dict:
    """64 slow clients; /healthz probed with them alone, then with the crop load as well; how
    each slow client was cut off; then 1,000 connections at once; RSS after."""
    from run import run_wrk

    clients = SlowClients(server.url, SLOW_CLIENTS, cap=SLOW_CAP_S).start()
    health: list[float | None] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            health.append(healthz_seconds(server.url, timeout=SLOW_CAP_S))
            time.sleep(0.25)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    time.sleep(SLOW_ONLY_S)  # the slow clients alone, then the crop load with them
    idle_probes = len(health)
    loaded = run_wrk(server.url, crop, 8, duration)
    done.set()
    prober.join(timeout=SLOW_CAP_S + 5)
    results = clients.wait()

    def worst(probes: list[float | None]) -> float | None:
        answered = [s for s in probes if s is not None]
        return round(max(answered), 3) if answered else None

    return {
        "crop_8_with_slow_clients": loaded,
        "slow_clients": {
            "healthz_probes": len(health),
            "healthz_failed": sum(1 for s in health if s is None),
            "healthz_max_s_slow_clients_only": worst(health[:idle_probes]),
            "healthz_max_s": worst(health),
            "kinds": summarize(results),
        },
        "burst_1000": burst(server.url, 1000, timeout=60),
        "rss_mb": sorted(
            round(p.memory_info().rss / 2**20, 1) for p in leaves(server.pid) if p.is_running()
        ),
    }


def measure_all(
    options: dict[str, dict], workloads: dict[str, Path], duration: int, rounds: int
) -> dict[str, dict]:
    """Start every candidate, then run the crop load on each in turn, `rounds` times over
    (the machine is shared: interleaving spreads its changing load over all of them; the
    median run is kept), then the slow-client phase on each, then stop them all."""
    from run import run_wrk

    crop = workloads["face crop 48x48"]
    servers: dict[str, Server] = {}
    entries: dict[str, dict] = {}
    try:
        for name, option in options.items():
            servers[name] = Server(cwd=ROOT, ready_timeout=120, **{"workers": 2, **option})
            entries[name] = {"cold_start_s": round(servers[name].ready_s, 2)}
            run_wrk(servers[name].url, crop, 8, 2)  # warm-up
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(rounds):
            for name, server in servers.items():
                for connections in (1, 8):
                    row = crop_row(server, crop, connections, duration)
                    runs.setdefault((name, connections), []).append(row)
        for name, server in servers.items():
            entries[name]["crop"] = [median_row(runs[name, c]) for c in (1, 8)]
            entries[name].update(slow_clients_phase(server, crop, duration))
            print(f"{name}: {verdict(entries[name])}", file=sys.stderr)
    finally:
        for name, server in servers.items():
            server.stop(timeout=60)
            if name in entries:
                entries[name]["stop_exit_code"] = server.stopped.exit_code
    return entries


def baseline(workloads: dict[str, Path], duration: int) -> dict:
    """The original design (bench/baseline_server.py: Flask's server, Keras per request)."""
    from run import run_wrk

    server = Server(
        command=[sys.executable, str(ROOT / "bench" / "baseline_server.py"), "{port}"],
        workers=None,
        ready_path="/summary",
        ready_timeout=180,
        cwd=ROOT,
    )
    try:
        crop = workloads["face crop 48x48"]
        run_wrk(server.url, crop, 8, 2)
        rows = [run_wrk(server.url, crop, c, duration) for c in (1, 8)]
    finally:
        server.stop()
    return {"cold_start_s": round(server.ready_s, 2), "crop": rows}


def verdict(entry: dict) -> str:
    """Which of the issue's slow-client promises held (healthz < 1 s, throughput >= 80%,
    every slow client cut off within the read timeout's bound and how)."""
    slow = entry["slow_clients"]
    kept = entry["crop_8_with_slow_clients"]["throughput_rps"] / max(
        entry["crop"][1]["throughput_rps"], 1e-9
    )
    cut = all("open" not in answer for kind in slow["kinds"].values() for answer in kind["answers"])
    alone = slow.get("healthz_max_s_slow_clients_only", slow["healthz_max_s"])
    healthy = slow["healthz_failed"] == 0 and (alone or 99) < 1.0
    return (
        f"healthz<1s: {'yes' if healthy else 'no'}; throughput kept: {kept:.2f}; "
        f"all cut off: {'yes' if cut else 'no'}"
    )


def to_markdown(result: dict) -> str:
    lines = [
        f"Front ends of {result['date']} on {result['machine']} (`{result['command']}`; "
        f"wrk, 1 thread, loopback, {result['duration_s']} s per run; 48x48 face crop; every "
        f"candidate running at once and loaded in turn, {result.get('rounds', 1)} rounds, the "
        "median run shown; the load generators share the server's 2 cores).",
        "",
        "| front end | conc. | req/s | p50 ms | p99 ms | errors | server CPU ms/req "
        "| busiest worker's CPU share | wrk's cores | load average | req/s of each round |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in result["candidates"].items():
        for row in entry["crop"]:
            lines.append(
                f"| {name} | {row['connections']} | {row['throughput_rps']} | {row['p50_ms']} "
                f"| {row['p99_ms']} | {row['errors']} | {row['server_cpu_ms_per_request']} "
                f"| {row['busiest_worker_cpu_share']} | {row.get('load_generator_cores', '')} "
                f"| {row.get('load_average', '')} "
                f"| {', '.join(map(str, row.get('runs_rps', [])))} |"
            )
    lines += [
        "",
        f"With {SLOW_CLIENTS} slow clients connected (a third trickle headers, a third a body, "
        f"a third silent; read timeouts {READ_TIMEOUT_S} s; observed for {SLOW_CAP_S:g} s at "
        f"most): /healthz probed every 0.25 s, {SLOW_ONLY_S:g} s with the slow clients alone, "
        "then while the 8-connection crop load runs as well; then 1,000 connections at once.",
        "",
        "| front end | healthz max s: slow clients alone; with the load too (failed/probes) "
        "| req/s at 8 (p99 ms) | headers trickled | body trickled | silent | 1,000 at once "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in result["candidates"].items():
        slow = entry["slow_clients"]
        kinds = slow["kinds"]

        def cell(kind: str, kinds: dict = kinds) -> str:
            info = kinds[kind]
            answers = ", ".join(f"{count}x {what}" for what, count in info["answers"].items())
            return f"{answers} after {info['cut_off_s_min']}-{info['cut_off_s_max']} s"

        load = entry["crop_8_with_slow_clients"]
        burst_answers = ", ".join(f"{v}x {k}" for k, v in entry["burst_1000"]["answers"].items())
        lines.append(
            f"| {name} | {slow.get('healthz_max_s_slow_clients_only')}; {slow['healthz_max_s']} "
            f"({slow['healthz_failed']}/{slow['healthz_probes']}) "
            f"| {load['throughput_rps']} ({load['p99_ms']}) "
            f"| {cell('headers')} | {cell('body')} | {cell('silent')} "
            f"| {burst_answers} in {entry['burst_1000']['seconds']} s | {verdict(entry)} |"
        )
    lines += [
        "",
        "| front end | cold start s | RSS per process after the load, MB | exit code on SIGTERM |",
        "|---|---|---|---|",
    ]
    for name, entry in result["candidates"].items():
        lines.append(
            f"| {name} | {entry['cold_start_s']} | {', '.join(map(str, entry['rss_mb']))} "
            f"| {entry['stop_exit_code']} |"
        )
    chosen = result["candidates"][result["chosen"]]["crop"]
    best = max(row["throughput_rps"] for row in chosen)
    lines += [
        "",
        f"In-process ceiling of {result['ceiling']['model']} ({result['ceiling']['tta']} "
        f"test-time augmentation, {result['ceiling']['threads']} threads): "
        f"{result['ceiling']['faces_per_s']} faces/s; {result['chosen']} at 8 connections: "
        f"{best} req/s = {best / result['ceiling']['faces_per_s']:.2f} of it.",
    ]
    if result.get("baseline"):
        base = result["baseline"]["crop"]
        lines.append(
            f"The original design (bench/baseline_server.py, same .h5): {base[1]['throughput_rps']}"
            f" req/s at 8 connections, p50 {base[0]['p50_ms']} ms at 1; {result['chosen']}: "
            f"{best / base[1]['throughput_rps']:.1f}x the throughput, "
            f"{chosen[0]['p50_ms'] / base[0]['p50_ms']:.3f} of the p50."
        )
    else:
        lines.append("The original design was not run (`--baseline` needs the [bench] extra).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="crop runs per candidate, interleaved; median kept"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--only", action="append", help="run only these candidates")
    parser.add_argument("--baseline", action="store_true", help="also run the original design")
    parser.add_argument("--nginx-front", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from run import ceiling, make_workloads, run_header, write_results

    if args.nginx_front:
        sys.exit(nginx_front(args.nginx_front))
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install -y wrk nginx")
    folder = Path(tempfile.mkdtemp())
    workloads = make_workloads(folder)
    metrics_dir = str(folder / "metrics")
    result = {**run_header("frontends.py", args), "chosen": "gevent", "candidates": {}}
    for sub in ("granian", "waitress"):
        Path(metrics_dir, sub).mkdir(parents=True, exist_ok=True)
    chosen = {
        name: options
        for name, options in candidates(metrics_dir).items()
        if not args.only or name in args.only
    }
    result["candidates"] = measure_all(chosen, workloads, args.duration, args.rounds)
    result["ceiling"] = ceiling({})
    if args.baseline:
        result["baseline"] = baseline(workloads, args.duration)
    if result["chosen"] not in result["candidates"]:
        result["chosen"] = next(iter(result["candidates"]))
    write_results(Path(args.out), "frontends", result, to_markdown(result))


if __name__ == "__main__":
    main()
