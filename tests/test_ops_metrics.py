"""Health, readiness and Prometheus metrics: in-process, then on gunicorn with two workers."""

from __future__ import annotations

import io
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from conftest import BUNDLED_MODEL, ROOT, GunicornServer, encode
from conftest import metric_value as value
from conftest import parse_metrics as parse

from emotion_server import activity, metrics
from emotion_server.api import create_app
from emotion_server.api.state import state_of
from emotion_server.launcher import serve

RAW = {"Content-Type": "application/octet-stream"}


def crop() -> bytes:
    return encode(np.random.default_rng(7).integers(0, 256, (48, 48), dtype=np.uint8), "PNG")


# --- in-process (Flask's test client) ------------------------------------------------------


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready" and body["detector"] == "centerface"
    assert body["model"] == BUNDLED_MODEL.name and body["warm_up_ms"] > 0


def test_readyz_is_503_json_until_warmed_up():
    app = create_app({"model_path": str(BUNDLED_MODEL)})
    readiness = state_of(app).readiness
    assert readiness.ready  # create_app returns only after the warm-up inference
    readiness.warm_up_seconds = None  # as it is between loading and the warm-up
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["error"] == "not_ready" and response.get_json()["message"]
    assert response.headers["Retry-After"] == "1"  # when to ask again, as 503 allows
    assert app.test_client().get("/healthz").status_code == 200  # alive all the same


def test_warm_up_runs_the_detector_and_the_model(monkeypatch):
    """create_app runs one inference through the pipeline: detector and model are called."""
    from emotion_server.faces import CenterFaceDetector
    from emotion_server.model import EmotionModel

    calls = []
    detect, predict = CenterFaceDetector.detect, EmotionModel.predict
    monkeypatch.setattr(
        CenterFaceDetector, "detect", lambda self, rgb: calls.append("detect") or detect(self, rgb)
    )
    monkeypatch.setattr(
        EmotionModel, "predict", lambda self, b: calls.append("predict") or predict(self, b)
    )
    create_app({"model_path": str(BUNDLED_MODEL)})
    assert "detect" in calls and "predict" in calls


def test_metrics_count_requests_errors_and_faces(client, astronaut):
    before = parse(client.get("/metrics").get_data(as_text=True))
    client.post("/inference", data=encode(astronaut), headers=RAW)
    client.post("/inference", data=crop(), headers=RAW)
    client.post("/inference", data=b"not an image", headers=RAW)
    client.post("/inference", data=b"{}", content_type="text/plain")
    client.get("/nowhere")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    after = parse(response.get_data(as_text=True))

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    requests_total = "emotion_http_requests_total"
    assert delta(requests_total, endpoint="/inference", method="POST", status="200") == 2
    assert delta(requests_total, endpoint="/inference", method="POST", status="400") == 1
    assert delta(requests_total, endpoint="/inference", method="POST", status="415") == 1
    assert delta(requests_total, endpoint="unmatched", method="GET", status="404") == 1
    errors = "emotion_http_errors_total"
    assert delta(errors, endpoint="/inference", code="invalid_image") == 1
    assert delta(errors, endpoint="/inference", code="unsupported_media_type") == 1
    assert delta(errors, endpoint="unmatched", code="not_found") == 1
    assert delta("emotion_images_total", outcome="faces_found") == 1
    assert delta("emotion_images_total", outcome="image_is_face_crop") == 1
    assert delta("emotion_images_total", outcome="invalid_image") == 1
    assert delta("emotion_faces_per_image_count") == 2
    assert delta("emotion_faces_per_image_sum") == 1  # the astronaut's face; the crop: 0
    duration = "emotion_http_request_duration_seconds_count"
    assert delta(duration, endpoint="/inference", method="POST") == 4


def test_methods_no_route_has_share_one_label(client):
    """A client's own method (gunicorn passes any token) must not make new series."""
    before = parse(client.get("/metrics").get_data(as_text=True))
    for method in ("AAAAAAAA", "BBBBBBBB", "PURGE"):
        assert client.open("/inference", method=method).status_code == 405
        assert client.open("/nowhere", method=method).status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    after = parse(text)
    assert "AAAAAAAA" not in text and "PURGE" not in text
    total = "emotion_http_requests_total"
    for endpoint, status in (("unmatched", "405"), ("unmatched", "404")):
        labels = {"endpoint": endpoint, "method": "other", "status": status}
        assert value(after, total, **labels) - value(before, total, **labels) == 3


def test_batch_images_are_counted_one_by_one(client, astronaut):
    before = parse(client.get("/metrics").get_data(as_text=True))
    files = [(encode(astronaut), "a.jpg"), (b"text", "b.jpg"), (crop(), "c.png")]
    form = {"images": [(io.BytesIO(data), name) for data, name in files]}
    assert client.post("/inference/batch", data=form).status_code == 200
    after = parse(client.get("/metrics").get_data(as_text=True))
    for outcome in ("faces_found", "invalid_image", "image_is_face_crop"):
        name = "emotion_images_total"
        assert value(after, name, outcome=outcome) - value(before, name, outcome=outcome) == 1


def test_model_metric_functions():
    """observe_model_call is what pipeline/model call around each model run."""
    before = parse(metrics.exposition()[0].decode())
    metrics.observe_model_call(batch_size=6, seconds=0.004)
    after = parse(metrics.exposition()[0].decode())
    for name, change in [
        ("emotion_model_batch_size_count", 1),
        ("emotion_model_batch_size_sum", 6),
        ("emotion_model_inference_seconds_count", 1),
    ]:
        assert value(after, name) - value(before, name) == pytest.approx(change)
    bucket = "emotion_model_batch_size_bucket"
    assert value(after, bucket, le="8.0") - value(before, bucket, le="8.0") == 1
    assert value(after, bucket, le="4.0") - value(before, bucket, le="4.0") == 0


# --- gunicorn, two workers, multiprocess metrics --------------------------------------------


@pytest.fixture(scope="module")
def ops_server(tmp_path_factory):
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    folder = tmp_path_factory.mktemp("prometheus")
    # One runtime thread per worker, two for a lone request's analysis, whatever the CPUs
    # (by the setting's first name, still read).
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "EMOTION_THREADS": "1",
        "EMOTION_DETECT_IDLE_THREADS": "2",
    }
    server = GunicornServer(env=env, workers=2)
    server.metrics_dir = folder
    yield server
    server.stop()


def _workers(server) -> list[int]:
    return sorted(child.pid for child in psutil.Process(server.process.pid).children())


def _scrape(server) -> dict:
    response = requests.get(server.url + "/metrics", timeout=30)
    assert response.status_code == 200
    return parse(response.text)


SENT = {"faces": 16, "crops": 8, "invalid": 6, "summary": 10}


@pytest.fixture(scope="module")
def loaded_server(ops_server, astronaut):
    """The ops server after a known mix of requests, sent 4 at a time (both workers serve)."""
    photo = encode(astronaut)
    jobs = (
        [("/inference", photo)] * SENT["faces"]
        + [("/inference", crop())] * SENT["crops"]
        + [("/inference", b"not an image at all")] * SENT["invalid"]
        + [("/summary", None)] * SENT["summary"]
    )

    def send(job):
        path, body = job
        if body is None:
            return requests.get(ops_server.url + path, timeout=60).status_code
        return requests.post(ops_server.url + path, data=body, headers=RAW, timeout=60).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(send, jobs))
    assert statuses.count(200) == SENT["faces"] + SENT["crops"] + SENT["summary"]
    return ops_server


@pytest.mark.e2e
def test_counters_add_up_across_two_workers(loaded_server):
    folder = Path(loaded_server.metrics_dir)
    pids = {path.stem.split("_")[-1] for path in folder.glob("counter_*.db")}
    assert len(pids) >= 2, f"expected both workers to have served: {sorted(folder.iterdir())}"
    for _ in range(4):  # each scrape may be answered by either worker: same totals
        samples = _scrape(loaded_server)
        req = "emotion_http_requests_total"
        ok = SENT["faces"] + SENT["crops"]
        assert value(samples, req, endpoint="/inference", method="POST", status="200") == ok
        assert value(samples, req, endpoint="/inference", method="POST", status="400") == 6
        assert value(samples, req, endpoint="/summary", method="GET", status="200") == 10
        errors = value(
            samples, "emotion_http_errors_total", endpoint="/inference", code="invalid_image"
        )
        assert errors == SENT["invalid"]
        assert value(samples, "emotion_images_total", outcome="faces_found") == SENT["faces"]
        assert value(samples, "emotion_images_total", outcome="image_is_face_crop") == 8
        assert value(samples, "emotion_faces_per_image_count") == ok
        assert value(samples, "emotion_faces_per_image_sum") == SENT["faces"]  # one face each
        latency = "emotion_http_request_duration_seconds_count"
        assert value(samples, latency, endpoint="/inference", method="POST") == ok + 6
        assert value(samples, "emotion_http_requests_in_progress") == 1  # this scrape


@pytest.mark.e2e
def test_model_metrics_are_fed(loaded_server):
    samples = _scrape(loaded_server)
    calls = value(samples, "emotion_model_batch_size_count")
    # At least one model call per classified image (plus the workers' warm-ups).
    assert calls >= SENT["faces"] + SENT["crops"]
    # One worker thread each, so no micro-batching: every call is one picture's one row
    # (the served model's views are inside its graph).
    assert value(samples, "emotion_model_batch_size_sum") == calls
    assert value(samples, "emotion_model_inference_seconds_count") == calls


@pytest.mark.e2e
def test_photos_sent_one_at_a_time_search_on_the_idle_cores(loaded_server, astronaut):
    """Nothing else in progress on the server: each photo's first pass and its emotion model
    call run on the idle threads, whichever worker takes it (the workers share their counts:
    activity.py).

    A worker that ended an analysis less than RECENT_S ago is taken as busy, so the photos are
    sent as a lone user's are, each more than RECENT_S after the last answer: on a fast host a
    request sent at once can be decoded and searched within RECENT_S of the previous one's
    end in the other worker (the CI run of 2026-12-06 saw 5 of 6 on the idle threads)."""
    passes, calls = "emotion_detector_passes_total", "emotion_model_calls_total"
    before = _scrape(loaded_server)
    photo = encode(astronaut)
    for _ in range(6):
        time.sleep(4 * activity.RECENT_S)
        response = requests.post(loaded_server.url + "/inference", data=photo, headers=RAW)
        assert response.status_code == 200 and response.json()["face_detected"]
    after = _scrape(loaded_server)
    idle = {"search_pass": "first", "threads": "idle"}
    own = {"search_pass": "first", "threads": "worker"}
    assert value(after, passes, **idle) - value(before, passes, **idle) == 6
    assert value(after, passes, **own) == value(before, passes, **own)
    assert value(after, calls, threads="idle") - value(before, calls, threads="idle") == 6
    assert value(after, calls, threads="worker") == value(before, calls, threads="worker")


@pytest.mark.e2e
def test_a_killed_worker_is_marked_dead_and_its_counts_stay(loaded_server):
    before = _scrape(loaded_server)
    victim = _workers(loaded_server)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while victim in _workers(loaded_server) or len(_workers(loaded_server)) < 2:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.2)
    folder = Path(loaded_server.metrics_dir)
    # child_exit removed its live gauge; its counters stay in the totals.
    assert not (folder / f"gauge_livesum_{victim}.db").exists()
    after = _scrape(loaded_server)
    req = "emotion_http_requests_total"
    labels = {"endpoint": "/inference", "method": "POST", "status": "200"}
    assert value(after, req, **labels) == value(before, req, **labels)
    assert value(after, "emotion_http_requests_in_progress") == 1


@pytest.mark.e2e
def test_serve_makes_a_fresh_metrics_folder(astronaut):
    """`emotion-server serve` with no PROMETHEUS_MULTIPROC_DIR: one is made, and counts add up."""
    env = {"PROMETHEUS_MULTIPROC_DIR": None, "EMOTION_MODEL_PATH": str(BUNDLED_MODEL)}
    with serve(env=env, workers=2, cwd=ROOT) as server:
        url = server.url
        # `serve` execs gunicorn in the same process: its environment names the folder.
        environ = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{server.pid}/environ").read_text().split("\0")
            if "=" in item
        )
        folder = Path(environ["PROMETHEUS_MULTIPROC_DIR"])
        assert folder.is_dir() and folder.name.startswith("emotion-server-metrics-")
        with ThreadPoolExecutor(4) as pool:
            sent = list(
                pool.map(
                    lambda _: (
                        requests.post(url + "/inference", data=crop(), headers=RAW).status_code
                    ),
                    range(8),
                )
            )
        assert sent == [200] * 8
        for _ in range(3):
            samples = parse(requests.get(url + "/metrics", timeout=30).text)
            labels = {"endpoint": "/inference", "method": "POST", "status": "200"}
            assert value(samples, "emotion_http_requests_total", **labels) == 8
    assert server.stopped.exit_code == 0
    # The server removes the folder it made when it stops (gunicorn's on_exit hook).
    assert not folder.exists(), "the metrics folder serve made outlived the server"
