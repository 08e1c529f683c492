"""Every failure leaves as JSON `{"error": code, "message": text}` with its 4xx/5xx status."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from emotion_server.errors import EmotionServerError, PayloadTooLarge

log = logging.getLogger(__name__)

# Werkzeug's HTTP errors get stable snake_case codes of their own.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "service_unavailable",
}


def error_response(code: str, message: str, status: int, headers: dict[str, str] | None = None):
    """The JSON error; its code is kept on `g` for the errors-by-code metric."""
    g.error_code = code
    response = jsonify(error=code, message=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register(app: Flask) -> None:
    @app.errorhandler(EmotionServerError)
    def _ours(exc: EmotionServerError):
        return error_response(exc.code, exc.message, exc.status, exc.headers)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):
        # Werkzeug stopped reading at the endpoint's body limit (api/limits.py): answered as
        # our one exception type for it.
        limit = request.max_content_length
        return _ours(PayloadTooLarge(f"The request body is over the limit of {limit} bytes."))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        return error_response(
            HTTP_CODES.get(status, f"http_{status}"), exc.description or exc.name, status
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response("internal_error", "The server failed on this request.", 500)
