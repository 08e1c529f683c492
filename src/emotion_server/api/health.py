"""GET /healthz: the process answers (the model and detector loaded before it could)."""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from emotion_server.api.schemas import COMMON_RESPONSES, HealthResponse

bp = APIBlueprint(
    "health",
    __name__,
    abp_tags=[Tag(name="model", description="The served model and the server")],
    abp_responses=COMMON_RESPONSES,
)


@bp.get(
    "/healthz",
    operation_id="healthz",
    summary="Liveness: the worker is up with its model loaded",
    responses={200: HealthResponse},
)
def healthz():
    return jsonify(status="ok")
