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
