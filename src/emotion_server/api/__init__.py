"""The HTTP layer: `create_app()` builds the Flask app (gunicorn calls it once per worker)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from emotion_server.config import Settings
from emotion_server.pipeline import Pipeline


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; settings come from the environment, overridden by `test_config`.

    The model and the face detector are loaded here, once per process, never per request.
    """
    settings = Settings.from_env(**dict(test_config or {}))
    app = Flask(__name__)
    app.config.from_mapping(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        # Multipart bodies are limited by MAX_CONTENT_LENGTH; form fields by these.
        MAX_FORM_MEMORY_SIZE=settings.max_upload_bytes,
        JSON_SORT_KEYS=False,
    )
    app.extensions["pipeline"] = Pipeline.from_settings(settings)

    from emotion_server.api import errors, health, inference, summary

    errors.register(app)
    app.register_blueprint(inference.bp)
    app.register_blueprint(summary.bp)
    app.register_blueprint(health.bp)
    return app
