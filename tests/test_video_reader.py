"""VideoReader and VideoTimeline in-process: what decoding costs is bounded, and what a file
asks of the decoder is checked."""

from __future__ import annotations

import io
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import videos
from conftest import BUNDLED_MODEL, encode

from emotion_server.config import Settings
from emotion_server.errors import CorruptVideo, ImageTooLarge, VideoTooLong
from emotion_server.faces import NoDetector
from emotion_server.model import EmotionModel
from emotion_server.pipeline import Pipeline, PipelineOptions
from emotion_server.timeline import Sampling, VideoTimeline
from emotion_server.video_reader import VideoReader


@pytest.fixture(scope="module")
def clip() -> bytes:
    """2 s at 10 fps, 64x48 grey frames."""
    return videos.encode_video([np.full((48, 64, 3), 100 + i, np.uint8) for i in range(20)])


def test_check_runs_before_every_packet_is_decoded_sampled_or_not(clip):
    """Before each of the 20 packets and the decoder's flush, with the time of the last frame
    decoded: a stream whose frames are decoded but never shown still meets its time budget
    (it ran once per decoded frame, so such a stream decoded until the worker was killed)."""
    seen = []
    with VideoReader(clip, max_seconds=60, max_pixels=10_000) as reader:
        sampled = [frame.time for frame in reader.frames(0.5, check=seen.append)]
    assert sampled == [0.0]
    assert len(seen) == 21 and seen == sorted(seen)
    assert seen[0] == 0.0 and 0 < seen[-1] <= 1.9


def test_time_budget_spent_while_decoding_frames_passed_over(clip):
    """At a low fps most of the work is decoding: the budget stops it there too."""
    settings = Settings.from_env({}, model_path=str(BUNDLED_MODEL))
    pipeline = Pipeline(
        EmotionModel(settings.model_path), NoDetector(), PipelineOptions.from_settings(settings)
    )
    reader = VideoReader(clip, max_seconds=60, max_pixels=10_000)
    with reader:
        timeline = VideoTimeline(pipeline, reader, Sampling(fps=0.1, smoothing=0), 60)
        frames = timeline.frames()
        assert next(frames).time == 0.0
        timeline.deadline = time.monotonic() - 1  # the budget is spent after the first frame
        with pytest.raises(VideoTooLong, match=r"stopped at 0\.\d s of video"):
            next(frames)


def _growing_mjpeg(sides: list[int]) -> bytes:
    """Motion JPEG in Matroska whose pictures change size from frame to frame."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as output:
        stream = output.add_stream("mjpeg", rate=5)
        stream.width = stream.height = sides[0]
        stream.pix_fmt = "yuvj420p"
        for index, side in enumerate(sides):
            packet = av.Packet(encode(np.full((side, side, 3), 128, np.uint8)))
            packet.stream = stream
            packet.pts = packet.dts = index
            packet.time_base = Fraction(1, 5)
            output.mux(packet)
    return buffer.getvalue()


def test_pictures_that_grow_past_the_limit_part_way_are_not_decoded():
    """Far past the limit the decoder refuses them (nothing allocated); just past, the reader."""
    data = _growing_mjpeg([32, 32, 400, 32])
    with VideoReader(data, max_seconds=60, max_pixels=10_000) as reader:
        assert (reader.info.width, reader.info.height) == (32, 32)
        frames = reader.frames(5)
        assert [next(frames).index for _ in range(2)] == [0, 1]
        with pytest.raises(CorruptVideo, match="grow past 20000 pixels"):
            next(frames)
    with (
        VideoReader(data, max_seconds=60, max_pixels=100_000) as reader,
        pytest.raises(ImageTooLarge, match="Frame 2 is 400x400"),
    ):
        list(reader.frames(5))
    with VideoReader(data, max_seconds=60, max_pixels=400 * 400) as reader:  # within it
        assert [frame.picture.size for frame in reader.frames(5)][2] == (400, 400)


@pytest.mark.parametrize(
    ("container", "refusal"),
    [("mp4", "6000x6000 = 36000000 pixels; the limit is 1000000"), ("flv", "format is not")],
)
def test_opening_a_video_far_past_the_limit_decodes_none_of_its_pictures(
    tmp_path, container, refusal
):
    """Opening a file decodes a few frames of each stream to learn its parameters, before any
    check of ours: the decoders' pixel bound holds from there, so a 6000x6000 video is refused
    (413 image_too_large, its size still known) without its 54 MB pictures being made. A
    format whose streams appear only as it is read (FLV) would escape that bound: it is refused
    (415) before it is read. Peak memory of the opening, in a fresh process: about 87 MB more
    without the bound, 15 MB with it."""
    import subprocess
    import sys

    from conftest import ROOT

    path = tmp_path / "big.mp4"
    frames = [np.full((6000, 6000, 3), 90 + 20 * i, np.uint8) for i in range(3)]
    path.write_bytes(videos.encode_video(frames, fps=1, container=container))
    # The peak of this process's own memory (VmHWM; ru_maxrss carries the parent's over exec).
    script = f"""
import re
from emotion_server.errors import ImageTooLarge, UnsupportedVideoFormat
from emotion_server.video_reader import VideoReader
def peak_kb():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
data = open({str(path)!r}, "rb").read()
before = peak_kb()
try:
    VideoReader(data, max_seconds=60, max_pixels=1_000_000)
except (ImageTooLarge, UnsupportedVideoFormat) as error:
    print(error.message)
print((peak_kb() - before) // 1024)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    message, grown_mb = done.stdout.strip().splitlines()
    assert refusal in message, message
    assert int(grown_mb) < 40, f"opening took {grown_mb} MB more"


def test_a_file_object_is_closed_with_the_reader(clip):
    source = io.BytesIO(clip)
    with VideoReader(source, max_seconds=60, max_pixels=10_000):
        assert not source.closed
    assert source.closed


def test_display_rotation_to_quarter_turns():
    """Rotations to the nearest quarter turn; a display matrix of zeros (FFmpeg's NaN, which
    PyAV gives as the smallest int on x86) turns nothing, where it turned frames by -90."""
    from emotion_server.video_reader import _quarter_turns

    turns = [_quarter_turns(d) for d in (0, 89.6, -90, 180, -180, 270, 360, 450)]
    assert turns == [0, 90, -90, 180, 180, -90, 0, 90]
    assert _quarter_turns(float(-(2**31))) == 0 and _quarter_turns(float("nan")) == 0
