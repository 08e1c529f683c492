"""GET /summary: the loaded model's metadata, from its model card or derived from the model."""

from __future__ import annotations

from dataclasses import asdict

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from emotion_server.api.schemas import COMMON_RESPONSES, SummaryResponse
from emotion_server.api.state import app_state
from emotion_server.config import mode_of

bp = APIBlueprint(
    "summary",
    __name__,
    abp_tags=[Tag(name="model", description="The served model and the server")],
    abp_responses=COMMON_RESPONSES,
)


@bp.get(
    "/summary",
    operation_id="summary",
    summary="The served model's metadata",
    description="Name, version, PrivateTest accuracy, classes, shapes and the like from the "
    "model card written by `emotion-server evaluate`; null where the model has no card.",
    responses={200: SummaryResponse},
)
def summary():
    pipeline = app_state().pipeline
    info = asdict(pipeline.model.info())
    card = info.pop("card")
    info.update(
        {
            "test_time_augmentation": pipeline.tta,
            "model_views": (card.get("training") or {}).get("views"),
            "detector": pipeline.detector.name,
            "mode": mode_of(pipeline.model.path),
            "metrics": card.get("metrics"),
        }
    )
    return jsonify(SummaryResponse(**info).model_dump())
