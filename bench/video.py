"""Frames per second analysed on a 640x480 video with one and with three faces.

    .venv/bin/python bench/video.py [--seconds 10] [--threads 1] [--out bench/results/video.md]

The videos are made here (H.264 in MP4, 25 fps) from scikit-image's astronaut photo moving across
a grey background, as in tests/videos.py. Each is timed in-process through the same path as
POST /inference/video (PyAV decoding, the detector and the model on ONNX Runtime with
`--threads` threads, the tracker), best of `--repeat` runs:
- every frame analysed (sampling at 25 fps): the frames analysed per second of wall time;
- the default sampling (EMOTION_VIDEO_FPS, 2 a second): seconds of video per second of wall time;
- decoding alone, every frame to an RGB picture: PyAV, and OpenCV's reader where cv2 imports
  (it needs a file on disk; it is not a dependency, the figure is for the choice of decoder).
Prints a markdown table, and writes it to --out when given.
"""

from __future__ import annotations

import argparse
import os
import platform
import runpy
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from emotion_server.config import Settings
from emotion_server.pipeline import Pipeline
from emotion_server.timeline import Sampling, VideoTimeline
from emotion_server.video_reader import VideoReader

ROOT = Path(__file__).resolve().parents[1]
# The test videos' maker, read from its file (tests/ is not a package, and nothing here edits
# sys.path to reach it).
videos = SimpleNamespace(**runpy.run_path(str(ROOT / "tests" / "videos.py")))

FPS = 25


def make_video(faces: int, seconds: float) -> bytes:
    """640x480 H.264: `faces` astronauts walking across, one above the other."""
    from skimage import data

    astronaut = data.astronaut()
    if faces == 1:
        actors = [videos.actor(astronaut, 240, (0, 120), (400, 120))]
    else:
        rows = (0, 160, 320)[:faces]
        actors = [
            videos.actor(astronaut, 160, (40 + 160 * (i % 2), y), (440 - 160 * (i % 2), y), i % 2)
            for i, y in enumerate(rows)
        ]
    return videos.encode_video(videos.scene(actors, int(seconds * FPS)), fps=FPS)


def best_of(repeat: int, run) -> tuple[float, int]:
    """(shortest wall time, what the run returned) over `repeat` runs."""
    best, result = float("inf"), 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def analyse(pipeline: Pipeline, data: bytes, fps: float) -> tuple[int, int]:
    """(frames analysed, largest number of tracks) for one pass over the video."""
    with VideoReader(data, max_seconds=3600, max_pixels=40_000_000) as reader:
        timeline = VideoTimeline(pipeline, reader, Sampling(fps=fps, smoothing=0.0))
        faces = max((len(frame.faces) for frame in timeline.frames()), default=0)
        return timeline.frames_analysed, faces


def decode_pyav(data: bytes) -> int:
    with VideoReader(data, max_seconds=3600, max_pixels=40_000_000) as reader:
        return sum(1 for _ in reader.frames(1000.0))


def decode_opencv(path: str) -> int:
    import cv2

    capture = cv2.VideoCapture(path)
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        count += 1
    capture.release()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure (best kept)")
    parser.add_argument("--out", help="markdown file to write")
    args = parser.parse_args()

    settings = Settings(threads=args.threads)
    pipeline = Pipeline.from_settings(settings)
    rows = []
    for faces in (1, 3):
        data = make_video(faces, args.seconds)
        frames = int(args.seconds * FPS)
        wall, (analysed, found) = best_of(args.repeat, lambda d=data: analyse(pipeline, d, FPS))
        assert analysed == frames and found == faces, (analysed, found)
        rows.append((faces, "every frame analysed (25 fps)", f"{analysed / wall:.1f} frames/s"))
        wall, (analysed, _) = best_of(
            args.repeat, lambda d=data: analyse(pipeline, d, settings.video_fps)
        )
        rows.append(
            (
                faces,
                f"default sampling ({settings.video_fps:g} fps, {analysed} frames)",
                f"{args.seconds / wall:.1f} s of video per s ({analysed / wall:.1f} frames/s)",
            )
        )
        wall, decoded = best_of(args.repeat, lambda d=data: decode_pyav(d))
        rows.append((faces, "decoding only, PyAV", f"{decoded / wall:.0f} frames/s"))
        try:
            import cv2  # noqa: F401
        except ImportError:
            continue
        with tempfile.NamedTemporaryFile(suffix=".mp4") as file:
            file.write(data)
            file.flush()
            wall, decoded = best_of(args.repeat, lambda name=file.name: decode_opencv(name))
        rows.append(
            (faces, "decoding only, OpenCV (from a file)", f"{decoded / wall:.0f} frames/s")
        )

    cpu = platform.processor() or platform.machine()
    lines = [
        f"Video benchmark of {datetime.now(UTC):%Y-%m-%d} on {cpu}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()} (`python bench/video.py --seconds {args.seconds:g} "
        f"--threads {args.threads} --repeat {args.repeat}`): a {args.seconds:g} s 640x480 H.264 "
        f"video at {FPS} fps, in-process through the path of POST /inference/video, "
        f"ONNX Runtime on {args.threads} thread(s), best of {args.repeat}.",
        "",
        "| faces | what | result |",
        "|---|---|---|",
        *(f"| {faces} | {what} | {result} |" for faces, what, result in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
