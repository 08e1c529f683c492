"""GET /metrics (Prometheus text format) and the request hooks that count and time every request.

The metric objects live in `emotion_server.metrics`; this module feeds the HTTP ones.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from flask_openapi3 import APIBlueprint, Tag

from emotion_server import metrics
from emotion_server.api.schemas import COMMON_RESPONSES, METRICS_TEXT
from emotion_server.errors import EmotionServerError
from emotion_server.results import InferenceResult

bp = APIBlueprint(
    "metrics",
    __name__,
    abp_tags=[Tag(name="operations", description="Health, readiness and metrics")],
    abp_responses=COMMON_RESPONSES,
)

UNMATCHED = "unmatched"  # requests for no route share one label (no path explosion)


@bp.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics of all the workers",
    description="Requests by route and status, latency histograms, errors by code, images by "
    "outcome, faces per image, model call time and batch size. Needs an API key where "
    "EMOTION_API_KEYS is set.",
    responses={200: METRICS_TEXT},
)
def metrics_text():
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


def observe_result(result: InferenceResult | EmotionServerError) -> None:
    """One image's outcome for the image and faces-per-image metrics."""
    if isinstance(result, EmotionServerError):
        metrics.observe_image(result.code)
    elif result.face_detected:
        metrics.observe_image("faces_found", len(result.faces))
    else:
        metrics.observe_image(result.whole_image_reason or "whole_image", 0)


def _endpoint() -> str:
    return request.url_rule.rule if request.url_rule is not None else UNMATCHED


def observe_stream_error(code: str) -> None:
    """An error that ends a streamed answer (NDJSON) after its 200 status line went out: counted
    by code like any error response. Called from the stream, in its request's context."""
    metrics.observe_error(_endpoint(), code)


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})


def method_label(method: str | None) -> str:
    """The method is the client's word (gunicorn takes any token): one label value for those
    no route has, or each would make new series."""
    return method if method in KNOWN_METHODS else "other"


def register(app: Flask) -> None:
    """Time and count every request; registered first, so refused requests are counted too."""

    @app.before_request
    def _start():
        g.metrics_started = time.perf_counter()
        metrics.IN_PROGRESS.inc()
        g.metrics_in_progress = True

    @app.after_request
    def _observe(response: Response) -> Response:
        endpoint = _endpoint()
        started = g.get("metrics_started")
        if started is not None:
            method = method_label(request.method)
            status = response.status_code

            def observe():
                elapsed = time.perf_counter() - started
                metrics.observe_request(endpoint, method, status, elapsed)

            if response.is_streamed:
                # The view returned at the stream's start: timed to its last byte instead.
                response.call_on_close(observe)
            else:
                observe()
        code = g.get("error_code")
        if code:
            metrics.observe_error(endpoint, code)
        return response

    @app.teardown_request
    def _finished(exc):
        if g.pop("metrics_in_progress", False):
            metrics.IN_PROGRESS.dec()
