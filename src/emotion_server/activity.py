"""Images being analysed on the whole server, across gunicorn's worker processes.

A request may use more than its worker's share of the cores when nothing else is being
analysed anywhere on the server (faces.py: CenterFace's INT8 pass, and model.py: the emotion
model's call, on the idle threads): a lone user waits less, and under load every worker keeps
to its share. Each worker counts its own analyses in progress, and notes when its last one
ended, in its slot of a small block of shared memory that gunicorn's master maps before it
forks the workers (`share`, and the `pre_fork`/`post_fork`/`child_exit` hooks in ops.py); any
worker reads them all. Only a slot's own worker writes it, and the master zeroes
the slot of a worker that died, so no lock between processes is needed: a stale read costs at
most one image's choice of threads. Outside gunicorn (the tests, `python app.py`, the CLI) a
process gets a block of its own and sees only itself.

Imported by gunicorn's master, so nothing here may import ONNX Runtime.
"""

from __future__ import annotations

import mmap
import threading
import time

import numpy as np

from emotion_server.config import MAX_WORKERS

# Worker processes the block can tell apart: serve refuses more than MAX_WORKERS
# (config.HIGHEST), and a HUP reload starts the new ones before the old ones stop.
SLOTS = 2 * MAX_WORKERS
# A worker whose last analysis ended less than this long ago is taken as still busy: under
# load a worker spends a moment between two analyses (answering one, reading the next), and
# a lone analysis that took the idle cores then would contend with it. A lone user's next
# request comes later than this (a round trip, a decode).
RECENT_S = 0.005


class Activity:
    """The analyses in progress in every worker (one int32 slot each) and when each worker's
    last one ended (one float64 each, monotonic clock), and this worker's slot."""

    def __init__(self, block: mmap.mmap | None = None, slot: int = 0):
        # An anonymous shared mapping: a fork's child sees the same memory as its parent.
        self._block = block if block is not None else mmap.mmap(-1, SLOTS * (4 + 8))
        self._counts = np.frombuffer(self._block, np.int32, SLOTS)
        self._ended = np.frombuffer(self._block, np.float64, SLOTS, offset=SLOTS * 4)
        self.slot = slot % SLOTS
        self._lock = threading.Lock()  # a gthread worker's threads share the slot

    def __enter__(self) -> Activity:
        with self._lock:
            self._counts[self.slot] += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._counts[self.slot] -= 1
            self._ended[self.slot] = time.monotonic()

    def in_progress(self) -> int:
        """Analyses in progress on the whole server, this one included."""
        return int(self._counts.sum())

    def alone(self) -> bool:
        """True when no other analysis is in progress on the server than the caller's, and no
        other worker ended one in the last RECENT_S (it is likely between two)."""
        if self.in_progress() > 1:
            return False
        others = self._ended > time.monotonic() - RECENT_S
        others[self.slot] = False
        return not others.any()

    def for_worker(self, slot: int) -> Activity:
        """The same block, seen from another worker's slot (in that worker, after the fork)."""
        return Activity(self._block, slot)

    def clear(self, slot: int) -> None:
        """Zero a dead worker's slot (in the master): what it had in progress never ends."""
        self._counts[slot % SLOTS] = 0
        self._ended[slot % SLOTS] = 0.0


_shared: Activity | None = None


def share() -> Activity:
    """This process's view of the server's block: mapped once in gunicorn's master before any
    worker is forked, attached to a worker's slot after the fork; a block of its own outside
    gunicorn."""
    global _shared
    if _shared is None:
        _shared = Activity()
    return _shared


def attach(slot: int) -> None:
    """In a worker just forked: count in `slot` of the block inherited from the master."""
    global _shared
    _shared = share().for_worker(slot)


def free_slot(taken: set[int]) -> int:
    """The lowest slot no live worker holds (the master assigns it before forking)."""
    return next((slot for slot in range(SLOTS) if slot not in taken), 0)
