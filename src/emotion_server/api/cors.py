"""CORS allow-list: only the origins in EMOTION_CORS_ORIGINS (comma-separated; `*` for any) get
`Access-Control-Allow-Origin`; their preflight OPTIONS requests are answered here (204), others'
are refused with 403 `origin_not_allowed`. With the setting empty no origin is allowed, and the
browser's same-origin policy applies as usual (the demo page is same-origin).
"""

from __future__ import annotations

from flask import Flask, Response, request

from emotion_server.api.state import state_of
from emotion_server.errors import OriginNotAllowed

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Content-Type, X-API-Key, Authorization"
MAX_AGE_SECONDS = "600"
EXPOSE_HEADERS = "WWW-Authenticate, Allow"  # beyond the CORS-safelisted response headers


def register(app: Flask) -> None:
    origins = frozenset(state_of(app).settings.cors_origin_list)
    any_origin = "*" in origins

    def allowed(origin: str | None) -> bool:
        return bool(origin) and (any_origin or origin.lower() in origins)

    @app.before_request
    def _preflight():
        is_preflight = (
            request.method == "OPTIONS"
            and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers
        )
        if not is_preflight or request.url_rule is None:
            return None
        origin = request.headers["Origin"]
        if not allowed(origin):
            raise OriginNotAllowed(f"The origin {origin!r} may not call this API.")
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = MAX_AGE_SECONDS
        return response

    @app.after_request
    def _allow_origin(response: Response) -> Response:
        if origins:
            response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = "*" if any_origin else origin
            # Beyond the few headers a cross-origin script may read anyway: why a 401 was
            # refused, and what a 405 allows.
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response
