"""The request-body limit: one per endpoint, in one table, enforced by one mechanism.

Werkzeug's `max_content_length` stops reading a body (raw, chunked or multipart) at the limit
and raises RequestEntityTooLarge, which api/errors.py answers as our PayloadTooLarge (413
`payload_too_large`). The limit is the single-image one (EMOTION_MAX_UPLOAD_BYTES) unless the
endpoint has its own: a batch of images, a video. Each file inside a batch also obeys the
single-image limit (api/inference.py, per file, in the batch's answer). `room_for_uploads`
answers a full temporary folder, met while an upload is spooled there, as 507.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

from flask import Flask, request

from emotion_server.config import Settings
from emotion_server.errors import InsufficientStorage

# The least a multipart text field may hold in memory, whatever the limits (1 MiB).
FORM_FLOOR = 1 << 20
# endpoint -> the Settings field that bounds its whole body
OWN_LIMITS = {
    "inference.inference_batch": "max_batch_bytes",
    "video.inference_video": "video_max_bytes",
}


def body_limit(settings: Settings, endpoint: str | None) -> int:
    return getattr(settings, OWN_LIMITS.get(endpoint or "", "max_upload_bytes"))


def register(app: Flask, settings: Settings) -> None:
    @app.before_request
    def _limit_the_body():
        limit = body_limit(settings, request.endpoint)
        if request.mimetype == "application/json":
            # An image in base64 takes 4 characters for 3 bytes, more in lines of 76 with
            # escaped line ends, and JSON wraps it: the image itself is held to the limit once
            # decoded (api/inference.py).
            limit = limit * 3 // 2 + 65536
        request.max_content_length = limit
        # A multipart text field is held in memory whole: it may be as large as one image (at
        # Flask's 500 kB a photo sent as text, curl -F "image=<face.jpg", got a 413, where the
        # endpoint can say to send it as a file: api/inference.py), but not as large as a
        # batch's or a video's body, whose files are spooled to disk. Werkzeug holds each
        # chunk it reads (64 kB) to the same bound, files' too, hence the floor.
        request.max_form_memory_size = max(min(limit, settings.max_upload_bytes), FORM_FLOOR)


@contextlib.contextmanager
def room_for_uploads(what: str = "file") -> Iterator[None]:
    """A full temporary folder (a small in-memory /tmp), met while an upload is spooled there
    (Werkzeug keeps a multipart file over 500 kB in one, a video endpoint its raw body over
    8 MB), answered as 507 `insufficient_storage`, not as a 500."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise InsufficientStorage(
            "The server has no room left to hold this upload now: try again later, or send a "
            f"smaller {what}."
        ) from None
