"""Dynamic micro-batching: crops from concurrent requests in one worker share one model call.

A request thread hands its rows to the batcher and waits. One batching thread takes the first
rows queued, then keeps collecting until the next request's rows would take the batch past
`max_rows` (they start the next batch; a request larger than it runs alone), or `max_wait` has
passed, or every request now in the pipeline has queued its rows (nobody else is coming, so a
lone request is never kept waiting), runs the model once and hands each caller its own rows
back. Where the batch's call fails, each request's rows run again alone, so one request's bad
rows fail that request only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)
POLL_S = 0.0005  # how often a collecting batch reads the count of requests in flight again


@dataclass
class _Job:
    rows: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class InFlight:
    """Counts the requests between decoding and their answer, for the batcher to wait on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> InFlight:
        with self._lock:
            self.count += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.count -= 1


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_rows: int,
        max_wait_s: float,
        in_flight: InFlight,
    ):
        self._run = run
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._in_flight = in_flight
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._held: _Job | None = None  # the first job of the next batch (it did not fit)
        self.batch_sizes: list[int] = []  # recent batch sizes in rows, for tests and metrics
        threading.Thread(target=self._loop, name="micro-batcher", daemon=True).start()

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Run `rows` through the model, possibly together with other callers' rows."""
        job = _Job(rows)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        if job.result is None:  # the batching thread was stopped part-way (interpreter exit)
            raise RuntimeError("the batcher stopped before these rows ran")
        return job.result

    def _collect(self) -> list[_Job]:
        if self._held is not None:
            jobs, self._held = [self._held], None
        else:
            jobs = [self._queue.get()]
        rows = len(jobs[0].rows)
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_rows and len(jobs) < self._in_flight.count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                # In short slices, so the count of requests in flight is read again: those of
                # the last batch leave it a moment after their answer.
                job = self._queue.get(timeout=min(remaining, POLL_S))
            except queue.Empty:
                continue
            if rows + len(job.rows) > self.max_rows:
                self._held = job
                break
            jobs.append(job)
            rows += len(job.rows)
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._collect()
            try:
                output = self._run(np.concatenate([job.rows for job in jobs]))
                self.batch_sizes = [*self.batch_sizes[-999:], len(output)]
                start = 0
                for job in jobs:
                    job.result = output[start : start + len(job.rows)]
                    start += len(job.rows)
            except Exception as error:
                if len(jobs) == 1:  # handed to its caller, never lost
                    jobs[0].error = error
                else:
                    log.warning(
                        "a batch of %d requests failed (%r): each runs alone", len(jobs), error
                    )
                    self._run_alone(jobs)
            except BaseException as error:
                for job in jobs:
                    job.error = error
            finally:
                for job in jobs:
                    job.done.set()

    def _run_alone(self, jobs: list[_Job]) -> None:
        """Each job's rows through the model on their own, each with its own result or error
        (a batch too large for the memory left may fit in pieces, too)."""
        for job in jobs:
            try:
                job.result = self._run(job.rows)
            except Exception as error:
                job.error = error
