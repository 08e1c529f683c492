"""The HTTP contract as pydantic models: the responses are built through them and the OpenAPI
document at /openapi.json is generated from them, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from flask_openapi3 import FileStorage
from pydantic import BaseModel, ConfigDict, Field

from emotion_server.contract import EMOTIONS
from emotion_server.errors import EmotionServerError
from emotion_server.faces import FaceBox
from emotion_server.results import Classification, InferenceResult, face_points
from emotion_server.timeline import FrameResult, Sampling, TrackedFace, TrackSummary
from emotion_server.video_reader import VideoInfo

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
        "image_too_large, too_many_images, time_budget_exceeded, invalid_parameter, "
        "invalid_video, corrupt_video, no_video_stream, empty_video, unsupported_video_format, "
        "unsupported_video_codec, "
        "video_too_long, read_timeout, malformed_body, bad_request, unauthorized, "
        "invalid_json, origin_not_allowed, not_found, method_not_allowed, not_ready, "
        "insufficient_storage, uri_too_long, headers_too_large, expectation_failed, "
        "unsupported_transfer_coding, internal_error",
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

    @classmethod
    def of(cls, box: FaceBox) -> BoxModel:
        return cls(x=box.x, y=box.y, width=box.width, height=box.height)


class Point(_Strict):
    """A point in the upright image's pixels (a landmark of a face at the image's edge may lie
    just outside it)."""

    x: float
    y: float


LANDMARKS_DESCRIPTION = (
    "The face's points as the detector gives them, by name, in the upright image's pixels: "
    "CenterFace (the default) gives eye_left, eye_right, nose, mouth_left and mouth_right; "
    "BlazeFace eye_left, eye_right, nose, mouth, ear_left and ear_right. Left and right as "
    "seen in the picture of an upright face (eye_left is the person's right eye). "
    "Null where the detector gives none (yunet)"
)
ROLL_DESCRIPTION = (
    "The face's tilt in the picture, in degrees from the line between its eyes (-180 to 180): "
    "positive where the face leans clockwise as seen. An estimate: within about 5 degrees "
    "for half the faces of bench/alignment.py, 17 or more off for one in ten. Faces tilted "
    "more than EMOTION_ALIGN_ROLL are turned upright before the model reads them. Null "
    "where the detector gives no eyes"
)


class FaceModel(_Strict):
    box: BoxModel
    score: float = Field(ge=0, le=1, description="The face detector's confidence")
    landmarks: dict[str, Point] | None = Field(description=LANDMARKS_DESCRIPTION)
    roll: float | None = Field(ge=-180, le=180, description=ROLL_DESCRIPTION)
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
                    box=BoxModel.of(face.box),
                    score=round(face.score, 4),
                    **face_points(face.box),
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


class VideoInfoModel(_Strict):
    """The video stream as its container describes it."""

    container: Literal["mp4", "matroska", "avi", "gif"] = Field(
        description="mp4: the QuickTime family (MP4, MOV); matroska: Matroska and WebM"
    )
    codec: str = Field(description="FFmpeg's decoder name, e.g. h264, vp9, gif")
    width: int = Field(ge=1, description="As shown, upright (after `rotation`)")
    height: int = Field(ge=1, description="As shown, upright (after `rotation`)")
    frame_rate: float | None = Field(description="Average frames per second, where known")
    duration: float | None = Field(description="Seconds, where the container says")
    rotation: Literal[0, 90, 180, -90] = Field(
        description="Degrees counter-clockwise the stored pictures were turned to analyse them "
        "upright, as the file's display matrix says (a phone's portrait video: 90 or -90); "
        "boxes are in the upright frame"
    )

    @classmethod
    def from_info(cls, info: VideoInfo) -> VideoInfoModel:
        return cls(**asdict(info))


class SamplingModel(_Strict):
    fps: float = Field(gt=0, description="Frames analysed per second of video")
    smoothing: float = Field(
        ge=0,
        lt=1,
        description="Weight of the past in each track's exponential moving average of "
        "probabilities (p_t = s * p_(t-1) + (1 - s) * frame_t); 0: each frame on its own",
    )
    frames_analysed: int = Field(ge=0)

    @classmethod
    def build(cls, sampling: Sampling, frames_analysed: int) -> SamplingModel:
        return cls(**asdict(sampling), frames_analysed=frames_analysed)


class TrackFrame(_Strict):
    """A face of one track in one sampled frame."""

    frame: int = Field(ge=0, description="The frame's 0-based place in the decoded stream")
    time: float = Field(ge=0, description="Seconds since the first frame")
    box: BoxModel
    score: float = Field(ge=0, le=1, description="The face detector's confidence")
    landmarks: dict[str, Point] | None = Field(description=LANDMARKS_DESCRIPTION)
    roll: float | None = Field(ge=-180, le=180, description=ROLL_DESCRIPTION)
    prediction: Emotion
    confidence: Probability
    probabilities: Probabilities

    @classmethod
    def build(cls, frame: FrameResult, face: TrackedFace) -> TrackFrame:
        return cls(frame=frame.index, time=frame.time, **_face(face))


class TrackSummaryModel(_Strict):
    track_id: int = Field(ge=1)
    frames: int = Field(ge=1, description="Sampled frames where the face was seen")
    first_seen: float = Field(ge=0, description="Seconds")
    last_seen: float = Field(ge=0, description="Seconds")
    dominant_emotion: Emotion = Field(description="The emotion predicted most often")
    time_share: Probabilities = Field(
        description="Share of the track's sampled frames (so of its time) with each prediction"
    )
    mean_probabilities: Probabilities

    @classmethod
    def from_summary(cls, summary: TrackSummary) -> TrackSummaryModel:
        return cls(
            track_id=summary.track_id,
            frames=summary.frames,
            first_seen=summary.first_seen,
            last_seen=summary.last_seen,
            dominant_emotion=summary.dominant,
            time_share=_probabilities(summary.time_share),
            mean_probabilities=_probabilities(summary.mean_probabilities),
        )


class VideoTrack(_Strict):
    """One person: a stable id, every sampled frame where the face was seen, a summary."""

    track_id: int = Field(ge=1)
    frames: list[TrackFrame]
    summary: TrackSummaryModel


class VideoResponse(_Strict):
    """/inference/video as one JSON document (the default)."""

    video: VideoInfoModel
    sampling: SamplingModel
    tracks: list[VideoTrack] = Field(description="By track id, in order of first appearance")


class FrameFace(_Strict):
    track_id: int = Field(ge=1)
    box: BoxModel
    score: float = Field(ge=0, le=1, description="The face detector's confidence")
    landmarks: dict[str, Point] | None = Field(description=LANDMARKS_DESCRIPTION)
    roll: float | None = Field(ge=-180, le=180, description=ROLL_DESCRIPTION)
    prediction: Emotion
    confidence: Probability
    probabilities: Probabilities


class VideoFrameLine(_Strict):
    """NDJSON: one line per sampled frame, as soon as it is analysed."""

    type: Literal["frame"]
    frame: int = Field(ge=0)
    time: float = Field(ge=0)
    faces: list[FrameFace] = Field(description="Largest first; empty where no face was found")

    @classmethod
    def build(cls, frame: FrameResult) -> VideoFrameLine:
        faces = [FrameFace(track_id=f.track_id, **_face(f)) for f in frame.faces]
        return cls(type="frame", frame=frame.index, time=frame.time, faces=faces)


class VideoSummaryLine(_Strict):
    """NDJSON: the last line of a stream that went through."""

    type: Literal["summary"]
    video: VideoInfoModel
    sampling: SamplingModel
    tracks: list[TrackSummaryModel]


class VideoErrorLine(ErrorBody):
    """NDJSON: the last line of a stream that failed after its first frame (the status was
    already 200); failures before it get the usual error status and JSON body."""

    type: Literal["error"]


# The NDJSON lines; their schemas join the document's components in api/docs.py.
STREAM_LINES = (VideoFrameLine, VideoSummaryLine, VideoErrorLine)


def _face(face: TrackedFace) -> dict[str, Any]:
    return {
        "box": BoxModel.of(face.box),
        "score": round(min(1.0, face.score), 4),
        **face_points(face.box),
        **_classification(face.classification),
    }


def _probabilities(values: dict[str, float]) -> Probabilities:
    return Probabilities(**{k: round(v, 6) for k, v in values.items()})


def video_components() -> dict[str, Any]:
    """JSON Schemas of /inference/video's answers (both media types, and the models they use)
    for the OpenAPI document: the route documents them by reference (VIDEO_OK)."""
    schemas: dict[str, Any] = {}
    for model in (VideoResponse, *STREAM_LINES):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


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
    test_time_augmentation: Literal["none", "flip"] = Field(
        description="The mirror image the server adds to each face (EMOTION_TTA)"
    )
    model_views: str | None = Field(
        description="The test-time views built into the model's graph at export (centre, flip "
        "or tencrop, from its card); null where the card does not say"
    )
    detector: str
    mode: Literal["default", "accurate"] | None = Field(
        description="Which bundled model serves (EMOTION_MODE); null for a model file named "
        "by EMOTION_MODEL_PATH"
    )
    metrics: dict[str, Any] | None = Field(description="The model card's metrics, if any")


class HealthResponse(_Strict):
    status: Literal["ok"]


class ReadyResponse(_Strict):
    """This worker can serve: model and detector loaded, one warm-up inference done."""

    status: Literal["ready"]
    model: str = Field(description="The served model file's name")
    detector: str = Field(
        description="The face detector (EMOTION_DETECTOR): centerface, blazeface, yunet or none"
    )
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
        "Content-Type at all), as the multipart field `image`, or in base64 in a JSON object.",
        "content": {
            "application/octet-stream": _binary_image(),
            "image/*": _binary_image(),
            "multipart/form-data": _form(ImageUpload),
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "contentEncoding": "base64",
                            "description": "The image file in base64 (standard or URL-safe, "
                            "padding optional), or a data:image/...;base64, URL",
                        }
                    },
                }
            },
        },
    }
}


class VideoUpload(BaseModel):
    video: FileStorage = Field(description="The video file (MP4, MOV, WebM, AVI, animated GIF)")


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


VIDEO_REQUEST = {
    "parameters": [
        _query(
            "fps",
            "Frames analysed per second of video (default EMOTION_VIDEO_FPS, at most "
            "EMOTION_VIDEO_MAX_FPS)",
            {"type": "number", "exclusiveMinimum": 0},
        ),
        _query(
            "smoothing",
            "Temporal smoothing of each track's probabilities, 0 (off, the default) to below 1",
            {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        ),
    ],
    "requestBody": {
        "required": True,
        "description": "The video as the raw body (application/octet-stream, video/*, "
        "image/gif, or no Content-Type), or as the multipart field `video`.",
        "content": {
            "application/octet-stream": _binary_image(),
            "video/*": _binary_image(),
            "image/gif": _binary_image(),
            "multipart/form-data": _form(VideoUpload),
        },
    },
}

VIDEO_OK = {
    "description": "The timeline of every face: one JSON document, or with "
    "`Accept: application/x-ndjson` one line per sampled frame as it is analysed, then a summary "
    "line (or an error line where the video fails part-way)",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/VideoResponse"}},
        "application/x-ndjson": {
            "schema": {
                "oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in STREAM_LINES]
            }
        },
    },
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

# What any upload can meet before the view reads it (workers.py, api/errors.py): in the text
# of each upload's 400, and its 408.
BODY_FAULTS = "malformed_body (broken chunked framing) or bad_request (a body cut short)"
READ_TIMEOUT = error_response(
    "read_timeout: the request did not arrive whole within EMOTION_READ_TIMEOUT_S (plus 1 s "
    "per EMOTION_READ_MIN_RATE bytes); the connection is closed"
)

METRICS_TEXT = {
    "description": "Prometheus metrics in the text exposition format (all workers together)",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}

HTML_PAGE = {
    "description": "The demo page",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
