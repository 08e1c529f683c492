"""POST /inference/video: a video (raw body or multipart field `video`) -> an emotion timeline
per tracked face, as one JSON document or streamed as NDJSON (`Accept: application/x-ndjson`).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from flask import Response, jsonify, request, stream_with_context
from flask_openapi3 import APIBlueprint, Tag

from emotion_server.api.limits import room_for_uploads
from emotion_server.api.metrics import observe_stream_error
from emotion_server.api.schemas import (
    BODY_FAULTS,
    COMMON_RESPONSES,
    READ_TIMEOUT,
    VIDEO_OK,
    VIDEO_REQUEST,
    SamplingModel,
    TrackFrame,
    TrackSummaryModel,
    VideoErrorLine,
    VideoFrameLine,
    VideoInfoModel,
    VideoResponse,
    VideoSummaryLine,
    VideoTrack,
    error_response,
)
from emotion_server.api.state import app_state
from emotion_server.config import Settings
from emotion_server.errors import (
    EmotionServerError,
    EmptyVideo,
    InvalidParameter,
    MissingFile,
    UnsupportedMediaType,
)
from emotion_server.timeline import FrameResult, VideoTimeline, check_sampling
from emotion_server.video_reader import VideoReader

log = logging.getLogger(__name__)

bp = APIBlueprint(
    "video",
    __name__,
    abp_tags=[Tag(name="video", description="Emotion timelines of the faces in videos")],
    abp_responses=COMMON_RESPONSES,
)

RAW_TYPES = ("application/octet-stream", "video/", "image/gif")
NDJSON = "application/x-ndjson"


# A raw body held in memory up to this size, in an unnamed temporary file past it: a worker
# serves many connections at once, and each may send EMOTION_VIDEO_MAX_BYTES.
SPOOL_BYTES = 8 << 20


def _spooled(stream: BinaryIO) -> BinaryIO:
    """A seekable copy of `stream` of the video's own, which the VideoReader closes."""
    copy = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - the VideoReader closes it
    try:
        with room_for_uploads("video"):
            shutil.copyfileobj(stream, copy, 1 << 20)
        copy.seek(0)
    except BaseException:
        copy.close()
        raise
    return copy


def read_video(settings: Settings) -> BinaryIO:
    """The uploaded video as a seekable file the VideoReader owns and closes: the raw body,
    copied as it arrives (in memory up to SPOOL_BYTES, then to an unnamed temporary file), or
    the multipart field `video` (which Werkzeug has spooled already, past 500 kB to an unnamed
    temporary file), taken from the request: Werkzeug closes its uploads when the view
    returns, before a streamed answer has read them."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        with room_for_uploads("video"):
            files = request.files.getlist("video")
        if not files:
            raise MissingFile(
                "The multipart body has no file in the field 'video' "
                "(for example: curl -F video=@clip.mp4)."
            )
        if len(files) > 1:
            raise MissingFile("Send one file in the field 'video'.")
        # The request's own close() now reaches an empty stand-in, not the upload.
        upload, files[0].stream = files[0].stream, io.BytesIO()
        return upload
    if not mimetype or mimetype.startswith(RAW_TYPES):
        return _spooled(request.stream)  # an empty one: VideoReader's EmptyBody
    raise UnsupportedMediaType(
        f"Content-Type {mimetype!r} is not accepted: send the video bytes as "
        "application/octet-stream (or video/*), or multipart/form-data with a field 'video'."
    )


def _number(name: str, default: float) -> float:
    value = request.args.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise InvalidParameter(f"{name} must be a number; it was {value!r}.") from None


def _wants_ndjson() -> bool:
    """NDJSON only where the client prefers it to JSON (`*/*` and no Accept get JSON)."""
    accepted = request.accept_mimetypes
    return accepted[NDJSON] > accepted["application/json"]


@bp.post(
    "/inference/video",
    operation_id="inference_video",
    summary="An emotion timeline per face in a video",
    description="Frames are sampled at `fps` per second of video and each goes through the "
    "same pipeline as /inference; faces are followed from frame to frame, each person keeping "
    "one `track_id`. Every track lists the frames where its face was seen and a summary (share "
    "of time per emotion, dominant emotion, mean probabilities). With `Accept: "
    "application/x-ndjson` the answer is streamed: one line per sampled frame as it is "
    "analysed, then a summary line. Videos are limited by EMOTION_VIDEO_MAX_BYTES and "
    "EMOTION_VIDEO_MAX_SECONDS, and by the worker's time for one request.",
    responses={
        200: VIDEO_OK,
        400: error_response(
            "empty_body, missing_file, invalid_parameter, invalid_video, corrupt_video, "
            f"no_video_stream, empty_video, {BODY_FAULTS}"
        ),
        408: READ_TIMEOUT,
        413: error_response(
            "payload_too_large (the body), image_too_large (a frame's pixels) or "
            "video_too_long (its duration, or the work it takes)"
        ),
        415: error_response(
            "unsupported_media_type, unsupported_video_format or unsupported_video_codec"
        ),
        507: error_response("insufficient_storage (no room left to hold the upload)"),
    },
    openapi_extensions=VIDEO_REQUEST,
)
def inference_video():
    state = app_state()
    settings, pipeline = state.settings, state.pipeline
    sampling = check_sampling(
        _number("fps", settings.video_fps),
        _number("smoothing", 0.0),
        settings.video_max_fps,
    )
    source = read_video(settings)
    try:
        reader = VideoReader(
            source,
            max_seconds=settings.video_max_seconds,
            max_pixels=settings.max_pixels,
            threads=settings.intra_op_threads,
        )
    except BaseException:
        source.close()
        raise
    try:
        timeline = VideoTimeline(pipeline, reader, sampling, time_budget_s=settings.work_budget_s)
        frames = timeline.frames()
        if not _wants_ndjson():
            body = _document(timeline, frames)
            reader.close()
            return jsonify(body)
        # The first frame is analysed before the answer starts, so a file that cannot be
        # decoded at all still gets its error status.
        first = next(frames, None)
        if first is None:
            raise EmptyVideo("The video stream has no frame that can be decoded.")
    except BaseException:
        reader.close()
        raise
    stream = stream_with_context(_lines(timeline, first, frames, reader))
    return Response(stream, mimetype=NDJSON, headers={"X-Accel-Buffering": "no"})


def _document(timeline: VideoTimeline, frames: Iterator[FrameResult]) -> dict:
    """The whole answer as one JSON document; each track's frames gathered in order."""
    per_track: dict[int, list[TrackFrame]] = {}
    for frame in frames:
        for face in frame.faces:
            per_track.setdefault(face.track_id, []).append(TrackFrame.build(frame, face))
    tracks = [
        VideoTrack(
            track_id=summary.track_id,
            frames=per_track[summary.track_id],
            summary=TrackSummaryModel.from_summary(summary),
        )
        for summary in timeline.tracks()
    ]
    return VideoResponse(
        video=VideoInfoModel.from_info(timeline.info),
        sampling=SamplingModel.build(timeline.sampling, timeline.frames_analysed),
        tracks=tracks,
    ).model_dump()


def _line(model) -> str:
    return json.dumps(model.model_dump(), separators=(",", ":")) + "\n"


def _lines(
    timeline: VideoTimeline, first: FrameResult, frames: Iterator[FrameResult], reader
) -> Iterator[str]:
    """NDJSON: the frames as they come, then the summary; a failure part-way ends the stream
    with an error line (the status line has gone already)."""
    try:
        yield _line(VideoFrameLine.build(first))
        for frame in frames:
            yield _line(VideoFrameLine.build(frame))
        yield _line(
            VideoSummaryLine(
                type="summary",
                video=VideoInfoModel.from_info(timeline.info),
                sampling=SamplingModel.build(timeline.sampling, timeline.frames_analysed),
                tracks=[TrackSummaryModel.from_summary(s) for s in timeline.tracks()],
            )
        )
    except EmotionServerError as error:
        observe_stream_error(error.code)
        yield _line(VideoErrorLine(type="error", error=error.code, message=error.message))
    except Exception:
        log.exception("unhandled error while streaming a video")
        observe_stream_error("internal_error")
        yield _line(
            VideoErrorLine(
                type="error", error="internal_error", message="The server failed on this video."
            )
        )
    finally:
        reader.close()
