"""Short runs of the load and fault drills in scripts/ops/ (the scripts take longer durations),
run as an operator runs them, their JSON reports read: a soak, a worker killed under load,
SIGTERM under load, and bad model files at start-up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import ROOT, GunicornServer, encode

from emotion_server import ops

pytestmark = pytest.mark.e2e
OPS = ROOT / "scripts" / "ops"


def drill(*args: str, timeout: float = 300) -> dict:
    """One drill script run in a subprocess; its JSON report (the last thing it prints)."""
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    report = json.loads(result.stdout[result.stdout.rfind("\n{") + 1 :])  # indented JSON
    assert result.returncode == (0 if report.get("passed", not report.get("errors")) else 1)
    return report


def test_short_soak_has_no_errors():
    report = drill(
        str(OPS / "soak.py"),
        "--seconds",
        "3",
        "--workers",
        "2",
        "--concurrency",
        "4",
        "--interval",
        "1",
    )
    assert report["requests"] > 0 and report["errors"] == 0, report
    assert len(report["worker_rss_mb_start"]) == 2 and len(report["worker_rss_mb_end"]) == 2
    assert report["workers_replaced"] == []
    assert report["server_exit_code"] == 0


def test_a_killed_worker_is_replaced_and_only_its_requests_fail():
    report = drill(
        str(OPS / "faults.py"),
        "kill-worker",
        "--seconds",
        "4",
        "--workers",
        "2",
        "--concurrency",
        "4",
    )
    assert report["replaced_after_s"] is not None, report
    assert report["killed_pid"] not in report["workers_after"]
    # The killed worker held at most one request per thread (gthread) or the connections it had
    # accepted (gevent); nothing else failed, and the failures are lost connections, never
    # error responses.
    assert len(report["failed"]) <= report["failures_allowed"], report
    assert set(report["failed"]) <= {"dropped"}, report
    assert report["ok_after_kill"] > 0


def test_sigterm_under_load_drops_nothing():
    report = drill(
        str(OPS / "faults.py"),
        "sigterm",
        "--seconds",
        "3",
        "--workers",
        "2",
        "--concurrency",
        "6",
    )
    assert report["requests_before_sigterm"] > 0 and report["in_flight_at_sigterm"] > 0
    assert report["failed_before_sigterm"] == [], report
    assert report["master_exit_code"] == 0


def test_sigterm_stops_the_server_without_waiting_for_the_graceful_timeout(astronaut):
    """Workers that have run the model exit by themselves at SIGTERM. A worker forked from a
    master that had imported ONNX Runtime hung in the library's exit handlers until gunicorn's
    graceful timeout (20 s) killed it; so the master must not map the library, and an idle
    server stops in well under that timeout."""
    server = GunicornServer(workers=2)
    try:
        for _ in range(4):  # both workers are likely to have answered one
            answer = requests.post(
                server.url + "/inference",
                data=encode(astronaut),
                headers={"Content-Type": "application/octet-stream"},
                timeout=30,
            )
            assert answer.json()["prediction"] in {"happy", "neutral", "surprise"}
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        assert "onnxruntime" not in maps, "gunicorn's master has loaded ONNX Runtime"
        started = time.monotonic()
        exit_code = server.stop(timeout=60)
        stop_s = time.monotonic() - started
    finally:
        server.stop()
    assert exit_code == 0
    assert stop_s < ops.GRACEFUL_TIMEOUT_S / 2, (stop_s, server.stopped.output[-2000:])


def test_the_start_up_check_answers_from_its_child(monkeypatch, capfd):
    """gunicorn's master gets the check's message, None, or a clear failure when the check
    itself crashed (the child's traceback goes to stderr), through the forked child."""
    monkeypatch.setattr(ops, "startup_problem", lambda: "model file not found: x.onnx")
    assert ops.startup_problem_in_child() == "model file not found: x.onnx"
    monkeypatch.setattr(ops, "startup_problem", lambda: None)
    assert ops.startup_problem_in_child() is None

    def crash():
        raise RuntimeError("the check broke")

    monkeypatch.setattr(ops, "startup_problem", crash)
    assert "start-up check failed unexpectedly" in ops.startup_problem_in_child()
    assert "RuntimeError: the check broke" in capfd.readouterr().err


def test_bad_model_files_fail_fast_with_a_clear_message():
    report = drill(str(OPS / "faults.py"), "bad-model")
    for name, case in report["cases"].items():
        assert case["exit_code"] not in (0, None), (name, case)
        assert case["message_found"], (name, case)
    serve_lines = [case["last_line"] for name, case in report["cases"].items() if "serve" in name]
    assert all(line.startswith("emotion-server: ") for line in serve_lines), serve_lines
