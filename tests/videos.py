"""Short videos made at test time with PyAV's encoders: nothing binary is committed."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

# The astronaut's face in data.astronaut() (512x512), as conftest.ASTRONAUT_FACE.
FACE = (170, 40, 280, 200)
WIDTH, HEIGHT = 640, 480


def encode_video(
    frames: Iterable[np.ndarray],
    fps: int = 10,
    container: str = "mp4",
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    rotation: int = 0,
) -> bytes:
    """RGB uint8 frames -> a video file's bytes; `rotation`: the display matrix's turn
    (degrees counter-clockwise a player turns the stored frames to show them)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = None
        for rgb in frames:
            if stream is None:
                stream = output.add_stream(codec, rate=fps, options=options or {})
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = pix_fmt
                if rotation:
                    stream.set_display_rotation(rotation)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                output.mux(packet)
    return buffer.getvalue()


def decode_frames(data: bytes) -> list[np.ndarray]:
    """Every frame of a video as RGB, decoded as the server decodes it."""
    with av.open(io.BytesIO(data)) as video:
        return [frame.to_ndarray(format="rgb24") for frame in video.decode(video=0)]


@dataclass(frozen=True)
class Actor:
    """A picture moving in a straight line across the frames, its face at `face` within it."""

    picture: np.ndarray
    start: tuple[int, int]  # top-left corner at the first frame
    end: tuple[int, int]  # at the last frame
    face: tuple[int, int, int, int]  # x1, y1, x2, y2 inside the picture

    def corner(self, step: float) -> tuple[int, int]:
        return (
            round(self.start[0] + (self.end[0] - self.start[0]) * step),
            round(self.start[1] + (self.end[1] - self.start[1]) * step),
        )

    def face_centre(self, step: float) -> tuple[float, float]:
        x, y = self.corner(step)
        return x + (self.face[0] + self.face[2]) / 2, y + (self.face[1] + self.face[3]) / 2


def actor(astronaut: np.ndarray, side: int, start, end, mirrored: bool = False) -> Actor:
    """The astronaut scaled to side x side (mirrored if asked), moving from `start` to `end`."""
    picture = np.asarray(Image.fromarray(astronaut).resize((side, side), Image.Resampling.BILINEAR))
    x1, y1, x2, y2 = (round(v * side / 512) for v in FACE)
    if mirrored:
        picture = picture[:, ::-1]
        x1, x2 = side - x2, side - x1
    return Actor(np.ascontiguousarray(picture), start, end, (x1, y1, x2, y2))


def scene(actors: Sequence[Actor], count: int) -> list[np.ndarray]:
    """`count` 640x480 frames on a grey background, the actors pasted in order (later on top)."""
    frames = []
    for index in range(count):
        step = index / max(1, count - 1)
        canvas = np.full((HEIGHT, WIDTH, 3), 96, np.uint8)
        for item in actors:
            x, y = item.corner(step)
            h, w = item.picture.shape[:2]
            canvas[y : y + h, x : x + w] = item.picture[: HEIGHT - y, : WIDTH - x]
        frames.append(canvas)
    return frames


def audio_only(seconds: float = 1.0) -> bytes:
    """A Matroska file with one PCM audio stream and no picture."""
    buffer = io.BytesIO()
    rate = 8000
    with av.open(buffer, "w", format="matroska") as output:
        stream = output.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        samples = (np.sin(np.arange(int(rate * seconds)) * 0.1) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def zero_frames(container: str = "avi", codec: str = "mjpeg") -> bytes:
    """A container with a video stream that holds no frame."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuvj420p"
        output.start_encoding()
    return buffer.getvalue()
