"""GET /summary: the loaded model's metadata, from its model card or derived from the model."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, current_app, jsonify

bp = Blueprint("summary", __name__)


@bp.get("/summary")
def summary():
    pipeline = current_app.extensions["pipeline"]
    info = asdict(pipeline.model.info())
    card = info.pop("card")
    info.update(
        {
            "test_time_augmentation": pipeline.tta,
            "detector": pipeline.detector.name,
            "metrics": card.get("metrics"),
        }
    )
    return jsonify(info)
