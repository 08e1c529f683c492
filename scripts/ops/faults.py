"""Fault drills against gunicorn on loopback, each bounded in time:

  kill-worker  SIGKILL one worker under load: it is replaced, and clients lose at most the
               requests that worker held (one per thread).
  sigterm      SIGTERM to the master under load: every request sent before it is answered
               (zero dropped), the master exits 0.
  bad-model    a missing, a corrupt and a wrong-shaped model file: `emotion-server serve` fails
               fast with a clear message, and so does gunicorn started directly.

    python scripts/ops/faults.py all
    python scripts/ops/faults.py kill-worker --seconds 10 --workers 2 --concurrency 4

Each drill prints a JSON report; the exit status is 1 if any drill failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import loadlib  # beside this script


def _requests_a_worker_holds(env: dict[str, str] | None, concurrency: int) -> int:
    """How many requests a killed worker can take with it: one per thread (gthread), or with
    gevent every connection it had accepted (at most all the clients')."""
    from emotion_server.config import Settings

    threads = Settings.from_env({**os.environ, **(env or {})}).worker_threads
    return threads if threads > 1 else concurrency


def kill_worker(
    seconds: float = 6,
    workers: int = 2,
    concurrency: int = 4,
    env: dict[str, str] | None = None,
    log_path: str | None = None,
) -> dict:
    """SIGKILL a worker a third of the way into `seconds` of load."""
    server = loadlib.Server(workers=workers, env=env, log_path=log_path)
    try:
        before = server.worker_pids()
        bodies = [loadlib.synthetic_face_photo()]
        result: list[loadlib.LoadReport] = []
        thread = threading.Thread(
            target=lambda: result.append(loadlib.run_load(server.url, bodies, concurrency, seconds))
        )
        thread.start()
        time.sleep(seconds / 3)
        victim = before[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replaced_after = None
        while thread.is_alive():
            pids = server.worker_pids()
            if replaced_after is None and victim not in pids and len(pids) == workers:
                replaced_after = round(time.monotonic() - killed_at, 2)
            time.sleep(0.1)
        thread.join()
        report = result[0]
        after_kill = [o for o in report.outcomes if o.started > killed_at + 0.5]
        failed = [o.result for o in report.outcomes if o.result != "200"]
        allowed = _requests_a_worker_holds(env, concurrency)
        ok_after = sum(1 for o in after_kill if o.result == "200")
        return {
            "drill": "kill-worker",
            "killed_pid": victim,
            "workers_before": before,
            "workers_after": server.worker_pids(),
            "replaced_after_s": replaced_after,
            **report.summary(),
            "failed": failed,
            "failures_allowed": allowed,
            "ok_after_kill": ok_after,
            "passed": replaced_after is not None and len(failed) <= allowed and ok_after > 0,
        }
    finally:
        server.stop()


def sigterm(
    seconds: float = 4,
    workers: int = 2,
    concurrency: int = 6,
    env: dict[str, str] | None = None,
    log_path: str | None = None,
    keep_sending: bool = False,
) -> dict:
    """SIGTERM the master half-way through `seconds` of load with more clients than workers.

    Clients stop sending new requests at the SIGTERM, as a load balancer does once the target
    is draining (`keep_sending` carries on, to see what late requests get: served, refused).
    """
    server = loadlib.Server(workers=workers, env=env, log_path=log_path)
    bodies = [loadlib.synthetic_face_photo(), loadlib.face_crop()]
    stop = threading.Event()
    result: list[loadlib.LoadReport] = []
    thread = threading.Thread(
        target=lambda: result.append(
            loadlib.run_load(server.url, bodies, concurrency, seconds * 3, stop=stop)
        )
    )
    thread.start()
    time.sleep(seconds / 2)
    term_at = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    if keep_sending:
        time.sleep(seconds / 2)
    stop.set()
    thread.join()
    try:
        exit_code = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        exit_code = None
    server.stop()
    report = result[0]
    before = [o for o in report.outcomes if o.started < term_at]
    after = [o for o in report.outcomes if o.started >= term_at]
    in_flight = [o for o in before if o.ended > term_at]
    dropped = [o.result for o in before if o.result != "200"]
    return {
        "drill": "sigterm",
        "requests_before_sigterm": len(before),
        "in_flight_at_sigterm": len(in_flight),
        "failed_before_sigterm": dropped,
        "after_sigterm": loadlib.LoadReport(after).summary()["by_result"],
        "master_exit_code": exit_code,
        "passed": not dropped and len(before) > 0 and exit_code == 0,
    }


def _wrong_shape_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "wrong_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
    )
    onnx.save(helper.make_model(graph), path)


def bad_model(timeout: float = 60) -> dict:
    """serve and gunicorn on missing, corrupt and wrong-shaped models: fast, clear failures."""
    folder = Path(tempfile.mkdtemp(prefix="bad-model-"))
    (folder / "corrupt.onnx").write_bytes(os.urandom(2048))
    _wrong_shape_model(folder / "wrong_shape.onnx")
    cases = {
        "missing": (folder / "absent.onnx", "model file not found"),
        "corrupt": (folder / "corrupt.onnx", "cannot load model"),
        "wrong_shape": (folder / "wrong_shape.onnx", "must map [N,48,48,1] to [N,7]"),
    }
    results = {}
    try:
        _run_bad_models(cases, results, timeout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    passed = all(r["exit_code"] not in (0, None) and r["message_found"] for r in results.values())
    return {"drill": "bad-model", "cases": results, "passed": passed}


def _run_bad_models(cases: dict, results: dict, timeout: float) -> None:
    for name, (model, expected) in cases.items():
        env = {
            **os.environ,
            "EMOTION_MODEL_PATH": str(model),
            "PORT": str(loadlib.free_port()),
            "HOST": "127.0.0.1",
        }
        for how, command in [
            ("serve", [sys.executable, "-m", "emotion_server.cli", "serve"]),
            (
                "gunicorn",
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "--config",
                    loadlib.DEFAULT_CONFIG,
                    "emotion_server.api:create_app()",
                ],
            ),
        ]:
            started = time.monotonic()
            try:
                done = subprocess.run(
                    command,
                    env=env,
                    cwd=loadlib.ROOT,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
                code, output = done.returncode, done.stdout + done.stderr
            except subprocess.TimeoutExpired:
                code, output = None, "still running: did not fail fast"
            results[f"{name}/{how}"] = {
                "exit_code": code,
                "seconds": round(time.monotonic() - started, 2),
                "message_found": expected in output,
                "last_line": output.strip().splitlines()[-1] if output.strip() else "",
            }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("drill", choices=["kill-worker", "sigterm", "bad-model", "all"])
    parser.add_argument("--seconds", type=float, default=6, help="load per drill (default 6)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, help="clients (default: 2 per worker + 2)")
    parser.add_argument("--keep-sending", action="store_true", help="sigterm: load after it")
    parser.add_argument("--log", help="gunicorn's log file (default: discarded)")
    args = parser.parse_args()
    concurrency = args.concurrency or 2 * args.workers + 2
    drills = ["kill-worker", "sigterm", "bad-model"] if args.drill == "all" else [args.drill]
    failed = 0
    for drill in drills:
        if drill == "kill-worker":
            report = kill_worker(args.seconds, args.workers, concurrency, log_path=args.log)
        elif drill == "sigterm":
            report = sigterm(
                args.seconds,
                args.workers,
                concurrency,
                log_path=args.log,
                keep_sending=args.keep_sending,
            )
        else:
            report = bad_model()
        print(json.dumps(report, indent=2))
        failed += not report["passed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
