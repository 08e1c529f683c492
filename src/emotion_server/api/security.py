"""Security headers on every response: the page and its assets come from this server only."""

from __future__ import annotations

from flask import Flask, Response

# Scripts, styles, images, fetches and the camera stream: this origin only, nothing inline.
# The page plays a chosen video from a blob: URL of the user's own file (media only).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; media-src 'self' blob:; base-uri 'none'; object-src 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
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
        # One pass over the response's headers instead of a lookup per header: this runs on
        # every request, and Werkzeug's lookups are linear scans.
        present = {name.lower() for name, _ in response.headers.items()}
        for name, value in HEADERS.items():
            if name.lower() not in present:
                response.headers.add(name, value)
        return response
