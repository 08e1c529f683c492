"""Shared by the load and fault scripts (and their short versions in the tests): start gunicorn on
a loopback port, send bounded load to it, and classify what every request got.

Traffic goes to loopback addresses only: `check_loopback` refuses any other URL.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from emotion_server import launcher
from emotion_server.launcher import free_port  # noqa: F401  (the scripts' import)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "python:emotion_server.gunicorn_conf"

# A request that never got a connection (the server was not listening) is "refused": the
# client knows nothing was processed and may retry elsewhere. A request whose connection was
# accepted but then closed or reset without an answer is "dropped".
REFUSED = "refused"
DROPPED = "dropped"
TIMEOUT = "timeout"


def check_loopback(url: str) -> tuple[str, int]:
    """(host, port) of `url`, which must name a loopback address (127.0.0.0/8, ::1, localhost)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SystemExit(f"refusing to send load to {host!r}: loopback addresses only")
    return host, parts.port or 80


def synthetic_face_photo(seed: int = 0) -> bytes:
    """A 320x240 JPEG with a face-like pattern: the detector and the model both run."""
    rng = np.random.default_rng(seed)
    image = np.full((240, 320), 150, np.uint8) + rng.integers(0, 20, (240, 320), dtype=np.uint8)
    yy, xx = np.mgrid[:240, :320]
    face = ((yy - 120) / 80) ** 2 + ((xx - 160) / 60) ** 2 < 1
    image[face] = 200
    for cx in (135, 185):  # eyes
        image[((yy - 100) ** 2 + (xx - cx) ** 2) < 80] = 40
    image[(np.abs(yy - 160) < 6) & (np.abs(xx - 160) < 30)] = 60  # mouth
    buffer = io.BytesIO()
    Image.fromarray(image, "L").convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def face_crop(seed: int = 1) -> bytes:
    """A 48x48 PNG: classified whole, no detection (the cheapest request)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def load_photo(path: str | None) -> bytes:
    """The image file at `path`, or a synthetic photo."""
    return Path(path).read_bytes() if path else synthetic_face_photo()


@dataclass
class Outcome:
    started: float  # time.monotonic()
    ended: float
    result: str  # the HTTP status as text, or REFUSED / DROPPED / TIMEOUT / an exception name


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter(outcome.result for outcome in self.outcomes)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def ok(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.result == "200")

    @property
    def errors(self) -> int:
        return self.total - self.ok

    def latency_ms(self, quantile: float) -> float | None:
        times = sorted(o.ended - o.started for o in self.outcomes if o.result == "200")
        if not times:
            return None
        return 1000 * times[min(len(times) - 1, int(quantile * len(times)))]

    def summary(self) -> dict:
        elapsed = 0.0
        if self.outcomes:
            elapsed = max(o.ended for o in self.outcomes) - min(o.started for o in self.outcomes)
        return {
            "requests": self.total,
            "ok": self.ok,
            "errors": self.errors,
            "by_result": dict(sorted(self.counts().items())),
            "requests_per_second": round(self.total / elapsed, 1) if elapsed else None,
            "latency_ms_p50": _round(self.latency_ms(0.5)),
            "latency_ms_p99": _round(self.latency_ms(0.99)),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def post_once(host: str, port: int, path: str, body: bytes, timeout: float) -> str:
    """One POST on a new connection; its status, or how it failed."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        try:
            connection.connect()
        except ConnectionRefusedError:
            return REFUSED
        connection.request(
            "POST", path, body=body, headers={"Content-Type": "application/octet-stream"}
        )
        response = connection.getresponse()
        response.read()
        return str(response.status)
    except TimeoutError:
        return TIMEOUT
    except (
        http.client.RemoteDisconnected,
        http.client.IncompleteRead,  # the answer was cut off (its worker was killed)
        ConnectionResetError,
        BrokenPipeError,
    ):
        return DROPPED
    except OSError as exc:
        return type(exc).__name__
    finally:
        connection.close()


def run_load(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    duration: float,
    max_requests: int | None = None,
    path: str = "/inference",
    timeout: float = 60.0,
    stop: threading.Event | None = None,
) -> LoadReport:
    """`concurrency` clients POST `bodies` in turn, back to back, for at most `duration` seconds
    and `max_requests` requests in all (or until `stop` is set)."""
    host, port = check_loopback(url)
    report = LoadReport()
    lock = threading.Lock()
    stop = stop or threading.Event()
    deadline = time.monotonic() + duration
    sent = iter(range(max_requests)) if max_requests else None

    def client(index: int) -> None:
        turn = index
        while not stop.is_set() and time.monotonic() < deadline:
            if sent is not None:
                with lock:
                    if next(sent, None) is None:
                        return
            started = time.monotonic()
            result = post_once(host, port, path, bodies[turn % len(bodies)], timeout)
            with lock:
                report.outcomes.append(Outcome(started, time.monotonic(), result))
            if result == REFUSED:
                time.sleep(0.05)  # the server is not listening (yet, or any more): do not spin
            turn += concurrency

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return report


class Server(launcher.Server):
    """`emotion-server serve` on 127.0.0.1:<free port> (emotion_server.launcher), ready once
    every worker is up and /readyz answers 200; `stop()` sends SIGTERM."""

    def __init__(
        self,
        workers: int = 2,
        env: dict[str, str] | None = None,
        log_path: str | os.PathLike | None = None,
    ):
        super().__init__(env=env, workers=workers, log_path=log_path, cwd=ROOT)
