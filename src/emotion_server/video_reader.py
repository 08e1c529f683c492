"""Video bytes or a file -> what the video is, and its frames sampled at a steady rate.

PyAV (FFmpeg inside its wheel) reads the container and decodes; frames come one at a time and
only the sampled ones are turned into pictures, so memory does not grow with the video's length.
Every failure a file can cause becomes one of the errors in `errors.py`.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import av.error
from PIL import Image

from emotion_server.errors import (
    CorruptVideo,
    EmptyBody,
    EmptyVideo,
    ImageTooLarge,
    InvalidVideo,
    NoVideoStream,
    UnsupportedVideoCodec,
    UnsupportedVideoFormat,
    VideoTooLong,
)

# Containers and codecs we accept. FFmpeg reads many more, but each demuxer and decoder is code
# that an upload can reach: only the ones people record and share videos with are let in.
CONTAINERS = {"mov": "mp4", "matroska": "matroska", "avi": "avi", "gif": "gif"}
CODECS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "gif", "mpeg1video", "mpeg2video"}
)
FORMATS_TEXT = "MP4, MOV, WebM, Matroska, AVI or animated GIF"
CODECS_TEXT = "H.264, H.265, VP8, VP9, AV1, MPEG-4 Part 2, MPEG-1/2, Motion JPEG or GIF"


@dataclass(frozen=True)
class VideoInfo:
    """The video stream as the container describes it."""

    container: str  # "mp4" (QuickTime's family: MP4, MOV), "matroska" (WebM too), "avi", "gif"
    codec: str  # FFmpeg's decoder name, e.g. "h264", "vp9"
    width: int  # as shown, upright: after `rotation`
    height: int
    frame_rate: float | None  # the stream's average frames per second, where known
    duration: float | None  # seconds, where the container says
    # Degrees counter-clockwise the stored pictures are turned to be shown upright (the display
    # matrix a phone writes for a portrait video): 0, 90, 180 or -90. Known once a frame decodes.
    rotation: int = 0


@dataclass(frozen=True)
class VideoFrame:
    """One sampled frame: its place in the decoded stream, its time and its RGB picture."""

    index: int  # 0-based among all decoded frames (the same as FFmpeg's decode order)
    time: float  # seconds since the first frame
    picture: Image.Image  # mode "RGB", upright (the display rotation applied)


# PIL's turns, counter-clockwise like the display matrix's angle.
TURNS = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    -90: Image.Transpose.ROTATE_270,
}


def _quarter_turns(degrees: float) -> int:
    """The display rotation to the nearest quarter turn, in (-180, 180]: 0, 90, 180 or -90.
    A display matrix of zeros has no rotation (FFmpeg's NaN, which PyAV hands over as the
    smallest int on x86): none is applied, as players apply none."""
    if not math.isfinite(degrees) or abs(degrees) > 1e6:
        return 0
    turn = int(round(degrees / 90)) % 4 * 90
    return turn - 360 if turn == 270 else turn


def _looks_like_video(head: bytes) -> bool:
    """The signature of a container we accept: a failure to open it means a damaged file."""
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
        or head[:4] == b"\x1a\x45\xdf\xa3"  # EBML: Matroska, WebM
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or head[:6] in (b"GIF87a", b"GIF89a")
    )


def _container_name(format_name: str) -> str | None:
    """FFmpeg's demuxer names ("mov,mp4,m4a,...") -> the one we accept, or None."""
    for name in format_name.split(","):
        if name in CONTAINERS:
            return CONTAINERS[name]
    return None


class VideoReader:
    """An open, validated video; `frames(fps)` yields its sampled frames. Use it as a context
    manager (or call `close`) so FFmpeg's buffers are freed when the request ends; a file object
    given to it is the reader's from then on, and closed with it."""

    def __init__(
        self,
        source: bytes | str | Path | BinaryIO,
        max_seconds: float,
        max_pixels: int,
        threads: int = 1,
    ):
        self.max_seconds = max_seconds
        self.max_pixels = max_pixels
        self.source = source if hasattr(source, "read") else None
        if isinstance(source, bytes):
            if not source:
                raise EmptyBody("The request body is empty: send the video bytes.")
            head = source[:16]
            source = io.BytesIO(source)
        elif isinstance(source, str | Path):
            with open(source, "rb") as file:
                head = file.read(16)
            source = str(source)
        else:
            head = source.read(16)
            source.seek(0)
            if not head:
                raise EmptyBody("The file is empty: send the video bytes.")
        try:
            # Tags that are not UTF-8 (a Latin-1 title) are read with replacement characters:
            # in strict mode they fail the whole file, and nothing here reads them.
            # The decoders' pixel bound holds from the start: opening decodes a few frames of
            # every stream to learn their parameters (6000x6000 ones took 87 MB before any
            # check; bounded, 15 MB, and the stream still says its size for the 413 below).
            # It reaches the streams a file lists up front; other demuxers (FLV, MPEG-PS) make
            # theirs while reading, unbounded, so only ours are opened at all.
            self.container = av.open(
                source,
                mode="r",
                metadata_errors="replace",
                options={"max_pixels": str(self._decoder_max_pixels)},
                container_options={"format_whitelist": ",".join(CONTAINERS)},
            )
        except av.error.FFmpegError as exc:
            if exc.errno == errno.EINVAL:  # a format FFmpeg knows, not on the list
                raise UnsupportedVideoFormat(
                    f"This file's format is not supported: send {FORMATS_TEXT}."
                ) from None
            if _looks_like_video(head):
                raise CorruptVideo(
                    f"The video is truncated or corrupt ({exc.strerror or exc})."
                ) from None
            raise InvalidVideo(
                f"The body is not a video we can read: send {FORMATS_TEXT} ({CODECS_TEXT})."
            ) from None
        try:
            self.info = self._validate(max_pixels, threads)
        except BaseException:
            self.container.close()
            raise

    @property
    def _decoder_max_pixels(self) -> int:
        """Twice the limit, within the C int FFmpeg reads the option as."""
        return min(2 * self.max_pixels, 2**31 - 1)

    def _validate(self, max_pixels: int, threads: int) -> VideoInfo:
        container = self.container
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["no"]
            raise NoVideoStream(
                f"The file has no video stream (it has {' and '.join(kinds)} streams): "
                "send a video with a picture track."
            )
        name = _container_name(container.format.name)
        if name is None:
            raise UnsupportedVideoFormat(
                f"The {container.format.long_name or container.format.name} format is not "
                f"supported: send {FORMATS_TEXT}."
            )
        self.stream = container.streams.video[0]
        codec = self.stream.codec_context.name if self.stream.codec_context else None
        if codec not in CODECS:
            raise UnsupportedVideoCodec(
                f"The video codec {codec or 'unknown'!r} is not supported: send {CODECS_TEXT}."
            )
        width, height = self.stream.codec_context.width, self.stream.codec_context.height
        if width < 1 or height < 1:
            raise CorruptVideo("The video stream does not say its picture size.")
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"The video's frames are {width}x{height} = {width * height} pixels; "
                f"the limit is {max_pixels}."
            )
        duration = None
        if container.duration is not None and container.duration > 0:
            duration = container.duration / av.time_base
        elif self.stream.duration and self.stream.time_base:
            duration = float(self.stream.duration * self.stream.time_base)
        if duration is not None and duration > self.max_seconds:
            raise VideoTooLong(
                f"The video lasts {duration:.1f} s; the limit is {self.max_seconds:g} s."
            )
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = max(1, threads)
        # The decoder's own bound: a stream that grows its pictures part-way far past the size
        # checked above fails to decode (CorruptVideo) instead of allocating them. Twice the
        # limit, as decoders count their padded, coded size; `frames` refuses what is between.
        self.stream.codec_context.options = {"max_pixels": str(self._decoder_max_pixels)}
        return VideoInfo(
            container=name,
            codec=codec,
            width=width,
            height=height,
            frame_rate=float(rate) if rate else None,
            duration=duration,
        )

    def frames(
        self, fps: float, check: Callable[[float], None] | None = None
    ) -> Iterator[VideoFrame]:
        """The first frame at or after each multiple of 1/fps seconds, in order, upright.

        `check(time)` runs on every packet read, before it is decoded, with the time of the
        last frame decoded (a time budget raises there: at a low fps most of the work is
        decoding frames that are passed over, and a stream may decode frames it never shows).
        Raises CorruptVideo where decoding fails, EmptyVideo where no frame decodes at all,
        VideoTooLong at the first frame past the limit (for containers that state no duration)
        and ImageTooLarge where the pictures grow past the limit part-way.
        """
        interval = 1.0 / fps
        next_time = 0.0
        start: float | None = None
        index = -1
        time = 0.0
        try:
            for packet in self.container.demux(self.stream):  # the last, empty, flushes
                if check is not None:
                    check(time)
                for frame in packet.decode():
                    index += 1
                    if frame.time is None:  # no timestamp: fall back on the frame rate
                        stamp = index / (self.info.frame_rate or fps)
                    else:
                        stamp = float(frame.time)
                    if start is None:
                        start = stamp
                        self._learn_rotation(frame)
                    time = stamp - start
                    if time > self.max_seconds:
                        raise VideoTooLong(
                            f"The video runs past {self.max_seconds:g} s, the limit."
                        )
                    if frame.width * frame.height > self.max_pixels:  # a size change mid-stream
                        raise ImageTooLarge(
                            f"Frame {index} is {frame.width}x{frame.height} pixels; the limit is "
                            f"{self.max_pixels}."
                        )
                    if time + 1e-6 < next_time:
                        continue
                    next_time = (int(time / interval + 1e-6) + 1) * interval
                    picture = frame.to_image()
                    turn = _quarter_turns(frame.rotation)
                    if turn:
                        picture = picture.transpose(TURNS[turn])
                    yield VideoFrame(index=index, time=round(time, 6), picture=picture)
        except av.error.FFmpegError as exc:
            hint = ""
            if exc.errno == errno.EINVAL:  # what the decoder's max_pixels gives, among others
                hint = f"; or its pictures grow past {self._decoder_max_pixels} pixels part-way"
            raise CorruptVideo(
                f"The video could not be decoded after {index + 1} frames "
                f"({exc.strerror or exc}{hint})."
            ) from None
        if index < 0:
            raise EmptyVideo(
                "The video stream has no frame that can be decoded (a file with no frame, or "
                "one cut short before its first)."
            )

    def _learn_rotation(self, frame: av.VideoFrame) -> None:
        """`info` as shown: a quarter turn swaps its width and height."""
        turn = _quarter_turns(frame.rotation)
        if turn:
            width, height = self.info.width, self.info.height
            if turn != 180:
                width, height = height, width
            self.info = dataclasses.replace(self.info, width=width, height=height, rotation=turn)

    def close(self) -> None:
        self.container.close()
        if self.source is not None:
            self.source.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
