"""workers.py in this process. The read deadline of DeadlineSocket on a real socket pair; the
least-connections balancing between gevent workers (LoadBoard, BalancedServer) with a real
gevent server on a loopback port, a peer worker played by writing its slot of the board.
The end-to-end checks with real gunicorn workers are in test_frontend.py."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import gevent
import gevent.event
import gevent.socket
import pytest

from emotion_server import workers
from emotion_server.errors import ReadTimeout
from emotion_server.workers import DeadlineSocket, LoadBoard


@pytest.fixture
def pair():
    server_end, client_end = socket.socketpair()
    yield server_end, client_end
    server_end.close()
    client_end.close()


def test_a_request_waiting_in_the_kernel_is_read_after_the_deadline(pair):
    """The deadline bounds waiting for the client, not the server: a request that arrived in
    time but was reached late (a worker answering a burst of others) is still read."""
    server_end, client_end = pair
    sock = DeadlineSocket(server_end, read_timeout=0.05, min_rate=0, idle=0)
    client_end.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    time.sleep(0.1)  # past the deadline
    assert sock.recv(4096) == b"GET /healthz HTTP/1.1\r\n\r\n"
    with pytest.raises(ReadTimeout):  # nothing more arrived: cut off, without waiting
        sock.recv(4096)
    assert sock.timed_out


def test_a_request_that_arrived_while_the_timer_fired_is_read(pair):
    """A busy event loop may run the wait's timer before the socket's readiness: the bytes
    that are there are read, not dropped with a reset."""
    server_end, client_end = pair

    def busy_loop_wait(fileno: int, timeout: float) -> None:
        time.sleep(timeout + 0.05)  # the loop was busy elsewhere; the request came meanwhile
        raise TimeoutError

    sock = DeadlineSocket(
        server_end, read_timeout=0.05, min_rate=0, idle=0, wait_readable=busy_loop_wait
    )
    client_end.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert sock.recv(4096) == b"GET / HTTP/1.1\r\n\r\n"
    assert sock.received == len(b"GET / HTTP/1.1\r\n\r\n")


def test_a_client_that_sends_nothing_is_cut_off_at_the_deadline(pair):
    server_end, _ = pair
    sock = DeadlineSocket(server_end, read_timeout=0.2, min_rate=0, idle=0)
    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        sock.recv(4096)
    assert 0.15 < time.monotonic() - started < 5  # waited for the deadline, not forever
    assert sock.received == 0


def test_a_client_that_closed_after_the_deadline_reads_as_closed(pair):
    server_end, client_end = pair
    sock = DeadlineSocket(server_end, read_timeout=0.01, min_rate=0, idle=0)
    client_end.close()
    time.sleep(0.05)
    assert sock.recv(4096) == b""  # end of stream, as gunicorn expects it


def test_a_client_that_stops_reading_the_answer_is_cut_off(pair):
    """Writing the answer has the read's bound too: a client that takes none of it (a full
    receive window) breaks the write after the timeout, as one that went away; a client that
    reads gets all of it."""
    import threading

    server_end, _ = pair  # the client end reads nothing
    sock = DeadlineSocket(server_end, read_timeout=0.3, min_rate=1e12, idle=0)
    answer = b"x" * 20_000_000  # far more than the socket buffers hold
    started = time.monotonic()
    with pytest.raises(BrokenPipeError):
        sock.sendall(answer)
    assert 0.25 < time.monotonic() - started < 5 and sock.stalled
    assert server_end.gettimeout() is None  # the socket is left as it was

    reader_end, writer_end = socket.socketpair()
    received = []
    reading = threading.Thread(
        target=lambda: received.extend(iter(lambda: reader_end.recv(1 << 20), b""))
    )
    reading.start()
    try:
        writer = DeadlineSocket(writer_end, read_timeout=0.3, min_rate=1e6, idle=0)
        writer.sendall(answer[:5_000_000])
        assert not writer.stalled
    finally:
        writer_end.close()
        reading.join(10)
        reader_end.close()
    assert sum(map(len, received)) == 5_000_000


def test_slots_are_handed_out_once_and_reused_when_their_process_is_gone():
    board = LoadBoard(slots=3)
    first, second = board.reserve(), board.reserve()
    assert (first, second) == (0, 1)  # reserved, not yet started: not handed out again
    board.occupy(first, os.getpid())  # a live process
    board.occupy(second, 2**22 + 12345)  # above Linux's pid_max: no such process
    assert board.reserve() == 1  # the dead worker's slot
    assert board.reserve() == 2
    assert board.reserve() is None  # all held: that worker runs without balancing


def test_a_worker_yields_only_to_a_responsive_peer_holding_fewer_connections(monkeypatch):
    monkeypatch.setattr(workers, "PEER_FRESH_S", 5.0)  # a slow machine's pause is not staleness
    board = LoadBoard(slots=4)
    mine, peer = board.reserve(), board.reserve()
    board.occupy(mine, os.getpid())
    board.occupy(peer, os.getpid())
    assert not board.should_yield(mine)  # level
    board.count(mine, +1)
    assert board.should_yield(mine)  # the peer holds fewer and is responsive
    board.count(peer, +2)
    assert not board.should_yield(mine)  # the peer holds more
    board.count(peer, -2)
    board.retire(peer)  # draining: its listener is closed
    assert not board.should_yield(mine)
    board.beat(peer)
    assert board.should_yield(mine)
    board.release(peer)
    assert not board.should_yield(mine)


class _Server:
    """A BalancedServer on a loopback port that keeps every connection open until told."""

    def __init__(self, board: LoadBoard, slot: int):
        self.accepted: list = []
        self.done = gevent.event.Event()
        self.server = workers.BalancedServer(
            ("127.0.0.1", 0), handle=self._hold, board=board, slot=slot
        )
        self.server.max_accept = 1  # as gunicorn sets it with more than one worker
        self.server.start()

    def _hold(self, sock, address):
        self.accepted.append(address)
        self.done.wait()

    def connect(self) -> gevent.socket.socket:
        return gevent.socket.create_connection(self.server.address, timeout=5)

    def accepted_within(self, count: int, seconds: float) -> bool:
        until = time.monotonic() + seconds
        while len(self.accepted) < count and time.monotonic() < until:
            gevent.sleep(0.002)
        return len(self.accepted) >= count


@pytest.fixture
def board_and_peer(monkeypatch):
    """This worker's slot and a peer's, the peer's heartbeat counted fresh for an hour (so a
    test process held up by a busy machine does not make it stale by accident)."""
    monkeypatch.setattr(workers, "PEER_FRESH_S", 3600.0)
    board = LoadBoard(slots=4)
    mine, peer = board.reserve(), board.reserve()
    board.occupy(mine, os.getpid())
    board.occupy(peer, os.getpid())
    return board, mine, peer


def test_a_pending_connection_is_left_to_the_less_loaded_peer_while_it_is_responsive(
    board_and_peer, monkeypatch
):
    board, mine, peer = board_and_peer
    server = _Server(board, mine)
    clients = []
    try:
        clients.append(server.connect())
        assert server.accepted_within(1, 5)  # level (0 and 0): accepted
        assert board.connections(mine) == 1  # counted on accept

        clients.append(server.connect())
        # The peer (0 connections, responsive) would take it; this worker leaves it queued
        # (looking again every RECHECK_S meanwhile).
        assert not server.accepted_within(2, 0.3)
        board.count(peer, +1)  # the peer took one elsewhere: level again, so this worker accepts
        assert server.accepted_within(2, 5)
        assert board.connections(mine) == 2

        clients.append(server.connect())
        assert not server.accepted_within(3, 0.3)
        # The peer's last heartbeat is now older than PEER_FRESH_S (a long computation).
        monkeypatch.setattr(workers, "PEER_FRESH_S", 0.0)
        assert server.accepted_within(3, 5)  # passed over
    finally:
        server.done.set()
        for client in clients:
            client.close()
        gevent.sleep(0.05)
        server.server.stop()
    assert board.connections(mine) == 0  # every close counted


def _read_available(sock: socket.socket) -> list[bytes]:
    """Each recv() that returns within a moment: one per segment the peer sent, roughly."""
    sock.settimeout(0.2)
    reads = []
    with contextlib.suppress(TimeoutError):
        while data := sock.recv(65536):
            reads.append(data)
    return reads


class _Recorder:
    """The socket as DeadlineSocket sees it, with each sendall() it makes written down."""

    def __init__(self, sock: socket.socket):
        self.sock, self.sent = sock, []

    def sendall(self, data, *flags):
        self.sent.append(bytes(data))
        self.sock.sendall(data, *flags)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_a_response_head_goes_out_with_its_body_in_one_send(pair):
    server_end, client_end = pair
    recorder = _Recorder(server_end)
    sock = DeadlineSocket(recorder, read_timeout=5, min_rate=0, idle=0)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    sock.hold_head()
    sock.sendall(head)
    client_end.settimeout(0.1)
    with pytest.raises(TimeoutError):  # held until the body comes
        client_end.recv(65536)
    sock.sendall(b"{}")
    sock.sendall(b"more")  # later writes (a streamed body) pass straight through
    assert recorder.sent == [head + b"{}", b"more"]
    assert b"".join(_read_available(client_end)) == head + b"{}more"
    recorder.sent.clear()

    sock.hold_head()
    sock.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    sock.flush()  # a head with no body is sent when the response ends
    assert b"".join(_read_available(client_end)) == b"HTTP/1.1 204 No Content\r\n\r\n"
    sock.flush()  # nothing held: nothing sent
    assert _read_available(client_end) == []
    assert recorder.sent == [b"HTTP/1.1 204 No Content\r\n\r\n"]
