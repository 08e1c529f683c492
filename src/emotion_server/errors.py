"""One exception type per failure a user can cause, each with a stable code and HTTP status.

The API maps these to `{"error": code, "message": text}` in one place (api/errors.py).
"""

from __future__ import annotations


class EmotionServerError(Exception):
    code = "internal_error"
    status = 500

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


class UnsupportedMediaType(EmotionServerError):
    code, status = "unsupported_media_type", 415


class MissingFile(EmotionServerError):
    code, status = "missing_file", 400


class PayloadTooLarge(EmotionServerError):
    code, status = "payload_too_large", 413


class ImageTooLarge(EmotionServerError):
    code, status = "image_too_large", 413


class TooManyImages(EmotionServerError):
    code, status = "too_many_images", 413


class UnreadableFile(EmotionServerError):
    """A file the `classify` command could not open (missing, a folder, no permission)."""

    code, status = "unreadable_file", 400


class ModelLoadError(Exception):
    """The model file is missing or unusable: raised at start-up, never per request."""
