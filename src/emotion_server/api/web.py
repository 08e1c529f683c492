"""GET /: the demo page (photo, drag and drop or webcam -> boxes, labels, probabilities).

Plain HTML, CSS and JavaScript from the package's `web` folder, served by this app, so the page
works offline and under a Content-Security-Policy of 'self'.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from flask import send_from_directory
from flask_openapi3 import APIBlueprint, Tag

from emotion_server.api.schemas import COMMON_RESPONSES, HTML_PAGE

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
# The page's scripts as JavaScript whatever the host's MIME table says: Python reads it from the
# system (a slim image may have none, and Windows' registry can say text/plain for .js, which
# the browser refuses to run under X-Content-Type-Options: nosniff).
mimetypes.add_type("text/javascript", ".js")

bp = APIBlueprint(
    "web",
    __name__,
    abp_tags=[Tag(name="web", description="The demo page")],
    abp_responses=COMMON_RESPONSES,
    static_folder=str(WEB_DIR),
    static_url_path="/static",
)


@bp.get("/", operation_id="page", summary="The demo page", responses={200: HTML_PAGE})
def page():
    return send_from_directory(WEB_DIR, "index.html", mimetype="text/html", max_age=0)
