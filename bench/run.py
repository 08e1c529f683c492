"""Benchmark the server side by side with the original design and with its own ceiling.

    .venv/bin/pip install -e ".[bench,dev]" && apt-get install -y wrk
    .venv/bin/python bench/run.py [--duration 10] [--rounds 3] [--out bench/results]

Contenders, each on a loopback port, driven by wrk (bench/post.lua) in the same run:
- baseline: bench/baseline_server.py, Flask's built-in server + Keras `model.predict` per
  request on models/emotion_model.h5 (TensorFlow backend): the original design;
- ours: `emotion-server serve`, as the README starts it (gunicorn, ONNX Runtime);
- ceiling: the served model in-process in batches of 256 (no HTTP, no decoding), with the
  same test-time augmentation the server uses.
- http-floor: bench/floor_app.py, an empty Flask view on the same gunicorn layout: what a
  request costs before any of our work (no ceiling, no goals);
- model-floor: bench/floor_app.py's `model_app`, the least a Flask view serving the bundled
  model does for a face crop (Pillow's decoding, the model, a JSON answer), on the same layout:
  a reference for what a Flask app of this model reaches here; face crops only (no face
  search);
- variants (--variant NAME:VAR=VALUE,...): our server again with other settings, for
  example the float32 model or another worker layout, each with its own ceiling;
- ours@REV (--against REV): our server as of a git revision, from a temporary worktree (its
  own src and models, this environment's packages), to measure a change side by side.
Workloads: a 48x48 greyscale face crop (JPEG) and a 640x480 photo with one face, both made
from scikit-image's astronaut photo; concurrency 1, 8 and 32. Each run also records the CPU
time all the server's processes used per request, which says where the time goes.

The machine's speed drifts by tens of percent within minutes, so all the contenders run at
once (idle while another is loaded) and the load goes round them --rounds times: each
workload and concurrency to every contender in turn (the order rotated each round), and each
round measures the ceilings again. The tables keep, per row, the run with the median
throughput and list every round's; each ratio is computed within each round (its contenders
measured minutes apart at most) and the median of those is reported. Writes results.json and
results.md into --out and prints the markdown, with the issue's goals as ratios (ours /
baseline, ours / ceiling) and whether each is met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from emotion_server import hostinfo
from emotion_server.launcher import Server

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)
FLOOR = "http-floor"
MODEL_FLOOR = "model-floor"
FLOORS = (FLOOR, MODEL_FLOOR)
CROP = "face crop 48x48"


def make_workloads(folder: Path) -> dict[str, Path]:
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    crop = astronaut.crop((160, 40, 290, 190)).convert("L").resize((48, 48))
    photo = Image.new("RGB", (640, 480), (120, 120, 120))
    photo.paste(astronaut.resize((480, 480)), (80, 0))
    paths = {CROP: folder / "crop.jpg", "photo 640x480": folder / "photo.jpg"}
    crop.save(paths[CROP], quality=95)
    photo.save(paths["photo 640x480"], quality=90)
    return paths


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its peak so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Contender:
    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        body: bytes,
        cwd: Path = ROOT,
        *,
        workloads: tuple[str, ...],  # the workloads it is loaded with
    ):
        self.name = name
        self.workloads = workloads

        def first_inference(server: Server) -> bool:
            try:
                response = requests.post(
                    server.url + "/inference",
                    data=body,
                    timeout=30,
                    headers={"Content-Type": "application/octet-stream"},
                )
            except requests.ConnectionError:
                return False
            return response.status_code == 200

        # Cold start: process start to the first 200 answer to an inference request.
        self.server = Server(env=env, command=command, workers=None, ready=first_inference, cwd=cwd)
        self.process = self.server.process
        self.url = self.server.url
        self.cold_start_s = self.server.ready_s

    def pids(self) -> list[int]:
        return [self.process.pid, *children(self.process.pid)]

    def load(self, body_path: Path, connections: int, duration: int) -> dict:
        """One wrk run, plus the server's CPU time per request (all its processes)."""
        pids = self.pids()
        before = cpu_seconds(pids)
        row = run_wrk(self.url, body_path, connections, duration)
        used = cpu_seconds(pids) - before
        row["server_cpu_ms_per_request"] = round(used / max(row["requests"], 1) * 1000, 3)
        return row

    def settle(self, quiet_s: float = 0.5, limit_s: float = 15.0) -> None:
        """Wait until the server has used no CPU for `quiet_s`: requests that wrk sent before
        it stopped are still being answered for a moment, holding a photo's activations."""
        deadline = time.monotonic() + limit_s
        last = cpu_seconds(self.pids())
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            now = cpu_seconds(self.pids())
            if now == last:
                return
            last = now

    def worker_rss_mb(self, field: str = "VmRSS") -> list[float]:
        workers = children(self.process.pid) or [self.process.pid]
        return [round(rss_mb(pid, field), 1) for pid in workers]

    def stop(self) -> None:
        self.server.stop()


def run_wrk(url: str, body_path: Path, connections: int, duration: int) -> dict:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(ROOT / "bench" / "post.lua"),
        url + "/inference",
    ]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body_path)},
        timeout=duration + 60,
    )
    match = re.search(r"BENCH_JSON (\{.*\})", out.stdout)
    if not match:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    raw = json.loads(match.group(1))
    errors = sum(
        raw[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return {
        "connections": connections,
        "requests": raw["requests"],
        "throughput_rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "errors": errors,
    }


def ceiling(env: dict[str, str], seconds: float = 5.0, cwd: Path = ROOT) -> dict:
    """Faces per second of the model a contender serves (its environment names it; a bundled
    one is looked for in `cwd`, its working directory, first), run in-process in batches of
    256 on all cores: no HTTP, no decoding. The code that runs it is this tree's, also for a
    revision's contender (`--against`): its model file, not its code, sets its ceiling."""
    from emotion_server.config import Settings
    from emotion_server.faces import NoDetector
    from emotion_server.model import EmotionModel
    from emotion_server.pipeline import Pipeline, PipelineOptions

    with contextlib.chdir(cwd):
        settings = Settings.from_env(env, threads=os.cpu_count() or 1, detector="none")
        pipeline = Pipeline(
            EmotionModel(settings.model_path, threads=settings.threads),
            NoDetector(),
            PipelineOptions.from_settings(settings),
        )
        model = os.path.relpath(settings.model_path)  # as the contender's folder has it
    crops = list(np.random.default_rng(0).integers(0, 256, (256, 48, 48), dtype=np.uint8))
    pipeline.classify_crops(crops)
    faces, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        pipeline.classify_crops(crops)
        faces += len(crops)
    return {
        "faces_per_s": round(faces / (time.perf_counter() - started), 1),
        "model": model,
        "tta": pipeline.tta,
        "threads": settings.threads,
    }


def goal_met(value: float, goal: str) -> bool:
    """'>= 30' or '<= 0.05' applied to `value`."""
    sign, bound = goal.split()
    return value >= float(bound) if sign == ">=" else value <= float(bound)


def machine() -> str:
    return f"{hostinfo.describe()}, Linux {platform.release()}"


def to_markdown(result: dict) -> str:
    lines = [
        f"Benchmark of {result['date']} on {result['machine']} (`{result['command']}`; "
        "wrk, 1 thread, loopback; server CPU: all the server's processes, per request).",
        "",
        "| contender | workload | conc. | req/s | p50 ms | p99 ms | errors | server CPU ms/req "
        "| req/s of each round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, contender in result["contenders"].items():
        for workload, rows in contender["workloads"].items():
            for row in rows:
                lines.append(
                    f"| {name} | {workload} | {row['connections']} | {row['throughput_rps']} | "
                    f"{row['p50_ms']} | {row['p99_ms']} | {row['errors']} | "
                    f"{row['server_cpu_ms_per_request']} | {_listed(row.get('rounds_rps'))} |"
                )
    lines += [
        "",
        "| contender | cold start s | RSS per worker MB, after the load | peak RSS per worker MB |",
        "|---|---|---|---|",
    ]
    for name, contender in result["contenders"].items():
        lines.append(
            f"| {name} | {contender['cold_start_s']} | "
            f"{', '.join(map(str, contender['worker_rss_mb']))} | "
            f"{', '.join(map(str, contender['worker_peak_rss_mb']))} |"
        )
    lines += [
        "",
        "| ceiling of | model | faces/s in-process | threads | TTA | faces/s of each round |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["ceilings"].items():
        lines.append(
            f"| {name} | {row['model']} | {row['faces_per_s']} | {row['threads']} | {row['tta']} "
            f"| {_listed(row.get('rounds'))} |"
        )
    by_round = result.get("ratio_rounds", {})
    lines += [
        "",
        "| ratio | measured (median of the rounds) | goal | met | each round |",
        "|---|---|---|---|---|",
    ]
    for key, (value, goal) in result["ratios"].items():
        met = "-" if goal.startswith("(") else ("yes" if goal_met(value, goal) else "no")
        lines.append(f"| {key} | {value} | {goal} | {met} | {_listed(by_round.get(key))} |")
    return "\n".join(lines) + "\n"


def _listed(values: list | None) -> str:
    return ", ".join(map(str, values)) if values else "-"


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (the lower of the two middle ones for an even
    count), with every run's throughput listed beside it."""
    ranked = sorted(runs, key=lambda row: row["throughput_rps"])
    return {**ranked[(len(ranked) - 1) // 2], "rounds_rps": [r["throughput_rps"] for r in runs]}


def combine_rounds(result: dict, rounds: list[dict], servers: list[str]) -> None:
    """Fill `result` from the rounds: per row the median run, the median ceiling, and each
    ratio computed within every round, the median of them reported."""
    for name, entry in result["contenders"].items():
        entry["workloads"] = {
            workload: [
                median_run([r["contenders"][name]["workloads"][workload][i] for r in rounds])
                for i in range(len(rows))
            ]
            for workload, rows in rounds[0]["contenders"][name]["workloads"].items()
        }
    result["ceilings"] = {
        name: {
            **rounds[0]["ceilings"][name],
            "faces_per_s": statistics.median(r["ceilings"][name]["faces_per_s"] for r in rounds),
            "rounds": [r["ceilings"][name]["faces_per_s"] for r in rounds],
        }
        for name in servers
    }
    per_round = []
    for r in rounds:
        view = {
            "contenders": {
                name: {
                    **result["contenders"][name],
                    "workloads": r["contenders"][name]["workloads"],
                }
                for name in result["contenders"]
            },
            "ceilings": r["ceilings"],
        }
        per_round.append(ratios(view, servers))
    result["ratio_rounds"] = {key: [found[key][0] for found in per_round] for key in per_round[0]}
    result["ratios"] = {
        key: (statistics.median(values), per_round[0][key][1])
        for key, values in result["ratio_rounds"].items()
    }


def ratios(result: dict, servers: list[str]) -> dict[str, tuple[float, str]]:
    """The issue's goals for each of our contenders, as (measured, goal)."""

    def crop_rows(name: str) -> list[dict]:
        return result["contenders"][name]["workloads"][CROP]

    def best_crop_rps(name: str) -> float:  # at the concurrency that served most
        return max(row["throughput_rps"] for row in crop_rows(name))

    base = result["contenders"].get("baseline")
    found = {}
    for name in servers:
        entry = result["contenders"][name]
        best = best_crop_rps(name)
        found[f"{name} / ceiling, face-crop throughput"] = (
            round(best / result["ceilings"][name]["faces_per_s"], 2),
            ">= 0.85",
        )
        floor = result["contenders"].get("http-floor")
        if floor is not None:
            # What an app with zero cost of its own could reach: the model's CPU per face at
            # the ceiling, against that plus the HTTP floor's CPU per request (same machine,
            # same run). A goal above this bound cannot be met by any app on this front end.
            ceiling = result["ceilings"][name]
            model_ms = 1000 * ceiling["threads"] / ceiling["faces_per_s"]
            floor_ms = min(row["server_cpu_ms_per_request"] for row in floor["workloads"][CROP])
            found[f"{name} / ceiling, bound set by the HTTP floor's CPU per request"] = (
                round(model_ms / (model_ms + floor_ms), 2),
                "(bound)",
            )
        found[f"{name} cold start, s"] = (entry["cold_start_s"], "<= 1.5")
        if base is None:
            continue
        base_best = best_crop_rps("baseline")
        found[f"{name} / baseline, face-crop throughput"] = (round(best / base_best, 1), ">= 30")
        found[f"{name} / baseline, p50 latency at concurrency 1"] = (
            round(crop_rows(name)[0]["p50_ms"] / crop_rows("baseline")[0]["p50_ms"], 3),
            "<= 0.05",
        )
        found[f"{name} / baseline, RSS per worker"] = (
            round(max(entry["worker_rss_mb"]) / max(base["worker_rss_mb"]), 2),
            "<= 0.25",
        )
    model_floor = result["contenders"].get(MODEL_FLOOR)
    if model_floor is not None and "ours" in result["ceilings"]:
        # The least Flask app of the bundled model against ours' ceiling (the same file) and the
        # original design, and ours against it: references within a round, at each one's best
        # concurrency, for what the goals ask of any Flask app here.
        floor_best = best_crop_rps(MODEL_FLOOR)
        found[f"{MODEL_FLOOR} / ceiling, face-crop throughput"] = (
            round(floor_best / result["ceilings"]["ours"]["faces_per_s"], 2),
            "(reference)",
        )
        if base is not None:
            found[f"{MODEL_FLOOR} / baseline, face-crop throughput"] = (
                round(floor_best / best_crop_rps("baseline"), 1),
                "(reference)",
            )
        found[f"ours / {MODEL_FLOOR}, face-crop throughput"] = (
            round(best_crop_rps("ours") / floor_best, 2),
            "(compare)",
        )
    # Our server against each variant or revision: a change measured side by side.
    ours = result["contenders"]["ours"]["workloads"]
    for name in servers:
        if name == "ours":
            continue
        other = result["contenders"][name]["workloads"]
        for workload, label in (("photo 640x480", "photo"), (CROP, "face-crop")):
            one, eight = CONCURRENCY.index(1), CONCURRENCY.index(8)
            compared = {
                f"{label} throughput at 8 connections": (eight, "throughput_rps"),
                f"{label} p50 at 1 connection": (one, "p50_ms"),
            }
            for what, (row, key) in compared.items():
                theirs = other[workload][row][key]
                if theirs:  # a contender that answered nothing has no ratio
                    found[f"ours / {name}, {what}"] = (
                        round(ours[workload][row][key] / theirs, 2),
                        "(compare)",
                    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="times round every contender")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE,...",
        help="also run our server with these environment variables (layout experiments)",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also run our server as of this git revision (ours@REV), to measure a change",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")

    folder = Path(tempfile.mkdtemp())
    workloads = make_workloads(folder)
    crop_body = workloads[CROP].read_bytes()
    serve = [sys.executable, "-m", "emotion_server.cli", "serve"]
    # name -> (command, environment, working directory)
    contenders: dict[str, tuple[list[str], dict[str, str], Path]] = {"ours": (serve, {}, ROOT)}
    for variant in args.variant:
        name, _, assignments = variant.partition(":")
        env = dict(item.split("=", 1) for item in assignments.split(",") if item)
        contenders[name] = (serve, env, ROOT)
    trees = contextlib.ExitStack()
    started: dict[str, Contender] = {}
    try:  # the worktree, too, is removed however the run ends
        if args.against:
            from cold_start import worktree  # beside this script

            tree = trees.enter_context(worktree(args.against))
            contenders[f"ours@{args.against}"] = (serve, {"PYTHONPATH": str(tree / "src")}, tree)
        # The floors (bench/floor_app.py) on the same gunicorn layout: 2 of our gevent workers
        # (gunicorn's own would leave every keep-alive connection to one of them).
        worker = "emotion_server.workers.GeventWorker"
        for name, wsgi in ((FLOOR, "floor_app:app"), (MODEL_FLOOR, "floor_app:model_app")):
            contenders[name] = (
                [
                    *(sys.executable, "-m", "gunicorn", "--workers", "2"),
                    *("--worker-class", worker, "--no-control-socket"),
                    *("--chdir", str(ROOT / "bench")),
                    *("--bind", "127.0.0.1:{port}", wsgi),
                ],
                {},
                ROOT,
            )
        if not args.skip_baseline:
            contenders["baseline"] = (
                [sys.executable, str(ROOT / "bench" / "baseline_server.py"), "{port}"],
                {},
                ROOT,
            )
        result = {**run_header("run.py", args), "contenders": {}}
        servers = [name for name in contenders if name not in ("baseline", *FLOORS)]
        # Started one after the other (each cold start timed on an otherwise idle machine),
        # then all kept running: an idle contender costs the loaded one next to nothing.
        for name, (command, env, cwd) in contenders.items():
            loaded = (CROP,) if name == MODEL_FLOOR else tuple(workloads)
            started[name] = Contender(name, command, env, crop_body, cwd, workloads=loaded)
            result["contenders"][name] = {"cold_start_s": round(started[name].cold_start_s, 2)}
        for contender in started.values():
            for workload in contender.workloads:
                run_wrk(contender.url, workloads[workload], 8, 2)  # warm-up
        rounds = []
        for index in range(args.rounds):
            order = list(started.values())
            order = order[index % len(order) :] + order[: index % len(order)]
            measured = {c.name: {"workloads": {w: [] for w in c.workloads}} for c in order}
            for workload, path in workloads.items():
                for connections in CONCURRENCY:
                    for contender in order:
                        if workload not in contender.workloads:
                            continue
                        row = contender.load(path, connections, args.duration)
                        measured[contender.name]["workloads"][workload].append(row)
            ceilings = {
                name: ceiling(contenders[name][1], cwd=contenders[name][2]) for name in servers
            }
            rounds.append({"contenders": measured, "ceilings": ceilings})
            print(f"round {index + 1} of {args.rounds}: done", file=sys.stderr)
        for name, contender in started.items():
            contender.settle()
            result["contenders"][name]["worker_rss_mb"] = contender.worker_rss_mb()
            result["contenders"][name]["worker_peak_rss_mb"] = contender.worker_rss_mb("VmHWM")
    finally:
        for contender in started.values():
            contender.stop()
        trees.close()  # the worktree, once its server has stopped
    combine_rounds(result, rounds, servers)

    write_results(Path(args.out), "results", result, to_markdown(result))


def run_header(script: str, args: argparse.Namespace) -> dict:
    """What a bench script's results begin with: the date, this machine, how long each load ran
    and how many rounds, and the command (`script` in bench/, this process's arguments)."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "command": shlex.join(["python", f"bench/{script}", *sys.argv[1:]]),
    }


def write_results(folder: Path, stem: str, result: dict, markdown: str) -> None:
    """`<stem>.json` (what scripts/docs.py renders) and `<stem>.md` into `folder`; prints the
    markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / f"{stem}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
