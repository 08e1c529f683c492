"""gunicorn workers that bound how long a client may take to send its request.

gunicorn reads a request (its headers in the worker, its body when the app reads
`wsgi.input`) with no total deadline: a client that trickles a byte a second keeps the read
going for as long as it likes. Here every client socket is wrapped in `DeadlineSocket`, so
a request must arrive whole within `EMOTION_READ_TIMEOUT_S` of the moment the server began
waiting for it, plus 1 s per `EMOTION_READ_MIN_RATE` bytes received (a large upload on a
fair link is not cut off). A client past its deadline gets a 408 JSON error
(`{"error": "read_timeout", ...}`) and the connection is closed; one that sent nothing at all
is closed without an answer (a browser's speculative pre-connection, or an idle keep-alive
connection after `keepalive` seconds).

`GeventWorker` is what `emotion-server serve` runs (gunicorn_conf.py): each connection is a
greenlet, so slow clients cost a little memory, not a thread or a process, while the model
runs in the worker's one OS thread. `ThreadWorker` (gunicorn's gthread with the same
deadline) serves `EMOTION_WORKER_THREADS` > 1, for micro-batching; a slow client holds one of
its threads until its deadline. docs/operations.md has the measurements behind the choice.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Callable

import gevent.socket
from gunicorn import util
from gunicorn.workers import ggevent, gthread

from emotion_server.config import Settings
from emotion_server.errors import ReadTimeout

# How long a connection cut off by its deadline is read (and ignored) after the 408 is sent.
LINGER_S = 1.0


class DeadlineSocket:
    """A connected client socket whose reads end at the current request's deadline."""

    def __init__(
        self,
        sock: socket.socket,
        read_timeout: float,
        min_rate: float,
        idle: float,
        wait_readable: Callable[[int, float], None] | None = None,
    ):
        self._sock = sock
        self.wait_readable = wait_readable
        self.read_timeout = read_timeout
        self.min_rate = min_rate
        self.idle = idle
        self.timed_out = False
        self.request = None  # gunicorn's request being read, told to close the connection
        self.next_request(first=True)

    def next_request(self, first: bool = False) -> None:
        """Start the clock for the next request on this connection. Before its first byte,
        the wait is `read_timeout` on a new connection and `idle` (keep-alive) after that."""
        self.started = time.monotonic()
        self.received = 0
        self.first_byte_by = self.started + (self.read_timeout if first else self.idle)

    def deadline(self) -> float:
        if not self.received:
            return self.first_byte_by
        allowance = self.received / self.min_rate if self.min_rate > 0 else 0.0
        return self.started + self.read_timeout + allowance

    def recv(self, size: int, *flags: int) -> bytes:
        remaining = self.deadline() - time.monotonic()
        if remaining <= 0:
            self._expire()
        self._sock.settimeout(remaining)
        try:
            if self.wait_readable is not None:
                self.wait_readable(self._sock.fileno(), remaining)
            data = self._sock.recv(size, *flags)
        except TimeoutError:
            self._expire()
        finally:
            self._sock.settimeout(None)  # writing the answer is not bounded by the read
        self.received += len(data)
        return data

    def recv_into(self, buffer, size: int = 0, *flags: int) -> int:
        data = self.recv(size or len(buffer), *flags)
        buffer[: len(data)] = data
        return len(data)

    def _expire(self):
        self.timed_out = True
        if self.request is not None:  # the app answers 408: with "Connection: close"
            self.request.must_close = True
        raise ReadTimeout(
            f"The request did not arrive within the server's read timeout "
            f"({self.read_timeout:g} s, plus 1 s per {self.min_rate:g} bytes received)."
        )

    def linger(self, seconds: float = LINGER_S) -> None:
        """After an answer to a request that was cut off: stop sending, and read what the
        client still sends for a moment before closing, so that closing with unread bytes
        does not reset the connection before the client has read the answer."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
            until = time.monotonic() + seconds
            while (left := until - time.monotonic()) > 0:
                self._sock.settimeout(left)
                if not self._sock.recv(65536):
                    break

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def answer_read_timeout(sock, error: ReadTimeout) -> None:
    """Write the 408 JSON answer straight to the socket (no app involved: the request line or
    its headers never arrived whole)."""
    body = json.dumps({"error": error.code, "message": error.message}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    util.write_nonblock(sock, head + body)


class ReadDeadline:
    """Mixed into a gunicorn worker class: wraps each client socket, answers or closes a
    request that ran past its deadline, and restarts the clock after each response."""

    def init_process(self):
        settings = Settings.from_env()
        self.read_timeout = settings.read_timeout_s
        self.read_min_rate = settings.read_min_rate
        super().init_process()

    wait_readable = None

    def wrap(self, sock) -> DeadlineSocket:
        if isinstance(sock, DeadlineSocket):
            return sock
        return DeadlineSocket(
            sock,
            self.read_timeout,
            self.read_min_rate,
            idle=float(self.cfg.keepalive or 0),
            # TLS may hold decrypted bytes the file descriptor does not show as readable.
            wait_readable=None if isinstance(sock, ssl.SSLSocket) else self.wait_readable,
        )

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, ReadTimeout):
            # Nothing of a request arrived: close quietly. Part of one: say why, then close.
            if isinstance(client, DeadlineSocket) and client.received:
                with contextlib.suppress(OSError):
                    answer_read_timeout(client, exc)
                    client.linger()
                self.log.info("read timeout from %s: answered 408", addr)
            util.close(client)
            return
        super().handle_error(req, client, addr, exc)


class GeventWorker(ReadDeadline, ggevent.GeventWorker):
    """gunicorn's gevent worker with the request-read deadline (the default of `serve`).

    Every read first waits in the event loop until the socket is readable, even when it
    already is: gevent's recv() returns at once when data is there, so a keep-alive client
    that always has its next request waiting would keep the worker to itself, while the
    other connections (and /healthz) waited seconds. Through the loop, every connection
    that is ready gets its turn.
    """

    @staticmethod
    def wait_readable(fileno: int, timeout: float) -> None:
        gevent.socket.wait_read(fileno, timeout=timeout)

    def timeout_ctx(self):
        # The socket enforces both the keep-alive wait and the read deadline itself.
        return _NoTimeout()

    def handle(self, listener, client, addr):
        client.setblocking(True)
        super().handle(listener, self.wrap(client), addr)

    def handle_request(self, listener_name, req, sock, addr):
        if not isinstance(sock, DeadlineSocket):
            return super().handle_request(listener_name, req, sock, addr)
        sock.request = req
        try:
            keep = super().handle_request(listener_name, req, sock, addr)
        finally:
            if sock.timed_out:  # the app answered 408 mid-body (and closes: framing is lost)
                sock.linger()
        if sock.timed_out:
            raise StopIteration()
        sock.next_request()
        return keep


class ThreadWorker(ReadDeadline, gthread.ThreadWorker):
    """gunicorn's gthread worker with the request-read deadline (EMOTION_WORKER_THREADS > 1)."""

    def handle(self, conn):
        conn.sock = self.wrap(conn.sock)
        return super().handle(conn)

    def handle_request(self, req, conn):
        if isinstance(conn.sock, DeadlineSocket):
            conn.sock.request = req
        keep = super().handle_request(req, conn)
        if isinstance(conn.sock, DeadlineSocket):
            if conn.sock.timed_out:  # in this thread, not in the worker's event loop
                conn.sock.linger()
                return False
            conn.sock.next_request()
        return keep


class _NoTimeout:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
