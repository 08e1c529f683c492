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

The gevent workers share one listening socket, and which of them accepts a new connection is
a race the kernel settles; a keep-alive client holds its worker for as long as it stays
connected. Left alone, one worker can win every race and hold every connection while the
others idle (the CI machine showed 16 of 16). `LoadBoard` keeps each worker's count of open
connections in memory shared by the workers, and a worker that holds more connections than
a responsive peer leaves the next connection to it (least-connections balancing).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import json
import logging
import math
import mmap
import os
import socket
import ssl
import time
from collections.abc import Callable

import gevent
import gevent.server
import gevent.socket
from gunicorn import util
from gunicorn.http import body as gunicorn_body
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import ggevent, gthread

from emotion_server.config import Settings
from emotion_server.errors import ReadTimeout

# How long a connection cut off by its deadline is read (and ignored) after the 408 is sent.
LINGER_S = 1.0
# Each gevent worker's event loop writes a heartbeat this often; a peer whose last one is
# older than PEER_FRESH_S is busy in a long computation (or gone) and is not waited for.
HEARTBEAT_S = 0.01
PEER_FRESH_S = 0.1
# A worker that left a pending connection to a less loaded peer looks again after this long.
RECHECK_S = 0.005


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
        self.stalled = False  # the client stopped taking the answer (`_writing`)
        # Bytes of the last request's body its answer left unread (gunicorn reads them off
        # before the next request): a timeout among them is not a new request's.
        self.unread_body: float = 0
        self.first_byte_at: float | None = None
        self.request = None  # gunicorn's request being read, told to close the connection
        self._held: bytes | None = None
        self._hold_next = False
        self.next_request(first=True)

    def next_request(self, first: bool = False) -> None:
        """Start the clock for the next request on this connection. Before its first byte,
        the wait is `read_timeout` on a new connection and `idle` (keep-alive) after that."""
        self.started = time.monotonic()
        self.received = 0
        self.first_byte_at = None
        self.first_byte_by = self.started + (self.read_timeout if first else self.idle)

    def deadline(self) -> float:
        if not self.received:
            return self.first_byte_by
        allowance = self.received / self.min_rate if self.min_rate > 0 else 0.0
        return self.started + self.read_timeout + allowance

    def recv(self, size: int, *flags: int) -> bytes:
        remaining = self.deadline() - time.monotonic()
        data = None
        if remaining > 0:
            self._sock.settimeout(remaining)
            try:
                if self.wait_readable is not None:
                    self.wait_readable(self._sock.fileno(), remaining)
                data = self._sock.recv(size, *flags)
            except TimeoutError:
                pass
            finally:
                self._sock.settimeout(None)  # writing the answer is not bounded by the read
        if data is None:
            # The deadline bounds waiting for the client, not the server's own delay: bytes
            # that arrived while the worker was busy (answering a burst of others, say) are
            # read, even when its timer fired first.
            data = self._recv_arrived(size, *flags)
            if data is None:
                self._expire()
        if data and not self.received:
            self.first_byte_at = time.monotonic()
        self.received += len(data)
        return data

    def _recv_arrived(self, size: int, *flags: int) -> bytes | None:
        """What the kernel already holds for this socket, without waiting: None if nothing,
        b"" if the client closed."""
        self._sock.settimeout(0.0)
        try:
            return self._sock.recv(size, *flags)
        except (BlockingIOError, TimeoutError, ssl.SSLWantReadError):
            return None
        finally:
            self._sock.settimeout(None)

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

    def hold_head(self) -> None:
        """Keep the response's first write (gunicorn writes the status line and headers on
        their own) and send it with the second (the body, or its first chunk): one send and
        one TCP segment instead of two, which on loopback saves a wake-up of the client per
        response. `flush()` sends a head that had no body after it."""
        self._hold_next = True

    def sendall(self, data, *flags: int) -> None:
        if self._hold_next:
            self._hold_next = False
            self._held = bytes(data)
            return
        if self._held is not None:
            data, self._held = self._held + bytes(data), None
        self._send_all(data, *flags)

    def flush(self) -> None:
        self._hold_next = False
        if self._held is not None:
            data, self._held = self._held, None
            self._send_all(data)

    def write_limit(self, size: int) -> float:
        """Seconds the client has to take `size` bytes of the answer: the read's rule (the
        timeout, plus 1 s per `min_rate` bytes), so a client that stops reading cannot hold
        the connection, and what the answer keeps alive (a video's decoder, its upload), for
        good."""
        return self.read_timeout + (size / self.min_rate if self.min_rate > 0 else 0.0)

    def _send_all(self, data, *flags: int) -> None:
        with self._writing(len(data)):
            self._sock.sendall(data, *flags)

    def sendfile(self, *args, **kwargs):
        self.flush()
        with self._writing(0):  # sent a piece at a time: each within the timeout
            return self._sock.sendfile(*args, **kwargs)

    @contextlib.contextmanager
    def _writing(self, size: int):
        """A write of `size` bytes bounded by `write_limit`. A client that stopped reading the
        answer is treated as one that went away: the connection closes (gunicorn ignores a
        broken pipe) and the response is abandoned."""
        self._sock.settimeout(self.write_limit(size))
        try:
            yield
        except TimeoutError:
            self.stalled = True
            with contextlib.suppress(OSError):
                logging.getLogger("gunicorn.error").info(
                    "write timeout: %s did not take the answer in time (%g s, plus 1 s per %g "
                    "bytes); closed",
                    self._sock.getpeername(),
                    self.read_timeout,
                    self.min_rate,
                )
            raise BrokenPipeError(errno.EPIPE, "the client stopped reading the answer") from None
        finally:
            self._sock.settimeout(None)

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def write_json_error(sock, status: str, code: str, message: str) -> None:
    """Write a JSON error answer straight to the socket, then the connection closes (no app
    involved: the request never arrived whole, or gunicorn could not parse it)."""
    # Imported here, in a worker that has loaded the app: gunicorn's master imports this
    # module and must not import the app's (ONNX Runtime among them).
    from emotion_server.api.security import HEADERS

    body = json.dumps({"error": code, "message": message}).encode()
    security = "".join(f"{name}: {value}\r\n" for name, value in HEADERS.items())
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{security}Connection: close\r\n\r\n"
    ).encode()
    util.write_nonblock(sock, head + body)


def answer_read_timeout(sock, error: ReadTimeout) -> None:
    """The 408 JSON answer of a request that did not arrive whole in time."""
    write_json_error(sock, "408 Request Timeout", error.code, error.message)


# Requests gunicorn's parser refuses before the app sees them, answered as JSON with codes of
# their own like the app's errors (gunicorn writes an HTML page): status line, error code.
PARSE_REFUSALS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], str, str], ...] = (
    (http_errors.LimitRequestLine, "414 URI Too Long", "uri_too_long"),
    (
        http_errors.LimitRequestHeaders,
        "431 Request Header Fields Too Large",
        "headers_too_large",
    ),
    (http_errors.ExpectationFailed, "417 Expectation Failed", "expectation_failed"),
    # A path outside the mount point a proxy (trusted by gunicorn's forwarded_allow_ips) gave
    # in a SCRIPT_NAME header, or the SCRIPT_NAME variable: no route of ours is there.
    (http_errors.ConfigurationProblem, "404 Not Found", "not_found"),
    (
        http_errors.UnsupportedTransferCoding,
        "501 Not Implemented",
        "unsupported_transfer_coding",
    ),
    (
        (
            http_errors.InvalidRequestLine,
            http_errors.InvalidRequestMethod,
            http_errors.InvalidHTTPVersion,
            http_errors.InvalidHeader,
            http_errors.InvalidHeaderName,
            http_errors.ObsoleteFolding,
            http_errors.InvalidSchemeHeaders,
        ),
        "400 Bad Request",
        "bad_request",
    ),
)


# A refusal's message where "The request could not be read: ..." would be wrong.
REFUSAL_MESSAGES = {"not_found": "Nothing is served outside this server's mount point ({})."}


# Body framing errors gunicorn meets only while draining a body the app left unread.
_AFTER_THE_ANSWER = (
    http_errors.InvalidChunkSize,
    http_errors.ChunkMissingTerminator,
    http_errors.InvalidChunkExtension,
)


# A bad header the app tried to send: the app's fault (a 500, gunicorn's own answer), though
# these subclass the request-header errors above.
_APP_HEADERS = (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)


def parse_refusal(exc: BaseException) -> tuple[str, str] | None:
    """(status line, error code) for a request gunicorn could not parse; None for anything
    else, left to gunicorn."""
    if isinstance(exc, _APP_HEADERS):
        return None
    for kinds, status, code in PARSE_REFUSALS:
        if isinstance(exc, kinds):
            return status, code
    return None


class LoadBoard:
    """Per worker process: its pid, open connections and last heartbeat, in a small anonymous
    shared memory map. Made in gunicorn's master (where this module is imported to find the
    worker class), so every forked worker sees the same one. The master hands out the slots
    (one after another, as it makes each worker before forking it), so no lock is needed: a
    worker writes only its own slot."""

    PID, CONNECTIONS, BEAT = range(3)
    RESERVED = -1  # PID of a slot handed to a worker that has not started yet

    def __init__(self, slots: int = 64):
        self.slots = slots
        self._cells = memoryview(mmap.mmap(-1, slots * 3 * 8)).cast("d")

    def _get(self, slot: int, field: int) -> float:
        return self._cells[slot * 3 + field]

    def _set(self, slot: int, field: int, value: float) -> None:
        self._cells[slot * 3 + field] = value

    def reserve(self) -> int | None:
        """In the master: a slot for the worker about to be forked, one that is free or whose
        process is gone. None when all are held (that worker then runs without balancing)."""
        now = time.monotonic()
        for slot in range(self.slots):
            holder = int(self._get(slot, self.PID))
            if holder == self.RESERVED and now - self._get(slot, self.BEAT) < 60:
                continue  # handed out moments ago; its worker is starting
            if holder > 0 and _alive(holder):
                continue
            self._set(slot, self.CONNECTIONS, 0)
            self._set(slot, self.BEAT, now)
            self._set(slot, self.PID, self.RESERVED)
            return slot
        return None

    def occupy(self, slot: int, pid: int) -> None:
        """In the worker, as it starts serving."""
        self._set(slot, self.CONNECTIONS, 0)
        self._set(slot, self.BEAT, time.monotonic())
        self._set(slot, self.PID, pid)

    def retire(self, slot: int) -> None:
        """Stop being waited for (the worker is draining), keeping the slot until it exits."""
        self._set(slot, self.BEAT, 0)

    def release(self, slot: int) -> None:
        self._set(slot, self.BEAT, 0)
        self._set(slot, self.PID, 0)

    def beat(self, slot: int) -> None:
        self._set(slot, self.BEAT, time.monotonic())

    def count(self, slot: int, change: int) -> None:
        self._set(slot, self.CONNECTIONS, self._get(slot, self.CONNECTIONS) + change)

    def connections(self, slot: int) -> int:
        return int(self._get(slot, self.CONNECTIONS))

    def should_yield(self, slot: int) -> bool:
        """Whether a responsive peer holds fewer open connections than this worker."""
        mine = self._get(slot, self.CONNECTIONS)
        fresh_after = time.monotonic() - PEER_FRESH_S
        for other in range(self.slots):
            if other == slot or self._get(other, self.PID) <= 0:
                continue
            if (
                self._get(other, self.BEAT) > fresh_after
                and self._get(other, self.CONNECTIONS) < mine
            ):
                return True
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


BOARD = LoadBoard()


class BalancedServer(gevent.server.StreamServer):
    """gevent's accept loop, except that while a responsive peer holds fewer connections, a
    pending connection is left in the listen queue for that peer (whose event loop was woken
    by the same connection) and the queue is looked at again RECHECK_S later."""

    def __init__(self, *args, board: LoadBoard, slot: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.board = board
        self.slot = slot

    def do_read(self):
        if self.board.should_yield(self.slot):
            # gevent's own pause-and-retry of its accept loop (what it does after an accept
            # error): the timer sits where stop_accepting(), on close, cancels it.
            self.stop_accepting()
            self._timer = self.loop.timer(RECHECK_S)
            self._timer.start(self._start_accepting_if_started)
            return None
        accepted = super().do_read()
        if accepted:
            self.board.count(self.slot, +1)
        return accepted

    def do_close(self, *args):
        # Called once per accepted connection when its handler returns (or fails to start).
        self.board.count(self.slot, -1)
        super().do_close(*args)


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

    @contextlib.contextmanager
    def answering(self, sock: DeadlineSocket, req):
        """Around gunicorn's handling of one request on `sock`: the request to close if its
        body times out, the response's head held for its body, and, after a 408 answered
        mid-body, the linger before closing. A request whose body could not be framed
        (malformed chunked encoding; the app answered 400 malformed_body) is answered with
        `Connection: close` and the connection closed: where the next request starts is lost."""
        sock.request = req
        sock.unread_body = 0
        closes = req.should_close
        req.should_close = lambda: _body_failed(req) or closes()
        sock.hold_head()
        try:
            yield
        finally:
            sock.unread_body = _unread_body(req)
            sock.flush()
            if sock.timed_out:  # the app answered 408 mid-body (and closes: framing is lost)
                sock.linger()

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, ReadTimeout):
            # Nothing of a request arrived: close quietly. Part of one: say why, then close.
            if isinstance(client, DeadlineSocket) and 0 < client.received <= client.unread_body:
                # Only the rest of a body whose request was answered arrived (gunicorn reads it
                # off before the next request): nothing new to answer, nor to count.
                self.log.info("read timeout from %s in a body left unread: closed", addr)
            elif isinstance(client, DeadlineSocket) and client.received:
                _count_answer(req, 408, exc.code, client.first_byte_at)
                with contextlib.suppress(OSError):
                    answer_read_timeout(client, exc)
                    client.linger()
                self.log.info("read timeout from %s: answered 408", addr)
            util.close(client)
            return
        if isinstance(exc, _AFTER_THE_ANSWER):
            # A broken chunked body the app never read, met as gunicorn drains it after the
            # answer was sent: a second answer would be one the client did not ask for.
            self.log.info("malformed body left unread from %s: %s", addr, exc)
            util.close(client)
            return
        refusal = parse_refusal(exc)
        if refusal is not None:
            status, code = refusal
            addr = addr or ("", -1)
            req = req or getattr(exc, "req", None)
            self.log.warning("Invalid request from ip=%s: %s", addr[0], exc)
            message = REFUSAL_MESSAGES.get(code, "The request could not be read: {}.").format(exc)
            started = client.first_byte_at if isinstance(client, DeadlineSocket) else None
            _count_answer(req, int(status.split()[0]), code, started)
            with contextlib.suppress(OSError):
                write_json_error(client, status, code, message)
                if isinstance(client, DeadlineSocket):
                    client.linger()  # what the client still sends must not reset the answer
            self._log_refusal(req, client, addr, status, message)
            util.close(client)
            return
        super().handle_error(req, client, addr, exc)

    def _log_refusal(self, req, client, addr, status: str, message: str) -> None:
        """The access log's line for a refused request whose request line was read (a bad
        header, say), as gunicorn writes one."""
        if req is None:
            return
        environ = default_environ(req, client, self.cfg)
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
        response = Response(req, client, self.cfg)
        response.status = status
        response.response_length = len(message)
        self.log.access(response, req, environ, datetime.timedelta(0))


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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Runs in the master, just before the fork. One worker alone has nobody to balance with.
        self.slot = BOARD.reserve() if self.cfg.workers > 1 else None

    def run(self):
        if self.slot is None:
            return super().run()
        BOARD.occupy(self.slot, os.getpid())
        self.log.info("Worker %s serving, balancing connections (slot %s)", os.getpid(), self.slot)
        heartbeat = gevent.get_hub().loop.timer(0, HEARTBEAT_S)
        heartbeat.start(self._heartbeat)
        # gunicorn's run() makes one gevent StreamServer per listener; in this process (a
        # forked worker) the name it uses is pointed at the balancing subclass.
        ggevent.StreamServer = functools.partial(BalancedServer, board=BOARD, slot=self.slot)
        try:
            return super().run()
        finally:
            heartbeat.stop()
            BOARD.release(self.slot)

    def _heartbeat(self):
        if self.alive:
            BOARD.beat(self.slot)
        else:  # draining after SIGTERM: its listener is closed, so peers stop waiting for it
            BOARD.retire(self.slot)

    def timeout_ctx(self):
        # The socket enforces both the keep-alive wait and the read deadline itself.
        return _NoTimeout()

    def handle(self, listener, client, addr):
        client.setblocking(True)
        super().handle(listener, self.wrap(client), addr)

    def handle_request(self, listener_name, req, sock, addr):
        if not isinstance(sock, DeadlineSocket):
            return super().handle_request(listener_name, req, sock, addr)
        with self.answering(sock, req):
            keep = super().handle_request(listener_name, req, sock, addr)
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
        sock = conn.sock
        if not isinstance(sock, DeadlineSocket):
            return super().handle_request(req, conn)
        with self.answering(sock, req):  # lingers, if cut off, in this thread
            keep = super().handle_request(req, conn)
        if sock.timed_out:
            return False
        sock.next_request()
        return keep


def _unread_body(req) -> float:
    """Bytes of `req`'s body still to come off the socket after its answer: what is left of a
    Content-Length, all of an unfinished chunked body (inf), none otherwise."""
    reader = getattr(getattr(req, "body", None), "reader", None)
    if isinstance(reader, gunicorn_body.LengthReader):
        return reader.length
    if isinstance(reader, gunicorn_body.ChunkedReader) and reader.parser is not None:
        return math.inf
    return 0


def _count_answer(req, status: int, code: str, started: float | None) -> None:
    """Count an answer the worker wrote itself (the app never saw the request) in /metrics,
    as the app's hooks count theirs: no route matched, so under the `unmatched` endpoint."""
    # Imported here, in a worker: gunicorn's master imports this module and must not import
    # prometheus_client (metrics.py says why).
    from emotion_server import metrics
    from emotion_server.api.metrics import UNMATCHED, method_label

    method = method_label(getattr(req, "method", None))
    elapsed = time.monotonic() - started if started is not None else 0.0
    with contextlib.suppress(Exception):  # the count must never cost the answer
        metrics.observe_request(UNMATCHED, method, status, elapsed)
        metrics.observe_error(UNMATCHED, code)


def _body_failed(req) -> bool:
    """Whether reading the request's body raised (gunicorn's Body marks it)."""
    return bool(getattr(getattr(req, "body", None), "failed", False))


class _NoTimeout:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
