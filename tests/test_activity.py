"""The count of analyses in progress on the whole server, shared by gunicorn's workers through
the hooks in ops.py (pre_fork, post_fork, child_exit), with real forked processes."""

from __future__ import annotations

import os
import select
import signal
import time
from types import SimpleNamespace

import pytest

from emotion_server import activity, ops


@pytest.fixture()
def master(monkeypatch):
    """This process as gunicorn's master: a fresh shared block and no workers yet."""
    monkeypatch.setattr(activity, "_shared", None)
    return SimpleNamespace(WORKERS={})


def _fork_worker(server, program) -> tuple[SimpleNamespace, int, int]:
    """Fork a worker as gunicorn does (pre_fork in the master, post_fork in the child); the
    child runs `program(read_fd, write_fd)` and leaves with os._exit. Returns the worker, its
    pid and the master's ends of the pipes (to the child, from the child)."""
    worker = SimpleNamespace()
    ops.pre_fork(server, worker)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(to_child_w)  # else the child would hold its own pipe open: no EOF
            os.close(from_child_r)
            ops.post_fork(server, worker)
            program(to_child_r, from_child_w)
            status = 0
        finally:
            os._exit(status)
    os.close(to_child_r)
    os.close(from_child_w)
    worker.pid = pid
    server.WORKERS[pid] = worker
    return worker, to_child_w, from_child_r


def _busy_until_told(read_fd: int, write_fd: int) -> None:
    """A worker analysing an image: in progress until the master writes a byte."""
    with activity.share():
        os.write(write_fd, b"busy")
        os.read(read_fd, 1)


def _dies_busy(read_fd: int, write_fd: int) -> None:
    """A worker killed in the middle of an analysis: it never leaves it."""
    activity.share().__enter__()
    os.write(write_fd, b"busy")
    os.read(read_fd, 1)
    os._exit(9)


def _reports_alone(read_fd: int, write_fd: int) -> None:
    """Each time the master writes a byte, analyse and report whether it was alone."""
    while os.read(read_fd, 1):
        with activity.share() as mine:
            os.write(write_fd, b"1" if mine.alone() else b"0")


def _read(fd: int, size: int, timeout_s: float = 30.0) -> bytes:
    """Read from a child, failing (not hanging) if it does not answer."""
    ready, _, _ = select.select([fd], [], [], timeout_s)
    assert ready, "the child did not answer"
    return os.read(fd, size)


def _ask(to_child: int, from_child: int) -> bool:
    os.write(to_child, b"?")
    return _read(from_child, 1) == b"1"


def _reap(server, worker, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (waited := os.waitpid(worker.pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(worker.pid, signal.SIGKILL)
            raise AssertionError("the child did not exit")
        time.sleep(0.01)
    status = waited[1]
    del server.WORKERS[worker.pid]
    ops.child_exit(server, worker)  # as gunicorn's master calls it for a worker that exited
    return os.waitstatus_to_exitcode(status)


def test_workers_see_each_others_analyses_and_a_dead_workers_are_cleared(master):
    asker, ask_w, ask_r = _fork_worker(master, _reports_alone)
    assert _ask(ask_w, ask_r), "nothing else in progress: alone"

    busy, busy_w, busy_r = _fork_worker(master, _busy_until_told)
    assert busy.activity_slot != asker.activity_slot
    assert _read(busy_r, 4) == b"busy"
    assert not _ask(ask_w, ask_r), "the other worker's analysis is seen"
    os.write(busy_w, b"x")
    assert _reap(master, busy) == 0
    assert _ask(ask_w, ask_r), "finished: alone again"

    # A worker that dies mid-analysis would count for ever; child_exit zeroes its slot, and the
    # worker forked in its place gets the free slot back.
    dying, dying_w, dying_r = _fork_worker(master, _dies_busy)
    assert _read(dying_r, 4) == b"busy"
    assert not _ask(ask_w, ask_r)
    os.write(dying_w, b"x")
    assert _reap(master, dying) == 9
    assert _ask(ask_w, ask_r), "the dead worker's analysis no longer counts"
    replacement = SimpleNamespace()
    ops.pre_fork(master, replacement)
    assert replacement.activity_slot == dying.activity_slot

    os.close(ask_w)  # the asker's loop ends
    assert _reap(master, asker) == 0


def test_a_worker_gone_before_its_signal_is_cleared_too(master):
    """gunicorn's master, signalling a worker that is already gone (ESRCH), forgets it and
    calls worker_exit, not child_exit: its slot must be cleared there too."""
    from gunicorn.arbiter import Arbiter

    asker, ask_w, ask_r = _fork_worker(master, _reports_alone)
    dying, dying_w, dying_r = _fork_worker(master, _dies_busy)
    assert _read(dying_r, 4) == b"busy"
    os.write(dying_w, b"x")
    os.waitpid(dying.pid, 0)  # reaped elsewhere: gunicorn's master never saw it exit
    assert not _ask(ask_w, ask_r), "the dead worker's analysis still counts"
    dying.tmp = SimpleNamespace(close=lambda: None)  # gunicorn's heartbeat file
    master.cfg = SimpleNamespace(worker_exit=ops.worker_exit)
    master._stats = {"workers_killed": 0}
    Arbiter.kill_worker(master, dying.pid, signal.SIGTERM)  # gunicorn's own code: ESRCH path
    assert dying.pid not in master.WORKERS
    assert _ask(ask_w, ask_r), "cleared by worker_exit in the master"
    os.close(ask_w)
    assert _reap(master, asker) == 0


def test_threads_of_one_worker_count_in_its_slot():
    """A gthread worker's threads share one slot: two analyses at once are not alone."""
    mine = activity.Activity()
    with mine:
        assert mine.alone() and mine.in_progress() == 1
        with mine:
            assert not mine.alone() and mine.in_progress() == 2
    assert mine.in_progress() == 0


def test_a_worker_between_two_analyses_is_still_busy(monkeypatch):
    """Another worker's analysis that ended within RECENT_S counts as busy (under load it is
    reading its next request), this worker's own last one does not, and an old one does not."""
    now = [1000.0]
    monkeypatch.setattr(activity.time, "monotonic", lambda: now[0])
    mine = activity.Activity()
    other = mine.for_worker(1)
    with other:
        pass
    with mine:
        assert not mine.alone(), "the other worker ended an analysis this instant"
    now[0] += activity.RECENT_S / 2
    assert not mine.alone()
    now[0] += activity.RECENT_S
    with mine:
        assert mine.alone(), "the other worker's last analysis is old: alone"
    assert mine.alone(), "its own last analysis never counts against it"
    with other:
        pass
    mine.clear(1)  # the master clears a dead worker's slot: its last analysis goes too
    assert mine.alone()
