"""Slow and bursty clients, for the tests, the front-end benchmark and the container check.

    python -m emotion_server.slowclients http://127.0.0.1:5000 [--clients 64] [--cap 30]

opens `--clients` connections that misbehave in three ways, a third each: `headers` sends a
request line and then one header byte a second, `body` sends whole headers announcing a body
and then one body byte a second, `silent` connects and sends nothing. While they are connected
it times `GET /healthz`; then it waits (at most `--cap` seconds) for the server to cut each one
off, and prints one JSON report: per kind, how long until the server closed the connection
and what it answered (status and JSON `error` code), and the health check latencies.

`burst()` opens many connections at once, each sending `GET /healthz`. Traffic goes to
loopback addresses only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import ipaddress
import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

KINDS = ("headers", "body", "silent")
BODY_BYTES = 100_000  # what a `body` client announces; at 1 byte/s it never gets there
HEALTHZ_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def loopback(url: str) -> tuple[str, int]:
    """(host, port) of `url`, which must name a loopback address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"refusing to send traffic to {host!r}: loopback addresses only")
    return host, parts.port or 80


@dataclass
class SlowResult:
    kind: str
    seconds: float  # from connecting until the server closed the connection (or the cap)
    outcome: str  # "answered", "closed" (no answer), "reset", "open" (still open at the cap)
    status: int | None = None
    error: str | None = None  # the JSON body's `error` code


def _parse_answer(data: bytes) -> tuple[int | None, str | None]:
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, None
    try:
        return status, json.loads(body).get("error")
    except (ValueError, AttributeError):
        return status, None


async def _slow_client(host: str, port: int, kind: str, cap: float) -> SlowResult:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return SlowResult(kind, 0.0, "refused")
    if kind == "headers":
        writer.write(b"POST /inference HTTP/1.1\r\nHost: localhost\r\n")
        trickle = b"X-Slow: " + b"a" * 10_000
    elif kind == "body":
        writer.write(
            b"POST /inference HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Length: " + str(BODY_BYTES).encode() + b"\r\n\r\n"
        )
        trickle = b"\xff" * BODY_BYTES
    else:
        trickle = b""

    async def send() -> None:
        for index in range(len(trickle)):
            await asyncio.sleep(1.0)
            writer.write(trickle[index : index + 1])
            await writer.drain()

    sender = asyncio.ensure_future(send())
    received = b""
    outcome = "open"
    try:
        async with asyncio.timeout(max(0.0, cap - (time.monotonic() - started))):
            while chunk := await reader.read(65536):
                received += chunk
            outcome = "answered" if received else "closed"
    except TimeoutError:
        pass
    except OSError:
        outcome = "answered" if received else "reset"
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        writer.close()
    status, error = _parse_answer(received) if received else (None, None)
    return SlowResult(kind, round(time.monotonic() - started, 2), outcome, status, error)


class SlowClients:
    """`count` slow clients (the kinds in turn) on their own event loop thread, until each is
    cut off or `cap` seconds have passed; `wait()` returns what happened to each."""

    def __init__(self, url: str, count: int = 64, cap: float = 30.0, kinds=KINDS):
        self.host, self.port = loopback(url)
        self.kinds = [kinds[i % len(kinds)] for i in range(count)]
        self.cap = cap
        self._results: list[SlowResult] = []
        self._connected = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        tasks = [
            asyncio.ensure_future(_slow_client(self.host, self.port, kind, self.cap))
            for kind in self.kinds
        ]
        await asyncio.sleep(0.5)  # every connection made and its first bytes sent
        self._connected.set()
        self._results = list(await asyncio.gather(*tasks))

    def start(self) -> SlowClients:
        self._thread.start()
        self._connected.wait(timeout=30)
        return self

    def wait(self) -> list[SlowResult]:
        self._thread.join(timeout=self.cap + 30)
        return self._results


def summarize(results: list[SlowResult]) -> dict:
    """Per kind: the answers (outcome and status/code) and the slowest cut-off, seconds."""
    summary = {}
    for kind in sorted({result.kind for result in results}):
        mine = [result for result in results if result.kind == kind]
        answers = Counter(
            result.outcome + (f" {result.status} {result.error}" if result.status else "")
            for result in mine
        )
        summary[kind] = {
            "clients": len(mine),
            "answers": dict(answers),
            "cut_off_s_max": max(result.seconds for result in mine),
            "cut_off_s_min": min(result.seconds for result in mine),
        }
    return summary


def healthz_seconds(url: str, timeout: float = 30.0) -> float | None:
    """Seconds `GET /healthz` took on a new connection (None: no 200 within `timeout`)."""
    host, port = loopback(url)
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        return time.monotonic() - started if response.status == 200 else None
    except OSError:
        return None
    finally:
        connection.close()


async def _one_get(host: str, port: int, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                data = await reader.read()
            finally:
                writer.close()
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except OSError as error:
        return type(error).__name__
    status, _ = _parse_answer(data)
    return str(status) if status else "closed"


def burst(url: str, connections: int = 1000, timeout: float = 60.0) -> dict:
    """`connections` clients connect at once and each sends `GET /healthz`: how many got
    which answer ("200", "503", "refused", "reset", "closed", "timeout") and how long it took."""
    host, port = loopback(url)

    async def run() -> list[str]:
        return list(
            await asyncio.gather(*(_one_get(host, port, timeout) for _ in range(connections)))
        )

    started = time.monotonic()
    outcomes = asyncio.run(run())
    return {
        "connections": connections,
        "answers": dict(Counter(outcomes)),
        "seconds": round(time.monotonic() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--cap", type=float, default=30.0, help="longest wait for a cut-off, s")
    args = parser.parse_args()
    clients = SlowClients(args.url, args.clients, args.cap).start()
    health = [healthz_seconds(args.url) for _ in range(5)]
    results = clients.wait()
    report = {
        "healthz_s": [None if s is None else round(s, 3) for s in health],
        "slow_clients": summarize(results),
        "results": [asdict(result) for result in results],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
