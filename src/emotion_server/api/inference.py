"""POST /inference: one image (raw bytes, multipart field `image`, or base64 in a JSON body)
-> emotions per face.
POST /inference/batch: several images (repeated multipart field `images`) -> one result each.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from flask import jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from werkzeug.datastructures import FileStorage

from emotion_server.api.limits import room_for_uploads
from emotion_server.api.metrics import observe_result
from emotion_server.api.schemas import (
    BATCH_BODY,
    BODY_FAULTS,
    COMMON_RESPONSES,
    INFERENCE_BODY,
    READ_TIMEOUT,
    BatchResponse,
    InferenceResponse,
    error_response,
)
from emotion_server.api.state import app_state
from emotion_server.config import Settings
from emotion_server.errors import (
    EmotionServerError,
    InvalidImage,
    InvalidJson,
    MissingFile,
    PayloadTooLarge,
    TooManyImages,
    UnsupportedMediaType,
)
from emotion_server.results import InferenceResult

bp = APIBlueprint(
    "inference",
    __name__,
    abp_tags=[Tag(name="inference", description="Emotions of the faces in images")],
    abp_responses=COMMON_RESPONSES,
)

RAW_TYPES = ("application/octet-stream", "image/")


JSON_FORM = '{"image": "<the image file in base64>"}'
URL_SAFE = bytes.maketrans(b"-_", b"+/")  # base64url's two letters -> standard base64's
WHITESPACE = b" \t\n\r\f\v"  # line breaks and indents in base64 text, dropped
OBJECT_START = re.compile(rb"\s*\{")


def _image_from_json() -> bytes:
    """`{"image": "<base64>"}`, as cloud vision APIs take an image: standard or URL-safe
    base64, padded or not, wrapped in lines or not, or a `data:image/...;base64,` URL."""
    raw = request.get_data(cache=False)
    body = None
    try:
        # Anything but an object is refused unparsed: parsed, a body of tiny arrays
        # ([[],[],...]) took 20 times its size in memory. UTF-8 (a byte-order mark allowed) is
        # looked at as it is; UTF-16 and UTF-32 (what Windows PowerShell writes) decoded first.
        encoding = json.detect_encoding(raw)
        if encoding.startswith("utf-8"):
            text: bytes | str = raw
            opens = OBJECT_START.match(raw, 3 if encoding == "utf-8-sig" else 0) is not None
        else:
            text = raw.decode(encoding)
            opens = text.lstrip(" \t\r\n")[:1] == "{"
        if opens:
            body = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        body = None
    if not isinstance(body, dict):
        raise InvalidJson(f"The body is not a JSON object: send {JSON_FORM}.")
    value = body.get("image")
    if not isinstance(value, str) or not value.strip():
        raise MissingFile(f"The JSON body has no string field 'image': send {JSON_FORM}.")
    value = value.strip()
    if value[:5].lower() == "data:":
        header, _, value = value.partition(",")
        if not header.lower().endswith(";base64"):
            raise InvalidImage(
                "A data: URL in 'image' must be base64 (data:image/jpeg;base64,...)."
            )
    if not value.isascii():  # whitespace beyond ASCII's (a pasted no-break space) dropped
        value = "".join(value.split())
    try:
        # In bytes, in one copy (splitting the text at its whitespace made one object per
        # piece: 20 times the text's size for "ab ab ab ...").
        text = value.encode("ascii").translate(URL_SAFE, WHITESPACE)
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise InvalidImage(
            "The field 'image' is not base64: send the image file's bytes in base64."
        ) from None
    if not data:
        raise InvalidImage("The field 'image' holds no bytes: send the image file in base64.")
    limit = app_state().settings.max_upload_bytes
    if len(data) > limit:
        raise PayloadTooLarge(f"The image in 'image' is over the limit of {limit} bytes.")
    return data


def read_image_bytes() -> bytes:
    """The uploaded image: the raw body, the multipart field `image`, or base64 in JSON."""
    mimetype = request.mimetype
    if mimetype == "application/json":
        return _image_from_json()
    if mimetype == "multipart/form-data":
        with room_for_uploads():
            files = request.files.getlist("image")
        if not files and "image" in request.form:
            raise MissingFile(
                "The field 'image' arrived as text, not as a file: send the file itself "
                "(curl -F image=@face.jpg, not image=<face.jpg)."
            )
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
        "application/octet-stream (or image/*), multipart/form-data with a field 'image', or "
        f"application/json as {JSON_FORM}."
    )


def result_json(result: InferenceResult) -> dict:
    """The response body of /inference, shaped by its documented model."""
    return InferenceResponse.from_result(result).model_dump()


@bp.post(
    "/inference",
    operation_id="inference",
    summary="Classify the emotions of the faces in one image",
    description="Faces are detected and each is classified; the top-level `prediction` is the "
    "largest face's. An image with both sides at most EMOTION_CROP_SIZE_LIMIT (96 by default) "
    "pixels, or one where no face is found, is "
    "classified whole, as the original service did, and `whole_image_reason` says so.",
    responses={
        200: InferenceResponse,
        400: error_response(
            f"empty_body, invalid_image, corrupt_image, missing_file, invalid_json, {BODY_FAULTS}"
        ),
        408: READ_TIMEOUT,
        413: error_response("payload_too_large (the body) or image_too_large (its pixels)"),
        415: error_response("unsupported_media_type or unsupported_image_format"),
        507: error_response("insufficient_storage (no room left to hold a multipart upload)"),
    },
    openapi_extensions=INFERENCE_BODY,
)
def inference():
    data = read_image_bytes()
    try:
        result = app_state().pipeline.analyze(data)
    except EmotionServerError as error:
        observe_result(error)
        raise
    observe_result(result)
    return jsonify(result_json(result))


def _read_batch_files(settings: Settings) -> list[FileStorage]:
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(
            f"Content-Type {request.mimetype or 'none'!r} is not accepted: send "
            "multipart/form-data with the images in the repeated field 'images' "
            "(for example: curl -F images=@a.jpg -F images=@b.jpg)."
        )
    with room_for_uploads():
        files = request.files.getlist("images")
    if not files:
        raise MissingFile(
            "The multipart body has no file in the field 'images' "
            "(for example: curl -F images=@a.jpg -F images=@b.jpg)."
        )
    if len(files) > settings.max_batch_images:
        raise TooManyImages(
            f"{len(files)} images were sent; the limit is {settings.max_batch_images} per request."
        )
    return files


def _read_file(file: FileStorage, limit: int) -> bytes | PayloadTooLarge:
    data = file.read(limit + 1)
    if len(data) > limit:
        return PayloadTooLarge(f"The file is over the limit of {limit} bytes.")
    return data


@bp.post(
    "/inference/batch",
    operation_id="inference_batch",
    summary="Classify several images in one request",
    description="Each file in the repeated multipart field `images` gets, in order, the same "
    "result as /inference plus its `filename`, or its own error object. The faces of all the "
    "images are classified in one batched model call.",
    responses={
        200: BatchResponse,
        400: error_response(f"missing_file (no file in the field 'images'), {BODY_FAULTS}"),
        408: READ_TIMEOUT,
        413: error_response("too_many_images or payload_too_large (the whole request)"),
        415: error_response("unsupported_media_type (the body is not multipart/form-data)"),
        507: error_response("insufficient_storage (no room left to hold the upload)"),
    },
    openapi_extensions=BATCH_BODY,
)
def inference_batch():
    state = app_state()
    settings, pipeline = state.settings, state.pipeline
    files = _read_batch_files(settings)
    contents = [_read_file(file, settings.max_upload_bytes) for file in files]
    # A file over the limit keeps its error in place; one not reached in the request's time,
    # time_budget_exceeded (a worker busy past gunicorn's timeout is killed).
    results = pipeline.analyze_batch(contents, time_budget_s=settings.work_budget_s)
    for result in results:
        observe_result(result)
    names = [file.filename or None for file in files]
    return jsonify(BatchResponse.from_results(names, results).model_dump())
