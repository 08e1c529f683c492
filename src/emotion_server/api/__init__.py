"""The HTTP layer: `create_app()` builds the Flask app (gunicorn calls it once per worker)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_openapi3 import Info, OpenAPI

from emotion_server import __version__
from emotion_server.api.state import AppState, attach
from emotion_server.config import Settings
from emotion_server.pipeline import Pipeline


def create_app(
    test_config: Mapping[str, Any] | None = None, *, pipeline: Pipeline | None = None
) -> Flask:
    """Build the app; settings come from the environment, overridden by `test_config`.

    The model and the face detector are loaded here, once per process, never per request,
    unless a ready `pipeline` is given (tests share one between apps); either way it is
    warmed up with one inference on a synthetic image before the app is returned.
    """
    settings = Settings.from_env(**dict(test_config or {}))
    # `serve` and app.py check this before any worker starts; an app made another way (gunicorn
    # pointed at this factory) is checked here, so a setting it cannot honour (API keys that
    # hold no key: no key would be asked for) stops it instead of being passed over.
    problem = settings.out_of_range()
    if problem:
        raise ValueError(problem)
    # An OpenAPI app is a Flask app that also writes the OpenAPI 3.1 document of its routes.
    # Its own docs pages are off: /docs is ours (local assets, no inline script). Requests are
    # read and checked by our views, never by the library's pydantic request validation, so
    # its generic validation-error response is folded into the 500 that every operation
    # documents instead of adding a 422 that cannot happen.
    app = OpenAPI(
        __name__,
        info=Info(
            title="Emotion server",
            version=__version__,
            description="Facial emotion classification: faces found, 7 FER2013 emotions each. "
            "Every error is JSON: "
            '`{"error": "<stable code>", "message": "<for a person>"}`.',
        ),
        doc_ui=False,
        validation_error_status=500,
        static_folder=None,  # the page's assets are the `web` blueprint's
    )
    # Werkzeug would answer //healthz with an HTML 308 to /healthz, built from the client's
    # Host header and out of reach of the JSON error handlers: such a path is a JSON 404.
    app.url_map.merge_slashes = False
    if pipeline is None:
        pipeline = Pipeline.from_settings(settings)

    from emotion_server.api import (
        auth,
        cors,
        docs,
        errors,
        health,
        inference,
        limits,
        metrics,
        security,
        summary,
        video,
        web,
    )

    readiness = health.Readiness()
    attach(app, AppState(settings=settings, pipeline=pipeline, readiness=readiness))
    errors.register(app)
    limits.register(app, settings)
    # Request hooks run in this order: count and time, answer CORS preflights, check the key.
    metrics.register(app)
    cors.register(app)
    auth.register(app)
    security.register(app)
    app.register_api(inference.bp)
    app.register_api(video.bp)
    app.register_api(summary.bp)
    app.register_api(health.bp)
    app.register_api(metrics.bp)
    app.register_api(web.bp)
    app.register_blueprint(docs.bp)
    # One inference through the whole pipeline before the first request (/readyz reports it).
    health.warm_up(pipeline, readiness)
    return app
