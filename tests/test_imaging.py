import io
import struct
import zlib

import numpy as np
import pytest
from bad_inputs import hand_tiff, tiff_data_offset
from conftest import encode
from PIL import Image, ImageOps

from emotion_server import imaging
from emotion_server.errors import (
    CorruptImage,
    EmptyBody,
    ImageTooLarge,
    InvalidImage,
    UnsupportedImageFormat,
)
from emotion_server.imaging import decode_image


def _pattern(height=40, width=60) -> np.ndarray:
    """An asymmetric RGB image: a bright block in the top-left corner only."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:10, :20] = (250, 200, 100)
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_supported_formats_decode_to_same_size_and_content(fmt):
    decoded = decode_image(encode(_pattern(), fmt))
    assert (decoded.height, decoded.width) == (40, 60)
    assert decoded.rgb.shape == (40, 60, 3) and decoded.gray.shape == (40, 60)
    assert decoded.format == fmt
    # The bright corner stays bright and the rest dark, whatever the codec's losses.
    assert decoded.gray[:8, :18].mean() > 150 and decoded.gray[15:, 25:].mean() < 30


@pytest.mark.parametrize(
    ("orientation", "shape", "bright_corner"),
    [
        (1, (40, 60), (0, 0)),
        (3, (40, 60), (-1, -1)),  # rotated 180
        (6, (60, 40), (0, -1)),  # rotated 90 clockwise to be upright
        (8, (60, 40), (-1, 0)),  # rotated 90 anticlockwise
    ],
)
def test_exif_orientation_is_applied(orientation, shape, bright_corner):
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(_pattern(), "JPEG", exif=exif, quality=95))
    assert decoded.gray.shape == shape
    row = 2 if bright_corner[0] == 0 else -3
    col = 2 if bright_corner[1] == 0 else -3
    assert decoded.gray[row, col] > 150


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_the_picture_as_pillow_does(orientation):
    """All eight orientations (mirrored ones included) against Pillow's own exif_transpose,
    which the decoder does not use: each pixel where it belongs."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(_pattern(), "PNG", exif=exif)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(decode_image(data).rgb, np.asarray(reference))


def _exif_with_text_resolution(orientation: int) -> bytes:
    """An EXIF block with an orientation and XResolution stored as text (type ASCII), as
    some cameras and editors write it; Pillow cannot write one, so it is made by hand."""
    entries = [
        struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0),
        struct.pack(">HHI", 0x011A, 2, 4) + b"abc\0",
    ]
    ifd = struct.pack(">H", len(entries)) + b"".join(entries) + struct.pack(">I", 0)
    return b"Exif\0\0MM\0*" + struct.pack(">I", 8) + ifd


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_beside_an_oddly_typed_exif_field(orientation):
    """Pillow's exif_transpose rewrites the EXIF block and failed on the text resolution (a
    500, and a traceback that stopped classify); the picture is turned as a clean one is."""
    clean = Image.Exif()
    clean[0x0112] = orientation
    odd = _exif_with_text_resolution(orientation)
    expected = decode_image(encode(_pattern(), "PNG", exif=clean))
    decoded = decode_image(encode(_pattern(), "PNG", exif=odd))
    assert np.array_equal(decoded.rgb, expected.rgb)
    assert (decoded.full_width, decoded.full_height) == (expected.width, expected.height)
    assert decode_image(encode(_pattern(), "JPEG", exif=odd)).gray.shape == expected.gray.shape


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_stored_as_a_fraction_is_applied(orientation):
    """Some writers store the orientation as a RATIONAL (6/1): it counts as its number."""
    entry = struct.pack(">HHII", 0x0112, 5, 1, 26)  # RATIONAL, its value at offset 26
    ifd = struct.pack(">H", 1) + entry + struct.pack(">I", 0) + struct.pack(">II", orientation, 1)
    fraction = b"Exif\0\0MM\0*" + struct.pack(">I", 8) + ifd
    clean = Image.Exif()
    clean[0x0112] = orientation
    expected = decode_image(encode(_pattern(), "PNG", exif=clean))
    decoded = decode_image(encode(_pattern(), "PNG", exif=fraction))
    assert decoded.gray.shape != _pattern().shape[:2] or orientation == 3
    assert np.array_equal(decoded.rgb, expected.rgb)


def _jpeg_scans(data: bytes) -> list[bytes]:
    """A JPEG cut before each start-of-scan marker: the head, then one piece per scan."""
    return data.split(b"\xff\xda")


def test_a_jpeg_of_many_scans_is_refused_before_decoding():
    """Each scan is a pass over all the pixels: a small file repeating one scan thousands of
    times would hold a worker for minutes. A usual progressive JPEG decodes."""
    progressive = encode(np.tile(_pattern(), (4, 4, 1)), "JPEG", progressive=True)
    head, *scans = _jpeg_scans(progressive)
    assert 1 < len(scans) <= 20
    assert decode_image(progressive).width == 240
    last = scans[-1].removesuffix(b"\xff\xd9")
    repeated = b"\xff\xda".join([head, *scans[:-1], *[last] * 500]) + b"\xff\xd9"
    with pytest.raises(ImageTooLarge, match="scans"):
        decode_image(repeated)


def test_scans_are_counted_in_the_picture_alone():
    """What is not the picture's coded data holds no scan of it: a segment's contents (an
    EXIF thumbnail, a comment), a motion photo's video after the end of image, an MPO's
    second picture."""
    picture = np.tile(_pattern(), (4, 4, 1))
    commented = encode(picture, "JPEG", comment=b"\xff\xda" * 300)
    rng = np.random.default_rng(0)
    motion = encode(picture, "JPEG") + rng.integers(0, 256, 8_000_000, np.uint8).tobytes()
    assert motion.count(b"\xff\xda") > 100  # a count of the bytes would refuse it
    frames = [Image.fromarray(picture), Image.fromarray(picture[::-1])]
    buffer = io.BytesIO()
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    for data in (commented, motion, buffer.getvalue()):
        assert decode_image(data).width == 240


def test_a_progressive_jpeg_counts_at_full_size():
    """Decoding at reduced size does not shrink a progressive JPEG's memory (its coefficients
    are held at full size): the limit counts its full size, a baseline JPEG's reduced one."""
    big = np.tile(_pattern(), (50, 34, 1))[:1500, :2000]  # 3 megapixels
    assert decode_image(encode(big, "JPEG"), max_pixels=1_000_000, draft_side=800).width == 1000
    with pytest.raises(ImageTooLarge, match="2000x1500"):
        decode_image(encode(big, "JPEG", progressive=True), max_pixels=1_000_000, draft_side=800)


def _tiled_tiff(side: int, tile: int) -> bytes:
    """A side x side greyscale TIFF in one tile of tile x tile pixels (tile >= side), deflated
    zeros; made by hand, as Pillow writes no tiled TIFF."""
    pixels = zlib.compress(bytes(side * side))
    entries = [  # (tag, type, count, value)
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 1),  # PhotometricInterpretation: BlackIsZero
        (277, 3, 1, 1),  # SamplesPerPixel
        (322, 4, 1, tile),  # TileWidth
        (323, 4, 1, tile),  # TileLength
        (324, 4, 1, tiff_data_offset(10)),  # TileOffsets: the one tile, after the directory
        (325, 4, 1, len(pixels)),  # TileByteCounts
    ]
    return hand_tiff(entries, pixels)


def test_a_tiff_of_tiles_far_larger_than_its_image_is_refused():
    """libtiff allocates a whole tile however small the image: a 200-byte file of 64x64
    pixels in 32768x32768 tiles asked for a gigabyte. Tiles as large as a small image pass."""
    with pytest.raises(ImageTooLarge, match="tiles"):
        decode_image(_tiled_tiff(64, 32768))
    assert decode_image(_tiled_tiff(64, 64)).gray.shape == (64, 64)


def _striped_tiff(rows: int, big: bool = False, order: str = "<") -> bytes:
    """An 8 x `rows` greyscale TIFF (BigTIFF with `big`) in one strip per row, every strip at
    the same 8 bytes: a file that lists `rows` (at least 3) strips for 8 bytes of pixels, made
    by hand as an attacker would."""
    offsets = tiff_data_offset(9, big)  # the two lists, then the pixels
    pixels = offsets + 8 * rows
    entries = [  # (tag, type, count, value)
        (256, 4, 1, 8),  # ImageWidth
        (257, 4, 1, rows),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # PhotometricInterpretation: BlackIsZero
        (273, 4, rows, offsets),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, 1),  # RowsPerStrip
        (279, 4, rows, offsets + 4 * rows),  # StripByteCounts
    ]
    lists = struct.pack(f"{order}{rows}I", *[pixels] * rows)
    lists += struct.pack(f"{order}{rows}I", *[8] * rows)
    return hand_tiff(entries, lists + bytes(range(0, 256, 32)), big, order)


@pytest.mark.parametrize(("big", "order"), [(False, "<"), (False, ">"), (True, "<")])
def test_a_tiff_listing_more_strips_than_are_decoded_is_refused_before_opening(
    big, order, monkeypatch
):
    """A 10 MB file could list millions of strips, each decoded on its own, all of the same
    few bytes: refused from the file's directory, before Pillow unpacks the list."""
    made = decode_image(_striped_tiff(3, big, order))  # the file as made is a valid TIFF
    assert made.gray.shape == (3, 8) and made.gray[2].tolist() == list(range(0, 256, 32))
    with pytest.raises(ImageTooLarge, match=f"{imaging.MAX_TIFF_BLOCKS + 1} strips or tiles"):
        decode_image(_striped_tiff(imaging.MAX_TIFF_BLOCKS + 1, big, order))
    monkeypatch.setattr(imaging, "MAX_TIFF_BLOCKS", 40)  # the bound itself, cheaply
    assert decode_image(_striped_tiff(40, big, order)).gray.shape == (40, 8)
    with pytest.raises(ImageTooLarge, match="41 strips or tiles"):
        decode_image(_striped_tiff(41, big, order))


def test_the_strip_count_is_read_in_every_layout_and_never_fails():
    # Big-endian BigTIFF, which Pillow 13 does not open, is read all the same.
    assert imaging._tiff_blocks(_striped_tiff(41, True, ">")) == 41
    made = _striped_tiff(41)
    # A directory cut short: the entries that are there (StripOffsets is the sixth).
    assert imaging._tiff_blocks(made[: 10 + 6 * 12]) == 41
    assert imaging._tiff_blocks(made[: 10 + 6 * 12 - 1]) == 0
    for data in (
        b"",
        b"II",
        b"II*\x00",
        b"MM\x00*\xff\xff\xff\xff",
        b"II+\x00\x08\x00\x00\x00" + b"\xff" * 8,  # BigTIFF: a directory past 2**63 (fuzzing)
        encode(np.zeros((8, 8), np.uint8)),
    ):
        assert imaging._tiff_blocks(data) == 0


def test_gif_first_frame_is_used():
    frames = [Image.new("L", (50, 50), value) for value in (250, 10)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buffer.getvalue()).gray.mean() > 200


def test_alpha_is_composited_on_white():
    rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent black
    assert decode_image(encode(rgba, "PNG")).gray.min() == 255


def test_sixteen_bit_png_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    decoded = decode_image(encode(ramp, "PNG"))
    assert decoded.gray[0, 0] == 0 and decoded.gray[0, -1] == 255
    assert 100 < decoded.gray[0, 32] < 160  # mid-grey in the middle, not white


def test_palette_and_cmyk_images():
    palette = Image.fromarray(_pattern()).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert decode_image(buffer.getvalue()).gray[:8, :18].mean() > 150
    buffer = io.BytesIO()
    Image.fromarray(_pattern()).convert("CMYK").save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue()).gray[:8, :18].mean() > 120


def test_empty_body():
    with pytest.raises(EmptyBody):
        decode_image(b"")


@pytest.mark.parametrize("data", [b"hello, I am text", bytes(range(256)) * 4, b"{}"])
def test_not_an_image(data):
    with pytest.raises(InvalidImage):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(fmt):
    rng = np.random.default_rng(0)
    data = encode(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8), fmt)
    with pytest.raises(CorruptImage):
        decode_image(data[: len(data) // 2])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions in a few dozen bytes (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageTooLarge):
        decode_image(_png_header_only(100_000, 100_000))


def test_pixel_limit_is_configurable():
    data = encode(_pattern(), "PNG")  # 2,400 pixels
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=2000)
    assert decode_image(data, max_pixels=2400).width == 60


def test_pixel_limit_counts_the_pixels_a_reduced_jpeg_decodes():
    """A JPEG larger than the detector needs is decoded at reduced size (1/2 here): the limit
    holds for those pixels, so a phone's 50-200 megapixel photo is served; a PNG of the same
    size, decoded whole, is refused."""
    big = np.tile(_pattern(), (50, 34, 1))[:1500, :2000]  # 3 megapixels
    jpeg, png = encode(big, "JPEG"), encode(big, "PNG")
    decoded = decode_image(jpeg, max_pixels=1_000_000, draft_side=800)
    assert (decoded.width, decoded.height) == (1000, 750)
    assert (decoded.full_width, decoded.full_height) == (2000, 1500)
    with pytest.raises(ImageTooLarge, match="2000x1500"):
        decode_image(png, max_pixels=1_000_000, draft_side=800)
    with pytest.raises(ImageTooLarge):
        decode_image(jpeg, max_pixels=1_000_000)  # not reduced: counted whole
    with pytest.raises(ImageTooLarge, match="750000 at the reduced size"):
        decode_image(jpeg, max_pixels=500_000, draft_side=800)


def test_unsupported_format():
    buffer = io.BytesIO()
    Image.fromarray(_pattern()).save(buffer, format="ICO")
    with pytest.raises(UnsupportedImageFormat):
        decode_image(buffer.getvalue())


def test_grey_pixels_are_kept_exactly():
    """A 48x48 greyscale PNG decodes to exactly its pixels (the FER2013 crop path)."""
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    assert np.array_equal(decode_image(encode(gray, "PNG")).gray, gray)


def test_large_jpeg_is_decoded_at_reduced_size_in_draft_mode():
    rng = np.random.default_rng(4)
    big = np.repeat(np.repeat(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), 10, 0), 10, 1)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright it is 3000 wide, 4000 high
    data = encode(big, "JPEG", exif=exif)
    decoded = decode_image(data, draft_side=800)
    assert (decoded.full_width, decoded.full_height) == (3000, 4000)
    # 1/4 scale keeps the longer side >= 800 (1/8 would give 500).
    assert decoded.gray.shape == (1000, 750)
    full = decode_image(data)
    assert full.gray.shape == (4000, 3000) and (full.full_width, full.full_height) == (3000, 4000)


def test_small_images_are_never_reduced_and_other_formats_are_reduced_as_jpegs_are():
    image = _pattern(400, 600)
    for fmt in ("JPEG", "PNG"):
        decoded = decode_image(encode(image, fmt), draft_side=800)
        assert decoded.gray.shape == (400, 600)
    # 2000 wide: halved keeps 1000 >= 800, a quarter would not. The mean of each 2x2 block.
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (1000, 2000), dtype=np.uint8)
    png = decode_image(encode(pixels, "PNG"), draft_side=800)
    assert png.gray.shape == (500, 1000)
    assert (png.full_width, png.full_height) == (2000, 1000)
    means = pixels.reshape(500, 2, 1000, 2).mean(axis=(1, 3))
    assert np.abs(png.gray.astype(float) - means).max() <= 1
    # 4000x3000 WebP stored sideways: upright 3000 wide, 4000 high; a quarter keeps 1000.
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = np.zeros((3000, 4000, 3), np.uint8)
    sideways[:, :100] = 255  # the stored image's left edge: the upright one's top
    webp = decode_image(encode(sideways, "WEBP", exif=exif, lossless=True), draft_side=800)
    assert webp.rgb.shape == (1000, 750, 3)
    assert (webp.full_width, webp.full_height) == (3000, 4000)
    assert webp.gray[:20].min() == 255 and webp.gray[30:].max() == 0
    # Without draft_side nothing is reduced.
    assert decode_image(encode(pixels, "PNG")).gray.shape == (1000, 2000)


@pytest.mark.parametrize(
    "size", [(1600, 1200), (1602, 1201), (2000, 1000), (3300, 600), (900, 6500)]
)
def test_other_formats_are_reduced_by_the_factor_a_jpeg_draft_takes(size):
    """The same picture as PNG and as JPEG comes out of decoding at the same size."""
    pixels = np.zeros((size[1], size[0]), np.uint8)
    png = decode_image(encode(pixels, "PNG"), draft_side=800)
    jpeg = decode_image(encode(pixels, "JPEG"), draft_side=800)
    assert png.gray.shape == jpeg.gray.shape
    assert (png.full_width, png.full_height) == (jpeg.full_width, jpeg.full_height) == size


def test_a_large_transparent_png_is_reduced_then_laid_on_white():
    rgba = np.zeros((1800, 2400, 4), np.uint8)  # transparent black
    rgba[:, :1200] = (200, 0, 0, 255)  # the left half opaque red
    decoded = decode_image(encode(rgba, "PNG"), draft_side=800)
    assert decoded.rgb.shape == (900, 1200, 3)  # halved
    assert (decoded.rgb[:, :590] == (200, 0, 0)).all()
    assert (decoded.rgb[:, 610:] == 255).all()


def test_png_with_corrupt_image_data_is_refused_not_blank():
    """A PNG whose IDAT is not zlib data is corrupt (it once decoded to a black image)."""
    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not deflate" * 40)
    with pytest.raises(CorruptImage):
        decode_image(png + chunk(b"IEND", b""))


def test_greyscale_crop_is_never_converted_to_rgb():
    """The face-crop path reads the greyscale pixels as they are; RGB is made only on demand."""
    gray = np.random.default_rng(5).integers(0, 256, (48, 48), dtype=np.uint8)
    decoded = decode_image(encode(gray, "PNG"))
    assert np.array_equal(decoded.gray, gray)
    assert "rgb" not in vars(decoded)  # cached_property: absent until first asked for
    assert decoded.rgb.shape == (48, 48, 3) and (decoded.rgb[..., 1] == gray).all()


def test_colour_greyscale_is_pillows_luma_of_the_rgb_image():
    colour = _pattern()
    colour[20:, 30:] = (30, 160, 220)
    data = encode(colour, "PNG")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").convert("L"))
    assert np.array_equal(decode_image(data).gray, expected)
    palette = Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue())
    assert decoded.picture.mode == "RGB"  # other modes are made RGB once, at decoding
    assert np.array_equal(decoded.gray, np.asarray(palette.convert("RGB").convert("L")))
