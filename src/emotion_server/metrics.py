"""Prometheus metrics: the metric objects, and the few functions the other rooms call to feed them.

Under gunicorn the workers write their values to files in $PROMETHEUS_MULTIPROC_DIR and /metrics
adds up every worker's (prometheus_client's multiprocess mode; `emotion_server.ops` prepares the
folder). prometheus_client decides between that mode and the in-memory one when it is first
imported, so this module is imported only in workers, never by gunicorn's master before the
folder is set.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)

PREFIX = "emotion"

# Seconds: from a 48x48 crop (about a millisecond) to a large photo under load.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MODEL_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
FACE_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests answered, by route, method and status",
    ["endpoint", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time from the request's arrival in the app to its response, by route and method",
    ["endpoint", "method"],
    buckets=LATENCY_BUCKETS,
)
IN_PROGRESS = Gauge(
    f"{PREFIX}_http_requests_in_progress",
    "Requests being handled now, all live workers together",
    multiprocess_mode="livesum",
)
ERRORS = Counter(
    f"{PREFIX}_http_errors",
    'Error responses by route and stable error code (the JSON body\'s "error")',
    ["endpoint", "code"],
)
IMAGES = Counter(
    f"{PREFIX}_images",
    "Images handled by /inference and /inference/batch, by outcome: faces_found, "
    "no_face_found, image_is_face_crop, or the error code that refused the image",
    ["outcome"],
)
FACES_PER_IMAGE = Histogram(
    f"{PREFIX}_faces_per_image",
    "Faces found in each classified image (0: the whole image was classified)",
    buckets=FACE_BUCKETS,
)
MODEL_SECONDS = Histogram(
    f"{PREFIX}_model_inference_seconds",
    "Time of one call of the emotion model",
    buckets=MODEL_BUCKETS,
)
MODEL_BATCH_SIZE = Histogram(
    f"{PREFIX}_model_batch_size",
    "Crops in one call of the emotion model (test-time augmentation's copies included)",
    buckets=BATCH_BUCKETS,
)
MODEL_CALLS = Counter(
    f"{PREFIX}_model_calls",
    "Calls of the emotion model, by threads (worker: the worker's share of the CPUs; idle: the "
    "server's idle CPUs, when nothing else was being analysed)",
    ["threads"],
)
DETECTOR_PASSES = Counter(
    f"{PREFIX}_detector_passes",
    "Passes of the face detector over an image, by pass (first: at reduced size, for the "
    "large faces; full: at EMOTION_DETECT_MAX_SIDE) and threads (worker: the worker's share of "
    "the CPUs; idle: the server's idle CPUs, when nothing else was being analysed)",
    ["search_pass", "threads"],
)


def observe_detector_pass(first: bool, idle: bool) -> None:
    DETECTOR_PASSES.labels("first" if first else "full", "idle" if idle else "worker").inc()


def observe_model_call(batch_size: int, seconds: float, idle: bool = False) -> None:
    """One call of the emotion model: `batch_size` crops in `seconds`, on the idle CPUs or the
    worker's share.

    For `model`/`pipeline` to call around the ONNX Runtime session's run().
    """
    MODEL_BATCH_SIZE.observe(batch_size)
    MODEL_CALLS.labels("idle" if idle else "worker").inc()
    MODEL_SECONDS.observe(seconds)


def observe_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(endpoint, method, str(status)).inc()
    REQUEST_SECONDS.labels(endpoint, method).observe(seconds)


def observe_error(endpoint: str, code: str) -> None:
    ERRORS.labels(endpoint, code).inc()


def observe_image(outcome: str, faces: int | None = None) -> None:
    """One image's outcome; `faces` (classified images only) feeds the faces histogram."""
    IMAGES.labels(outcome).inc()
    if faces is not None:
        FACES_PER_IMAGE.observe(faces)


def multiprocess_mode() -> bool:
    """Whether this process writes its values to $PROMETHEUS_MULTIPROC_DIR (decided at import)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def exposition() -> tuple[bytes, str]:
    """The text format of every metric (all workers' when in multiprocess mode), and its type."""
    if multiprocess_mode():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
