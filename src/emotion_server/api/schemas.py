"""The HTTP contract as pydantic models: the responses are built through them and the OpenAPI
document at /openapi.json is generated from them, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from flask_openapi3 import FileStorage
from pydantic import BaseModel, ConfigDict, Field

from emotion_server.classes import EMOTIONS
from emotion_server.errors import EmotionServerError
from emotion_server.pipeline import Classification, InferenceResult

Emotion = Literal[EMOTIONS]  # FER2013's order: angry, disgust, fear, happy, sad, surprise, neutral
Probability = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    # Responses carry exactly the documented fields (additionalProperties: false in the schema).
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Strict):
    """Every failure: a stable snake_case code for programs and a message for people."""

    error: str = Field(
        description="Stable code, e.g. empty_body, invalid_image, corrupt_image, "
        "unsupported_image_format, unsupported_media_type, missing_file, payload_too_large, "
        "image_too_large, too_many_images, unauthorized, origin_not_allowed, not_found, "
        "method_not_allowed, not_ready, internal_error",
        examples=["invalid_image"],
    )
    message: str = Field(description="What went wrong, for a person", min_length=1)


class Probabilities(_Strict):
    """The 7 FER2013 emotions' probabilities; they sum to 1."""

    angry: Probability
    disgust: Probability
    fear: Probability
    happy: Probability
    sad: Probability
    surprise: Probability
    neutral: Probability


class BoxModel(_Strict):
    """A face's box in the upright image's pixels."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class FaceModel(_Strict):
    box: BoxModel
    score: float = Field(ge=0, le=1, description="The face detector's confidence")
    prediction: Emotion
    confidence: Probability
    probabilities: Probabilities


class ImageSize(_Strict):
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class InferenceResponse(_Strict):
    """The original `prediction` (the largest face's, or the whole image's) and every face."""

    prediction: Emotion
    confidence: Probability
    probabilities: Probabilities
    face_detected: bool
    whole_image_reason: Literal["image_is_face_crop", "no_face_found"] | None = Field(
        description="Why the whole image was classified; null when faces were found"
    )
    faces: list[FaceModel] = Field(description="Largest first; empty when no face was found")
    image: ImageSize

    @classmethod
    def from_result(cls, result: InferenceResult) -> InferenceResponse:
        return cls(
            **_classification(result.classification),
            face_detected=result.face_detected,
            whole_image_reason=result.whole_image_reason,
            faces=[
                FaceModel(
                    box=BoxModel(**asdict(face.box)),
                    score=round(face.score, 4),
                    **_classification(face.classification),
                )
                for face in result.faces
            ],
            image=ImageSize(width=result.image_width, height=result.image_height),
        )


def _classification(c: Classification) -> dict[str, Any]:
    return {
        "prediction": c.prediction,
        "confidence": round(c.confidence, 6),
        "probabilities": Probabilities(**{k: round(v, 6) for k, v in c.probabilities.items()}),
    }


class BatchResult(InferenceResponse):
    """One image of a batch that was classified: /inference's answer plus its file name."""

    filename: str | None


class BatchError(ErrorBody):
    """One image of a batch that could not be classified: its own error."""

    filename: str | None


class BatchResponse(_Strict):
    results: list[BatchResult | BatchError] = Field(description="One entry per file, in order")

    @classmethod
    def from_results(
        cls, names: list[str | None], results: list[InferenceResult | EmotionServerError]
    ) -> BatchResponse:
        entries: list[BatchResult | BatchError] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, EmotionServerError):
                entries.append(BatchError(filename=name, error=result.code, message=result.message))
            else:
                body = InferenceResponse.from_result(result).model_dump()
                entries.append(BatchResult(filename=name, **body))
        return cls(results=entries)


class SummaryResponse(BaseModel):
    """The loaded model's metadata: from its model card, or derived from the model (else null).

    Open to more fields: the model card may grow, and /summary passes its fields on.
    """

    model_config = ConfigDict(extra="allow")

    name: str
    version: str | None
    accuracy: float | None = Field(description="PrivateTest accuracy from the model card")
    classes: list[Emotion]
    dataset: str | None
    framework: str | None
    input_shape: list[int]
    output_shape: list[int]
    precision: str | None
    created_at: str | None
    test_time_augmentation: Literal["none", "flip"]
    detector: str
    metrics: dict[str, Any] | None = Field(description="The model card's metrics, if any")


class HealthResponse(_Strict):
    status: Literal["ok"]


class ReadyResponse(_Strict):
    """This worker can serve: model and detector loaded, one warm-up inference done."""

    status: Literal["ready"]
    model: str = Field(description="The served model file's name")
    detector: str = Field(description="The face detector: centerface or none")
    warm_up_ms: float = Field(ge=0, description="Time of the warm-up inference at start-up")


# Request bodies. The views read them themselves (so that failures get this API's error codes),
# and these models only describe them in the OpenAPI document.
class ImageUpload(BaseModel):
    image: FileStorage = Field(description="The image file (JPEG, PNG, WebP, BMP, GIF or TIFF)")


class BatchUpload(BaseModel):
    images: list[FileStorage] = Field(description="The image files, in order; repeat the field")


def _binary_image() -> dict[str, Any]:
    return {"schema": {"type": "string", "format": "binary"}}


def _form(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"schema": {k: schema[k] for k in ("type", "properties", "required")}}


INFERENCE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image as the raw body (application/octet-stream, image/*, or no "
        "Content-Type at all), or as the multipart field `image`.",
        "content": {
            "application/octet-stream": _binary_image(),
            "image/*": _binary_image(),
            "multipart/form-data": _form(ImageUpload),
        },
    }
}

BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "Several images in the repeated multipart field `images`.",
        "content": {"multipart/form-data": _form(BatchUpload)},
    }
}


def error_response(description: str) -> dict[str, Any]:
    """A documented error status: the ErrorBody schema and which codes it carries."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


# Every operation can fail unexpectedly; the blueprints add this to each of theirs.
COMMON_RESPONSES: dict[int, Any] = {500: ErrorBody}

METRICS_TEXT = {
    "description": "Prometheus metrics in the text exposition format (all workers together)",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}

HTML_PAGE = {
    "description": "The demo page",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
