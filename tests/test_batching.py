"""Micro-batching: concurrent requests share model calls and each gets its own answer."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import BUNDLED_MODEL, GunicornServer, encode

from emotion_server.batching import InFlight, MicroBatcher
from emotion_server.config import Settings
from emotion_server.pipeline import Pipeline


def _crops(count: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    return [encode(rng.integers(0, 256, (48, 48), dtype=np.uint8), "PNG") for _ in range(count)]


def test_batched_pipeline_matches_single_requests():
    single = Pipeline.from_settings(Settings(model_path=str(BUNDLED_MODEL)))
    batched = Pipeline.from_settings(
        Settings(
            model_path=str(BUNDLED_MODEL), worker_threads=8, batch_max_wait_ms=50, batch_max_size=64
        )
    )
    assert single.batcher is None and batched.batcher is not None
    images = _crops(24)
    barrier = threading.Barrier(8)

    def analyze(data: bytes):
        barrier.wait()  # start together so the batcher has company to batch
        return batched.analyze(data)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(analyze, images[:8]))
        results += list(pool.map(batched.analyze, images[8:]))
    assert max(batched.batcher.batch_sizes) > 2  # rows of several requests in one call
    for data, result in zip(images, results, strict=True):
        expected = single.analyze(data).classification.probabilities
        got = result.classification.probabilities
        assert max(abs(expected[k] - got[k]) for k in expected) <= 1e-5


def test_lone_request_does_not_wait_for_company():
    calls = []
    in_flight = InFlight()
    batcher = MicroBatcher(lambda rows: calls.append(len(rows)) or rows * 2, 32, 10.0, in_flight)
    with in_flight:
        out = batcher.predict(np.ones((3, 2)))  # would block 10 s if it waited for company
    assert calls == [3] and (out == 2).all()


def test_errors_reach_every_caller_and_the_batcher_survives():
    def run(rows):
        if (rows < 0).any():
            raise ValueError("negative rows")
        return rows

    batcher = MicroBatcher(run, 32, 0.01, InFlight())
    with pytest.raises(ValueError, match="negative"):
        batcher.predict(-np.ones((1, 2)))
    assert (batcher.predict(np.ones((1, 2))) == 1).all()


def _together(batcher: MicroBatcher, in_flight: InFlight, jobs: list[np.ndarray]) -> list:
    """Each job's rows from its own thread, all queued before the batcher may run; each
    thread's answer (its rows back, or the exception it raised), in order."""
    barrier = threading.Barrier(len(jobs))

    def predict(rows):
        with in_flight:
            barrier.wait()
            try:
                return batcher.predict(rows)
            except ValueError as error:
                return error

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(predict, jobs))


def test_one_requests_bad_rows_fail_that_request_only():
    calls = []

    def run(rows):
        calls.append(len(rows))
        if (rows < 0).any():
            raise ValueError("negative rows")
        return rows * 10

    in_flight = InFlight()
    batcher = MicroBatcher(run, 64, 5.0, in_flight)
    jobs = [np.full((1, 2), 1.0), -np.ones((3, 2)), np.full((40, 2), 2.0), np.full((2, 2), 3.0)]
    answers = _together(batcher, in_flight, jobs)
    assert calls[0] == 46 and sorted(calls[1:]) == [1, 2, 3, 40]  # together, then alone
    assert isinstance(answers[1], ValueError)
    for index in (0, 2, 3):
        assert np.array_equal(answers[index], jobs[index] * 10)  # each its own rows


def test_a_batch_stays_within_max_rows():
    in_flight = InFlight()
    batcher = MicroBatcher(lambda rows: rows + 1, 8, 5.0, in_flight)
    jobs = [np.full((3, 2), float(i)) for i in range(5)] + [np.full((12, 2), 9.0)]
    answers = _together(batcher, in_flight, jobs)
    for rows, answer in zip(jobs, answers, strict=True):
        assert np.array_equal(answer, rows + 1)
    sizes = batcher.batch_sizes
    assert sum(sizes) == 27 and 12 in sizes  # the large one ran alone
    assert all(size <= 8 for size in sizes if size != 12)
    assert any(3 < size <= 8 for size in sizes)  # still batched, two jobs of 3 together


@pytest.mark.e2e
def test_concurrent_http_requests_each_get_their_own_result():
    import requests

    server = GunicornServer(
        env={"EMOTION_WORKER_THREADS": "8", "EMOTION_BATCH_MAX_WAIT_MS": "20"}, workers=1
    )
    try:
        single = Pipeline.from_settings(Settings(model_path=str(BUNDLED_MODEL)))
        images = _crops(32)

        def post(data: bytes) -> dict:
            return requests.post(
                server.url + "/inference",
                data=data,
                timeout=30,
                headers={"Content-Type": "application/octet-stream"},
            ).json()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, images))
        for data, answer in zip(images, answers, strict=True):
            expected = single.analyze(data).classification.probabilities
            assert answer["probabilities"] == pytest.approx(expected, abs=1e-5)
    finally:
        server.stop()
