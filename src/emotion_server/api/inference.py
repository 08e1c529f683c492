"""POST /inference: one image (raw bytes or multipart field `image`) -> emotions per face."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, current_app, jsonify, request

from emotion_server.errors import MissingFile, UnsupportedMediaType
from emotion_server.pipeline import Classification, InferenceResult

bp = Blueprint("inference", __name__)

RAW_TYPES = ("application/octet-stream", "image/")


def read_image_bytes() -> bytes:
    """The uploaded image: the raw body, or the multipart field `image`."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        files = request.files.getlist("image")
        if not files:
            raise MissingFile(
                "The multipart body has no file in the field 'image' "
                "(for example: curl -F image=@face.jpg)."
            )
        if len(files) > 1:
            raise MissingFile("Send one file in the field 'image' (several: use /inference/batch).")
        return files[0].read()
    # No Content-Type at all is taken as raw bytes, as many HTTP clients send them that way.
    if not mimetype or mimetype.startswith(RAW_TYPES):
        return request.get_data(cache=False)
    raise UnsupportedMediaType(
        f"Content-Type {mimetype!r} is not accepted: send the image bytes as "
        "application/octet-stream (or image/*), or multipart/form-data with a field 'image'."
    )


def _classification(c: Classification) -> dict:
    return {
        "prediction": c.prediction,
        "confidence": round(c.confidence, 6),
        "probabilities": {k: round(v, 6) for k, v in c.probabilities.items()},
    }


def result_json(result: InferenceResult) -> dict:
    """The response body: the original `prediction` first, then everything we add."""
    return {
        **_classification(result.classification),
        "face_detected": result.face_detected,
        "whole_image_reason": result.whole_image_reason,
        "faces": [
            {
                "box": asdict(face.box),
                "score": round(face.score, 4),
                **_classification(face.classification),
            }
            for face in result.faces
        ],
        "image": {"width": result.image_width, "height": result.image_height},
    }


@bp.post("/inference")
def inference():
    data = read_image_bytes()
    result = current_app.extensions["pipeline"].analyze(data)
    return jsonify(result_json(result))
