"""One exception type per failure a user can cause, each with a stable code and HTTP status.

The API maps these to `{"error": code, "message": text}` in one place (api/errors.py).
"""

from __future__ import annotations

from typing import ClassVar


class EmotionServerError(Exception):
    code = "internal_error"
    status = 500
    headers: ClassVar[dict[str, str]] = {}  # extra response headers, e.g. WWW-Authenticate

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class EmptyBody(EmotionServerError):
    code, status = "empty_body", 400


class InvalidImage(EmotionServerError):
    code, status = "invalid_image", 400


class CorruptImage(EmotionServerError):
    code, status = "corrupt_image", 400


class UnsupportedImageFormat(EmotionServerError):
    code, status = "unsupported_image_format", 415


class ReadTimeout(EmotionServerError):
    """The request did not arrive whole within EMOTION_READ_TIMEOUT_S (workers.py)."""

    code, status = "read_timeout", 408


class MalformedBody(EmotionServerError):
    """The body's framing is broken (a chunk size that is not hex, a chunk without its CRLF):
    answered, then the connection is closed, since where the next request starts is lost."""

    code, status = "malformed_body", 400


class UnsupportedMediaType(EmotionServerError):
    code, status = "unsupported_media_type", 415


class MissingFile(EmotionServerError):
    code, status = "missing_file", 400


class InvalidJson(EmotionServerError):
    """A JSON body that does not parse, or is not an object."""

    code, status = "invalid_json", 400


class PayloadTooLarge(EmotionServerError):
    code, status = "payload_too_large", 413


class ImageTooLarge(EmotionServerError):
    code, status = "image_too_large", 413


class TooManyImages(EmotionServerError):
    code, status = "too_many_images", 413


class Unauthorized(EmotionServerError):
    """No API key, or a wrong one, where EMOTION_API_KEYS is set."""

    code, status = "unauthorized", 401
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="emotion-server"'}


class OriginNotAllowed(EmotionServerError):
    """A CORS preflight from an origin that is not in EMOTION_CORS_ORIGINS."""

    code, status = "origin_not_allowed", 403


class InvalidParameter(EmotionServerError):
    """A query parameter out of its documented range (e.g. /inference/video's `fps`)."""

    code, status = "invalid_parameter", 400


class InvalidVideo(EmotionServerError):
    """Bytes that are not a video container we can read."""

    code, status = "invalid_video", 400


class CorruptVideo(EmotionServerError):
    """A known video container whose data is truncated or corrupt."""

    code, status = "corrupt_video", 400


class NoVideoStream(EmotionServerError):
    """A container with no video stream (for example audio only)."""

    code, status = "no_video_stream", 400


class EmptyVideo(EmotionServerError):
    """A video stream without a single decodable frame."""

    code, status = "empty_video", 400


class UnsupportedVideoFormat(EmotionServerError):
    code, status = "unsupported_video_format", 415


class UnsupportedVideoCodec(EmotionServerError):
    code, status = "unsupported_video_codec", 415


class VideoTooLong(EmotionServerError):
    """Over EMOTION_VIDEO_MAX_SECONDS, or more work than a worker may spend on one request."""

    code, status = "video_too_long", 413


class OutOfTime(EmotionServerError):
    """A file of a batch not reached within the time a request's analysis may use."""

    code, status = "time_budget_exceeded", 413


class InsufficientStorage(EmotionServerError):
    """No room left to hold an upload (its temporary file's folder is full): the server's
    state, not the request's; another time, or a smaller file, may fit."""

    code, status = "insufficient_storage", 507


class UnreadableFile(EmotionServerError):
    """A file the `classify` command could not open (missing, a folder, no permission)."""

    code, status = "unreadable_file", 400


class ModelLoadError(Exception):
    """The model file is missing or unusable: raised at start-up, never per request."""
