"""GET /openapi.json (OpenAPI 3.1, generated from the routes and their pydantic models) and
GET /docs (Swagger UI from the locally installed `flask-openapi3-swagger` package, no CDN).
"""

from __future__ import annotations

import json
from pathlib import Path

import flask_openapi3_swagger
from flask import Blueprint, current_app, jsonify, send_from_directory

from emotion_server.api.auth import document_security
from emotion_server.api.schemas import video_components
from emotion_server.api.security import CONTENT_SECURITY_POLICY
from emotion_server.api.web import WEB_DIR

# Swagger UI's files as that package ships them (css/, js/, images/).
SWAGGER_UI_DIR = Path(flask_openapi3_swagger.__file__).resolve().parent / "templates" / "swagger"

bp = Blueprint(
    "docs",
    __name__,
    static_folder=str(SWAGGER_UI_DIR),
    static_url_path="/docs/assets",
)


def openapi_document() -> dict:
    """The library's document of the routes, less two things it always writes: a null
    `securitySchemes` (invalid OpenAPI: it must be an object) and the schema of its request
    validation errors, which our views never produce; plus the video answers' schemas (two media
    types, which the library cannot write from a model) and the API keys' security schemes and
    401 responses where EMOTION_API_KEYS is set."""
    document = current_app.api_doc  # generated once per app, then cached by the library
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(video_components())
    # pop, not del: with threaded workers two first requests may clean it at once.
    if components.get("securitySchemes", {}) is None:
        components.pop("securitySchemes", None)
    schemas = components.get("schemas", {})
    if "ValidationErrorModel" in schemas:
        unused = "#/components/schemas/ValidationErrorModel" not in json.dumps(document["paths"])
        if unused:
            schemas.pop("ValidationErrorModel", None)
    return document_security(current_app, document)


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(openapi_document())


@bp.get("/docs")
def docs():
    response = send_from_directory(WEB_DIR, "docs.html", mimetype="text/html", max_age=0)
    # Swagger UI's stylesheet draws its icons as data: SVG images.
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.replace(
        "default-src 'self';", "default-src 'self'; img-src 'self' data:;"
    )
    return response
