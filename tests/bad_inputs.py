"""A corpus of bad, odd and borderline uploads, generated here (nothing is downloaded).

Each case is one request to /inference (or /inference/batch) and the answer it must get: the
stable 4xx error code, or 200 where the input is a valid image (then `check` may look at the
body). Shared by the bad-input tests and the fuzzers' seed corpus.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

RAW = {"Content-Type": "application/octet-stream"}
MB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    code: str | None = None  # the JSON error code; None for a 200
    data: bytes | None = None  # raw body
    headers: dict[str, str] = field(default_factory=lambda: dict(RAW))
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None  # multipart parts
    path: str = "/inference"
    check: Callable[[dict], bool] | None = None  # on the 200 body


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _pattern(height: int = 60, width: int = 80) -> np.ndarray:
    """An asymmetric RGB image: a bright block in the top-left corner only."""
    image = np.full((height, width, 3), 30, np.uint8)
    image[: height // 4, : width // 4] = (250, 200, 100)
    return image


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int, bit_depth: int = 8, color: int = 0) -> bytes:
    """A PNG that claims `width` x `height` in a few dozen bytes (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


def png_bomb_real(side: int = 6000) -> bytes:
    """A genuine PNG of side x side black pixels, compressed to a few kilobytes."""
    row = b"\x00" + b"\x00" * side  # filter byte + grey pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def png_corrupt_idat() -> bytes:
    """A valid PNG header, then image data that is not zlib."""
    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"this is not deflate data" * 20)
        + png_chunk(b"IEND", b"")
    )


def png_bad_crc() -> bytes:
    data = bytearray(_save(Image.fromarray(_pattern()), "PNG"))
    data[29:33] = b"\x00\x00\x00\x00"  # IHDR's CRC
    return bytes(data)


def jpeg_corrupt_scan() -> bytes:
    """A valid JPEG header (SOI, tables, SOF, SOS), then the scan data replaced by noise."""
    data = _save(Image.fromarray(_noise(120, 160)), "JPEG", quality=90)
    start = data.index(b"\xff\xda")  # start of scan
    length = struct.unpack(">H", data[start + 2 : start + 4])[0]
    body_start = start + 2 + length
    noise = np.random.default_rng(9).integers(0, 255, len(data) - body_start - 2, dtype=np.uint8)
    noise[noise == 0xFF] = 0xFE  # no markers inside
    return data[:body_start] + noise.tobytes() + b"\xff\xd9"


def jpeg_header_only() -> bytes:
    """A JPEG cut right after its start-of-frame: the size is known, the pixels are not."""
    data = _save(Image.fromarray(_noise(120, 160)), "JPEG")
    return data[: data.index(b"\xff\xda")]


def jpeg_huge_dimensions() -> bytes:
    """A small JPEG whose start-of-frame claims 65000 x 65000 pixels."""
    data = bytearray(_save(Image.fromarray(_pattern()), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def gif_huge_dimensions() -> bytes:
    data = bytearray(_save(Image.fromarray(_pattern()).convert("P"), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    descriptor = data.index(b"\x2c")  # image descriptor
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def bmp_huge_dimensions() -> bytes:
    data = bytearray(_save(Image.fromarray(_pattern()), "BMP"))
    data[18:26] = struct.pack("<ii", 50000, 50000)
    return bytes(data)


def tiff_data_offset(tags: int, big: bool = False) -> int:
    """Where the bytes after a one-directory TIFF's directory of `tags` entries begin (the
    directory right after the header, as `hand_tiff` writes it)."""
    head, count, entry, link = (16, 8, 20, 8) if big else (8, 2, 12, 4)
    return head + count + tags * entry + link


def hand_tiff(
    entries: list[tuple[int, int, int, int]], data: bytes, big: bool = False, order: str = "<"
) -> bytes:
    """A TIFF (BigTIFF with `big`; byte order `order`) with one directory of `entries`
    (tag, type 3=SHORT 4=LONG, count, value), followed by `data` at
    tiff_data_offset(len(entries), big): made by hand, as an attacker would, or where Pillow
    writes no such file. A value of count 1 is stored in its entry; a list's value is the offset
    of its items in `data`."""
    magic = (b"II" if order == "<" else b"MM") + struct.pack(order + "H", 43 if big else 42)
    head = magic + (struct.pack(order + "HHQ", 8, 0, 16) if big else struct.pack(order + "I", 8))
    entry_format, count_format = (order + "HHQQ", "Q") if big else (order + "HHII", "H")
    field_bits = 64 if big else 32  # a value stored in its entry fills its first bytes

    def stored(kind: int, count: int, value: int) -> int:
        bits = 16 if kind == 3 else 32
        return value << (field_bits - bits) if order == ">" and count == 1 else value

    ifd = struct.pack(order + count_format, len(entries))
    ifd += b"".join(
        struct.pack(entry_format, tag, kind, count, stored(kind, count, value))
        for tag, kind, count, value in entries
    )
    return head + ifd + bytes(field_bits // 8) + data  # no next directory


def tiff_huge_dimensions(side: int = 100_000) -> bytes:
    """A little-endian greyscale TIFF whose tags claim side x side pixels, with one byte of data."""
    entries = [  # (tag, type, count, value)
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, tiff_data_offset(8)),  # StripOffsets: right after the directory
        (278, 4, 1, side),  # RowsPerStrip
        (279, 4, 1, 1),  # StripByteCounts
    ]
    return hand_tiff(entries, b"\x00")


def png_zero_width() -> bytes:
    header = struct.pack(">IIBBBBB", 0, 10, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def cmyk_jpeg() -> bytes:
    return _save(Image.fromarray(_pattern()).convert("CMYK"), "JPEG")


def png_16bit() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 80).astype(np.uint16), (60, 1))
    return _save(Image.fromarray(ramp), "PNG")


def palette_png(transparent: bool = False) -> bytes:
    image = Image.fromarray(_pattern()).convert("P")
    params = {"transparency": 0} if transparent else {}
    return _save(image, "PNG", **params)


def rgba_png() -> bytes:
    rgba = np.dstack([_pattern(), np.full((60, 80), 128, np.uint8)])
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def la_png() -> bytes:
    la = np.dstack([np.full((60, 80), 90, np.uint8), np.full((60, 80), 200, np.uint8)])
    return _save(Image.fromarray(la, "LA"), "PNG")


def one_bit_png() -> bytes:
    return _save(Image.fromarray(_pattern()).convert("1"), "PNG")


def float_tiff() -> bytes:
    values = np.linspace(-5, 5, 60 * 80, dtype=np.float32).reshape(60, 80)
    return _save(Image.fromarray(values, "F"), "TIFF")


def animated_gif() -> bytes:
    frames = [Image.new("L", (120, 100), value) for value in (250, 10, 128)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def multipage_tiff() -> bytes:
    pages = [Image.fromarray(_pattern()), Image.new("RGB", (40, 30), "blue")]
    return _save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(_pattern(60, 140)), "JPEG", exif=exif, quality=90)


def corrupt_exif_jpeg() -> bytes:
    """A JPEG whose APP1 EXIF block is garbage."""
    data = _save(Image.fromarray(_pattern(60, 140)), "JPEG")
    body = b"Exif\x00\x00" + b"II*\x00\xff\xff\xff\x7f" + b"\xab" * 40
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    return data[:2] + app1 + data[2:]


def ico() -> bytes:
    return _save(Image.fromarray(_pattern(32, 32)), "ICO")


def eps() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n"


def svg() -> bytes:
    return b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'


def upright_size(width: int, height: int) -> Callable[[dict], bool]:
    return lambda body: body["image"] == {"width": width, "height": height}


def whole(reason: str) -> Callable[[dict], bool]:
    return lambda body: body["face_detected"] is False and body["whole_image_reason"] == reason


def _multipart(*parts: tuple[str, str, bytes, str]) -> list:
    return [(field_name, (filename, data, mime)) for field_name, filename, data, mime in parts]


def corpus(max_upload_bytes: int = 10 * MB) -> list[Case]:
    """Every case; `max_upload_bytes` is the server's EMOTION_MAX_UPLOAD_BYTES."""
    jpeg = _save(Image.fromarray(_noise(200, 200)), "JPEG")
    png = _save(Image.fromarray(_noise(200, 200)), "PNG")
    webp = _save(Image.fromarray(_noise(200, 200)), "WEBP")
    crop = _save(Image.fromarray(_pattern(48, 48)), "PNG")
    random_bytes = np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    cases = [
        Case("empty body", 400, "empty_body", b""),
        Case("random bytes", 400, "invalid_image", random_bytes),
        Case("text file", 400, "invalid_image", b"Dear server,\nthis is a letter.\n" * 20),
        Case("svg", 400, "invalid_image", svg()),
        Case("html", 400, "invalid_image", b"<!doctype html><title>x</title><img src=x>"),
        Case("truncated jpeg", 400, "corrupt_image", jpeg[: len(jpeg) // 2]),
        Case("jpeg header only", 400, "corrupt_image", jpeg_header_only()),
        Case("truncated png", 400, "corrupt_image", png[: len(png) // 2]),
        # Pillow reads a WebP file whole when opening it, so a cut one fails as a header would.
        Case("truncated webp", 400, "invalid_image", webp[: len(webp) // 2]),
        Case("png magic only", 400, "invalid_image", b"\x89PNG\r\n\x1a\n"),
        Case("jpeg magic only", 400, "invalid_image", b"\xff\xd8\xff"),
        Case("png corrupt image data", 400, "corrupt_image", png_corrupt_idat()),
        Case("png bad header checksum", 400, "invalid_image", png_bad_crc()),
        Case("png zero width", 400, "invalid_image", png_zero_width()),
        # A JPEG decoder shows a corrupt scan as noise: the header is valid, so it is an image.
        Case(
            "jpeg corrupt scan data", 200, None, jpeg_corrupt_scan(), check=upright_size(160, 120)
        ),
        Case("png bomb header 60000^2", 413, "image_too_large", png_header_only(60000, 60000)),
        Case("png bomb 16-bit rgba", 413, "image_too_large", png_header_only(40000, 40000, 16, 6)),
        Case(
            "png bomb real 6000^2", 200, None, png_bomb_real(6000), check=upright_size(6000, 6000)
        ),
        Case("jpeg bomb 65000^2", 413, "image_too_large", jpeg_huge_dimensions()),
        Case("gif bomb 65535^2", 413, "image_too_large", gif_huge_dimensions()),
        Case("bmp bomb 50000^2", 413, "image_too_large", bmp_huge_dimensions()),
        Case("tiff bomb", 413, "image_too_large", tiff_huge_dimensions()),
        Case(
            "body over the limit",
            413,
            "payload_too_large",
            b"\xff\xd8" + b"\x00" * (max_upload_bytes + 1),
        ),
        Case(
            "1x1 image",
            200,
            None,
            _save(Image.new("RGB", (1, 1)), "PNG"),
            check=whole("image_is_face_crop"),
        ),
        Case(
            "10000x10 image",
            200,
            None,
            _save(Image.new("L", (10000, 10), 90), "PNG"),
            check=upright_size(10000, 10),
        ),
        Case(
            "10x10000 image",
            200,
            None,
            _save(Image.new("L", (10, 10000), 90), "PNG"),
            check=upright_size(10, 10000),
        ),
        Case("cmyk jpeg", 200, None, cmyk_jpeg(), check=upright_size(80, 60)),
        Case("16-bit png", 200, None, png_16bit(), check=upright_size(80, 60)),
        Case("1-bit png", 200, None, one_bit_png(), check=upright_size(80, 60)),
        Case("float tiff", 200, None, float_tiff(), check=upright_size(80, 60)),
        Case("palette png", 200, None, palette_png(), check=upright_size(80, 60)),
        Case(
            "palette png with transparency",
            200,
            None,
            palette_png(True),
            check=upright_size(80, 60),
        ),
        Case("rgba png", 200, None, rgba_png(), check=upright_size(80, 60)),
        Case("grey+alpha png", 200, None, la_png(), check=upright_size(80, 60)),
        Case("animated gif", 200, None, animated_gif(), check=upright_size(120, 100)),
        Case("multi-page tiff", 200, None, multipage_tiff(), check=upright_size(80, 60)),
        Case("corrupt exif", 200, None, corrupt_exif_jpeg(), check=upright_size(140, 60)),
        Case("face crop 48x48", 200, None, crop, check=whole("image_is_face_crop")),
        Case("ico", 415, "unsupported_image_format", ico()),
        Case("eps", 415, "unsupported_image_format", eps()),
    ]
    for orientation in range(1, 9):  # 5-8 turn the image a quarter: width and height swap
        size = (140, 60) if orientation <= 4 else (60, 140)
        cases.append(
            Case(
                f"exif orientation {orientation}",
                200,
                None,
                exif_jpeg(orientation),
                check=upright_size(*size),
            )
        )
    cases.append(
        Case("exif orientation 9 (invalid)", 200, None, exif_jpeg(9), check=upright_size(140, 60))
    )
    cases += [
        Case(
            "json content type with image bytes",
            400,
            "invalid_json",
            crop,
            {"Content-Type": "application/json"},
        ),
        Case(
            "json base64 of text",
            400,
            "invalid_image",
            b'{"image": "aGVsbG8="}',
            {"Content-Type": "application/json"},
        ),
        Case(
            "json not base64",
            400,
            "invalid_image",
            b'{"image": "not*base64!"}',
            {"Content-Type": "application/json"},
        ),
        Case(
            "json without image",
            400,
            "missing_file",
            b'{"picture": "aGVsbG8="}',
            {"Content-Type": "application/json"},
        ),
        Case("json array", 400, "invalid_json", b"[1, 2]", {"Content-Type": "application/json"}),
        Case(
            "json image not a string",
            400,
            "missing_file",
            b'{"image": 5}',
            {"Content-Type": "application/json"},
        ),
        Case("text/plain", 415, "unsupported_media_type", crop, {"Content-Type": "text/plain"}),
        Case(
            "form-urlencoded",
            415,
            "unsupported_media_type",
            b"image=abc",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        Case("no content type", 200, None, crop, {}, check=whole("image_is_face_crop")),
        Case("image/png content type on a jpeg", 200, None, jpeg, {"Content-Type": "image/png"}),
        Case(
            "multipart without a boundary",
            400,
            "missing_file",
            crop,
            {"Content-Type": "multipart/form-data"},
        ),
        Case(
            "multipart without the image field",
            400,
            "missing_file",
            headers={},
            files=_multipart(("photo", "a.png", crop, "image/png")),
        ),
        Case(
            "multipart with two images",
            400,
            "missing_file",
            headers={},
            files=_multipart(
                ("image", "a.png", crop, "image/png"), ("image", "b.png", crop, "image/png")
            ),
        ),
        Case(
            "multipart with an empty file",
            400,
            "empty_body",
            headers={},
            files=_multipart(("image", "a.png", b"", "image/png")),
        ),
        Case(
            "multipart text file",
            400,
            "invalid_image",
            headers={},
            files=_multipart(("image", "notes.txt", b"hello", "text/plain")),
        ),
        Case(
            "multipart image with a wrong part type",
            200,
            None,
            headers={},
            files=_multipart(("image", "a.txt", crop, "text/plain")),
            check=whole("image_is_face_crop"),
        ),
        Case(
            "batch endpoint with a raw body",
            415,
            "unsupported_media_type",
            crop,
            path="/inference/batch",
        ),
        Case(
            "batch of bad files",
            200,
            None,
            headers={},
            files=_multipart(
                ("images", "empty.png", b"", "image/png"),
                ("images", "bomb.png", png_header_only(60000, 60000), "image/png"),
                ("images", "text.jpg", b"text", "image/jpeg"),
                ("images", "ok.png", crop, "image/png"),
            ),
            path="/inference/batch",
            check=lambda body: (
                [r.get("error") for r in body["results"]]
                == ["empty_body", "image_too_large", "invalid_image", None]
            ),
        ),
    ]
    return cases
