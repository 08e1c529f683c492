"""Every failure leaves as JSON `{"error": code, "message": text}` with its 4xx/5xx status."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from emotion_server.errors import EmotionServerError, MalformedBody, PayloadTooLarge

try:  # raised while the app reads a body that gunicorn's parser cannot frame
    from gunicorn.http.errors import ParseException
except ImportError:  # pragma: no cover - gunicorn is a serving dependency
    ParseException = None

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
        limit, length = request.max_content_length, request.content_length
        within = limit is not None and length is not None and length <= limit
        if request.mimetype == "multipart/form-data" and within:
            # Not the body's size: the multipart parser's count of parts (Flask's
            # MAX_FORM_PARTS), a bound on the work a body of tiny parts can cause, or a text
            # field over what is held in memory (api/limits.py).
            message = (
                f"The multipart body has more than {request.max_form_parts} parts "
                f"(files and fields), or a text field over {request.max_form_memory_size} "
                "bytes: send each upload as a file part (curl -F NAME=@FILE), not as text."
            )
        else:
            message = f"The request body is over the limit of {limit} bytes."
        return _ours(PayloadTooLarge(message))

    if ParseException is not None:

        @app.errorhandler(ParseException)
        def _malformed(exc: Exception):
            # The worker closes the connection after this answer (workers.py).
            return _ours(MalformedBody(f"The request body is malformed: {exc}."))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        # The exception's own headers stay (a 405's Allow, a 416's Content-Range); the body
        # is ours, so its Content-Type is not.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(
            HTTP_CODES.get(status, f"http_{status}"), exc.description or exc.name, status, headers
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response("internal_error", "The server failed on this request.", 500)
