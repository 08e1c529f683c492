"""Start a server on a free loopback port, wait until it is ready, stop it with SIGTERM.

    with serve(env={"EMOTION_READ_TIMEOUT_S": "2"}, workers=2) as server:
        requests.get(server.url + "/healthz")
    server.stopped.exit_code, server.stopped.output

The one copy of the launching code used by the tests, bench/ and scripts/. It lives in the
package, not in tests/ or scripts/, so that each of them imports it as
`emotion_server.launcher` from the installed package, with no `sys.path` edits. By default it
runs the production server as the README starts it (`emotion-server serve`); `command` runs
something else the same way (a benchmark contender, `python app.py`).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

SERVE = (sys.executable, "-m", "emotion_server.cli", "serve")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Stopped:
    exit_code: int
    output: str  # stdout and stderr together


class Server:
    """A server process on 127.0.0.1:<free port>, ready when `__init__` returns.

    `env` is added to this process's environment (a value of None removes a variable);
    PORT and HOST are set. Ready means: `workers` child processes exist (when given) and
    `ready_path` answers 200, or `ready()` returns True. `{port}` in `command` is replaced.
    """

    def __init__(
        self,
        env: Mapping[str, str | None] | None = None,
        workers: int | None = 2,
        command: list[str] | tuple[str, ...] = SERVE,
        ready_path: str = "/readyz",
        ready: Callable[[Server], bool] | None = None,
        ready_timeout: float = 90.0,
        log_path: str | os.PathLike | None = None,
        cwd: str | os.PathLike | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.stopped: Stopped | None = None
        environment = {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1"}
        if workers:
            environment["WEB_CONCURRENCY"] = str(workers)
        for name, value in (env or {}).items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = value
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix="emotion-server-", suffix=".log")
            os.close(handle)
            self._own_log = True
        else:
            self._own_log = False
        self.log_path = Path(log_path)
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [part.format(port=self.port) for part in command],
                cwd=cwd,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(ready or self._answers_ready_path, ready_path, ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - started  # process start to ready: the cold start

    @property
    def pid(self) -> int:
        return self.process.pid

    def _answers_ready_path(self, _server: Server) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", self._ready_path)
            return connection.getresponse().status == 200
        except OSError:
            return False  # not listening yet, or a worker still warming up on a busy machine
        finally:
            connection.close()

    def _wait_ready(self, ready: Callable[[Server], bool], path: str, timeout: float) -> None:
        self._ready_path = path
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}: {self.output()[-3000:]}"
                )
            if (not self.workers or len(self.worker_pids()) >= self.workers) and ready(self):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the server was not ready after {timeout:g} s: {self.output()[-3000:]}")

    def worker_pids(self) -> list[int]:
        """The server's child processes (gunicorn's workers), by pid."""
        import psutil

        try:
            return sorted(child.pid for child in psutil.Process(self.pid).children())
        except psutil.NoSuchProcess:
            return []

    def worker_rss(self) -> dict[int, int]:
        """Resident memory of each worker, bytes."""
        import psutil

        sizes = {}
        for pid in self.worker_pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                sizes[pid] = psutil.Process(pid).memory_info().rss
        return sizes

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait (SIGKILL after `timeout`); the exit code. Idempotent."""
        if self.stopped is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.stopped = Stopped(self.process.returncode, self.output())
            if self._own_log:
                self.log_path.unlink(missing_ok=True)
        return self.stopped.exit_code


@contextlib.contextmanager
def serve(**options) -> Iterator[Server]:
    """`Server(**options)`, stopped with SIGTERM on leaving the block (`.stopped` says how)."""
    server = Server(**options)
    try:
        yield server
    finally:
        server.stop()
