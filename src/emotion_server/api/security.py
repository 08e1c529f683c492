"""Security headers on every response: the page and its assets come from this server only."""

from __future__ import annotations

from flask import Flask, Response

# Scripts, styles, images, fetches and the camera stream: this origin only, nothing inline.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; object-src 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The demo page may use the camera; nothing here needs the microphone or the location.
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
}


def register(app: Flask) -> None:
    @app.after_request
    def _security_headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response
