"""Image bytes -> a validated, upright image: formats, EXIF orientation, size and bomb limits."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, UnidentifiedImageError

from emotion_server.errors import (
    CorruptImage,
    EmotionServerError,
    EmptyBody,
    ImageTooLarge,
    InvalidImage,
    UnsupportedImageFormat,
)

# MPO is the multi-picture JPEG many phone cameras write: its first frame is a plain JPEG.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})

# Our own pixel limit is checked from the header before decoding; Pillow's global guard is
# lifted so that it cannot raise a different error first.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    """An upright image; its greyscale (for the model) and RGB (for the face detector) arrays
    are made on first use, so a face crop that skips detection is never converted to RGB."""

    picture: Image.Image  # upright and loaded, in mode "L" or "RGB"
    format: str
    # The upright image's size in the file's pixels; larger than the arrays where a large
    # image was decoded at reduced size (a JPEG's draft mode) or reduced after decoding (other
    # formats). Boxes are reported in these pixels.
    full_width: int = 0
    full_height: int = 0

    @cached_property
    def gray(self) -> np.ndarray:
        """uint8 [H, W]."""
        picture = self.picture if self.picture.mode == "L" else self.picture.convert("L")
        return np.asarray(picture, dtype=np.uint8)

    @cached_property
    def rgb(self) -> np.ndarray:
        """uint8 [H, W, 3]."""
        picture = self.picture if self.picture.mode == "RGB" else self.picture.convert("RGB")
        return np.asarray(picture, dtype=np.uint8)

    @property
    def file_size(self) -> tuple[int, int]:
        """(width, height) in the file's upright pixels: `full_width` and `full_height` where
        given, else the picture's own."""
        return (self.full_width or self.width, self.full_height or self.height)

    @property
    def width(self) -> int:
        return self.picture.width

    @property
    def height(self) -> int:
        return self.picture.height


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited on white, 16-bit scaled to 8-bit."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(((values - low) * scale).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def decode_image(
    data: bytes, max_pixels: int = 40_000_000, draft_side: int | None = None
) -> DecodedImage:
    """Decode `data` (first frame or page), apply EXIF orientation, enforce the pixel limit.

    With `draft_side`, a JPEG whose longer side is larger is decoded at the smallest of 1/2,
    1/4 or 1/8 scale that keeps the longer side at least `draft_side` (several times faster);
    `max_pixels` then limits the pixels decoded (the reduced size), except for a progressive
    JPEG, whose full size counts (its decoder holds it all). Any other image is decoded whole
    and then reduced the same way, by averaging blocks of pixels (`block_reduced`): the arrays made
    from it later, and their copies, are then those of the smaller image.
    """
    if not data:
        raise EmptyBody("The request body is empty: send the image bytes.")
    blocks = _tiff_blocks(data)
    if blocks > MAX_TIFF_BLOCKS:
        raise ImageTooLarge(
            f"The TIFF lists {blocks} strips or tiles; at most {MAX_TIFF_BLOCKS} are decoded "
            "(each one on its own)."
        )
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImage(
            "The body is not an image we can read: send JPEG, PNG, WebP, BMP, GIF or TIFF."
        ) from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise InvalidImage(f"The image header could not be read ({exc}).") from None
    picture = None
    try:
        if image.format not in SUPPORTED_FORMATS:
            raise UnsupportedImageFormat(
                f"{image.format} images are not supported: send JPEG, PNG, WebP, BMP, GIF or TIFF."
            )
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidImage("The image has no pixels.")
        _check_decoding_work(image, data, max_pixels)
        drafted = bool(
            draft_side and image.format in ("JPEG", "MPO") and max(width, height) > draft_side
        )
        # A progressive JPEG holds all its coefficients at full size while it decodes, however
        # small the pixels it gives: its full size is what counts against the limit.
        reduced = drafted and not image.info.get("progressive")
        if width * height > max_pixels and not reduced:
            raise ImageTooLarge(
                f"The image is {width}x{height} = {width * height} pixels; "
                f"the limit is {max_pixels}."
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. corrupt EXIF: we still serve the pixels
                image.seek(0)
                if drafted:
                    # A JPEG's EXIF is parsed at open, so this loads no pixels; for other
                    # formats getexif() may load them and must come after load() (which
                    # reports a corrupt file instead of leaving a blank image).
                    orientation = _orientation(image)
                    full_size = _upright_size(image.size, orientation)
                    image.draft(image.mode, _draft_request((width, height), draft_side))
                    # The limit holds for the pixels decoded, known now and before any is:
                    # a 200-megapixel phone photo decoded at 1/8 scale is 3 megapixels.
                    kept = image.size[0] * image.size[1]
                    if kept > max_pixels:
                        raise ImageTooLarge(
                            f"The image is {width}x{height} = {width * height} pixels, "
                            f"{kept} at the reduced size it would be decoded at; the limit is "
                            f"{max_pixels}."
                        )
                image.load()
                if not drafted:
                    orientation = _orientation(image)
                    full_size = _upright_size(image.size, orientation)
                # Turned upright by the orientation alone: Pillow's exif_transpose also
                # rewrites the EXIF block, which fails on a field of an unexpected type (a
                # resolution stored as text), and the rewritten block is never used here.
                upright = image.transpose(_UPRIGHT[orientation]) if orientation != 1 else image
                # A large image of another format is reduced as a JPEG's draft is (before its
                # conversion, in the modes Pillow averages; after it, in the others).
                reduce = bool(draft_side) and not drafted
                if reduce and upright.mode in _REDUCIBLE_MODES:
                    upright, reduce = block_reduced(upright, draft_side), False
                # Greyscale and RGB stay as they are; every other mode becomes RGB here.
                picture = upright if upright.mode in ("L", "RGB") else _to_rgb(upright)
                if reduce:
                    picture = block_reduced(picture, draft_side)
        except (EmotionServerError, MemoryError):
            raise
        except Exception as exc:  # Pillow's decoders raise many types for damaged data
            raise CorruptImage(
                f"The {image.format} image is truncated or corrupt ({exc})."
            ) from None
    finally:
        # Closing an image frees its pixels: only one that is not served is closed (the file
        # is the request's bytes in memory, so the served one holds nothing else open).
        if picture is not image:
            image.close()
    return DecodedImage(
        picture=picture,
        format=image.format,
        full_width=full_size[0],
        full_height=full_size[1],
    )


# Modes whose pixels Image.reduce averages (with alpha, weighted by it).
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA"})


def _draft_request(size: tuple[int, int], side: int) -> tuple[int, int]:
    """The size `decode_image` asks a JPEG's draft decoding for: the longer side just over
    `side`, the shape kept."""
    scale = side / max(size)
    return (int(size[0] * scale + 1), int(size[1] * scale + 1))


def draft_factor(size: tuple[int, int], side: int) -> int:
    """The reduction a JPEG's draft decoding takes for a longer side of at least `side`: the
    largest of 8, 4, 2 or 1 that both sides allow (as Pillow's JpegImagePlugin.draft reckons
    it from the size asked for)."""
    asked = _draft_request(size, side)
    most = min(size[0] // asked[0], size[1] // asked[1])
    return next((factor for factor in (8, 4, 2) if most >= factor), 1)


def block_reduced(picture: Image.Image, side: int) -> Image.Image:
    """`picture` made smaller by the factor a JPEG's draft decoding would take (draft_factor),
    each pixel the mean of a block; the picture itself where there is none. A 40-megapixel PNG
    analysed at full size spent more time converting and copying its arrays than decoding it."""
    factor = draft_factor(picture.size, side)
    return picture.reduce(factor) if factor > 1 else picture


# EXIF orientation -> the turn that makes the picture upright (the EXIF standard's eight).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# The most scans a JPEG may have: each is a pass over all its pixels, so a small file of
# thousands of repeated scans would take a worker's CPU for minutes. Encoders write 1
# (baseline) or about 10 (progressive); an MPO's second picture and an EXIF thumbnail add theirs.
MAX_JPEG_SCANS = 100
# A TIFF tile is allocated whole however small the image: tiles of more pixels than this (or
# than the image, where it is larger) are refused.
MAX_TIFF_TILE_PIXELS = 1 << 20


# A TIFF's strips or tiles are decoded one at a time, each with its own seek, read and decoder
# call, and Pillow unpacks all their offsets into a tuple as it opens the file: a 10 MB file can
# list five million of them, all pointing at the same few bytes, for an image of 16 pixels,
# which held a worker for longer than its timeout. Files as written list one strip of about
# 8 kB each (a 40-megapixel RGB image: about 15,000) or tiles of 256x256 pixels (about 600).
MAX_TIFF_BLOCKS = 65_536
# StripOffsets, StripByteCounts, TileOffsets, TileByteCounts
_TIFF_BLOCK_TAGS = frozenset({273, 279, 324, 325})


def _tiff_blocks(data: bytes) -> int:
    """The most entries that any strip or tile tag of a TIFF's first page lists, read from the
    file's first directory before Pillow opens it; 0 for other formats and for a directory that
    cannot be read (Pillow then says what is wrong with it)."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8:
        return 0
    version = struct.unpack_from(order + "H", data, 2)[0]
    if version == 42:  # classic TIFF: 2-byte entry count, 12-byte entries
        count_format, entry_format, entry_size = "H", "HHI", 12
        first = struct.unpack_from(order + "I", data, 4)[0]
    elif version == 43 and len(data) >= 16:  # BigTIFF: 8-byte count, 20-byte entries
        count_format, entry_format, entry_size = "Q", "HHQ", 20
        first = struct.unpack_from(order + "Q", data, 8)[0]
    else:
        return 0
    most = 0
    try:
        entries = struct.unpack_from(order + count_format, data, first)[0]
        start = first + struct.calcsize(order + count_format)
        for index in range(min(entries, max(0, len(data) - start) // entry_size)):
            tag, _kind, count = struct.unpack_from(
                order + entry_format, data, start + index * entry_size
            )
            if tag in _TIFF_BLOCK_TAGS:
                most = max(most, count)
    except (struct.error, OverflowError):  # a directory past the file's end, or past 2**63
        pass
    return most


def _check_decoding_work(image: Image.Image, data: bytes, max_pixels: int) -> None:
    """Refuse, before decoding, a file whose decoding would cost far more than its pixels:
    too many JPEG scans, TIFF tiles far larger than the image."""
    if image.format in ("JPEG", "MPO"):
        scans = _jpeg_scans(data, MAX_JPEG_SCANS)
        if scans > MAX_JPEG_SCANS:
            raise ImageTooLarge(
                f"The JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are decoded (each is a "
                "pass over all its pixels)."
            )
    elif image.format == "TIFF":
        tags = getattr(image, "tag_v2", {})
        tile_width, tile_height = tags.get(322), tags.get(323)
        if isinstance(tile_width, int) and isinstance(tile_height, int):
            tile = tile_width * tile_height
            bound = max(image.width * image.height, MAX_TIFF_TILE_PIXELS)
            if tile > bound:
                raise ImageTooLarge(
                    f"The TIFF's tiles are {tile_width}x{tile_height} pixels, each decoded "
                    f"whole; at most {bound} pixels a tile are accepted for this image."
                )


def _jpeg_scans(data: bytes, enough: int) -> int:
    """The start-of-scan markers of the first picture in a JPEG file, counted by walking its
    segments (each skipped by its length, so an EXIF thumbnail's do not count) up to its end
    of image (so a motion photo's video after it does not count); stops counting past
    `enough`. A file too damaged to walk counts what was found: the decoder refuses it."""
    position, scans = 2, 0  # after the start-of-image marker
    while position + 4 <= len(data) and scans <= enough:
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill before a marker
            position += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:  # start of scan: its coded data runs to the next marker
            scans += 1
            position = _next_marker(data, position)
    return scans


def _next_marker(data: bytes, position: int) -> int:
    """Where the marker after a scan's coded data starts (len(data) where none does): in
    coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker, and a run of
    0xFF is fill before a marker."""
    position = data.find(b"\xff", position)
    while 0 <= position < len(data) - 1:
        following = data[position + 1]
        if following == 0xFF:
            position += 1
        elif following == 0x00 or 0xD0 <= following <= 0xD7:
            position = data.find(b"\xff", position + 2)
        else:
            return position
    return len(data)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, 1 (upright) where there is none or it is unreadable. A value
    stored as a fraction or a float (6/1, 6.0) counts as its whole number."""
    try:
        value = image.getexif().get(0x0112, 1)
        return next((key for key in _UPRIGHT if value == key), 1)
    except Exception:  # unreadable EXIF is ignored: the pixels are served as stored
        return 1


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The size after EXIF orientation: orientations 5 to 8 swap width and height."""
    width, height = size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
