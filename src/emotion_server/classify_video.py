"""`emotion-server classify` on a video file: one row per face per sampled frame, a progress bar
over the frames, and a PNG timeline per track.

The frames go through the same `VideoTimeline` as POST /inference/video. The server's limits on
length and work per request do not apply here: the user runs this on their own files.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from emotion_server.pipeline import Pipeline
from emotion_server.timeline import FrameResult, Sampling, VideoTimeline, check_sampling
from emotion_server.timeline_plot import draw_timeline
from emotion_server.video_reader import VideoReader

# Suffixes picked up as videos when walking a folder (GIFs stay images: their first frame).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"})


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoOptions:
    fps: float = 2.0
    smoothing: float = 0.0
    plots: Path | None = None  # folder for one PNG timeline per track; None: no plots
    max_fps: float = 60.0
    # The plots' file stems given so far in this run, and the video each is for: two videos
    # of one name (a/clip.mp4, b/clip.mp4) get clip.mp4 and clip.mp4-2.
    stems: dict[str, Path] = field(default_factory=dict, compare=False)

    def sampling(self) -> Sampling:
        return check_sampling(self.fps, self.smoothing, self.max_fps)


@dataclass
class _Series:
    times: list[float] = field(default_factory=list)
    probabilities: list[dict[str, float]] = field(default_factory=list)


def plot_stem(video: Path, stems: dict[str, Path] | None = None) -> str:
    """The video's file name with unusual characters replaced; `-2`, `-3`... added where
    another video of the run (in `stems`, which it updates) has that stem already."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", video.name)
    if stems is None:
        return base
    stem, number = base, 1
    while stems.get(stem, video) != video:
        number += 1
        stem = f"{base}-{number}"
    stems[stem] = video
    return stem


def plot_name(video: Path, track_id: int, stems: dict[str, Path] | None = None) -> str:
    """`<video file name>.track<id>.png` (the stem as `plot_stem` gives it)."""
    return f"{plot_stem(video, stems)}.track{track_id}.png"


def classify_video(
    pipeline: Pipeline,
    path: Path,
    options: VideoOptions,
    on_frame: Callable[[FrameResult], None],
    progress: bool | None = None,
) -> list[Path]:
    """Analyses `path`, calling `on_frame` for each sampled frame; returns the plots written.

    Raises the file's EmotionServerError (frames already reported stay reported).
    """
    from tqdm import tqdm

    sampling = options.sampling()
    series: dict[int, _Series] = {}
    with VideoReader(path, max_seconds=math.inf, max_pixels=pipeline.options.max_pixels) as reader:
        timeline = VideoTimeline(pipeline, reader, sampling)
        duration = reader.info.duration
        total = max(1, math.ceil(duration * sampling.fps - 1e-6)) if duration else None
        disable = None if progress is None else not progress
        with tqdm(
            total=total,
            unit="frame",
            desc=path.name,
            file=sys.stderr,
            disable=disable,
            leave=False,
            # Every frame is drawn (a frame takes milliseconds of work, a line costs less): a
            # bar that vanishes when done would otherwise end on whichever count tqdm's
            # 0.1 s refresh last caught, short of the total when frames come fast.
            mininterval=0,
            miniters=1,
        ) as bar:
            for frame in timeline.frames():
                on_frame(frame)
                for face in frame.faces:
                    track = series.setdefault(face.track_id, _Series())
                    track.times.append(frame.time)
                    track.probabilities.append(face.classification.probabilities)
                bar.update(1)
        summaries = timeline.tracks()
    written = []
    if options.plots is not None:
        options.plots.mkdir(parents=True, exist_ok=True)
        for summary in summaries:
            track = series[summary.track_id]
            title = (
                f"{path.name}: face {summary.track_id}, {summary.frames} frames, "
                f"mostly {summary.dominant} ({summary.time_share[summary.dominant]:.0%})"
            )
            target = options.plots / plot_name(path, summary.track_id, options.stems)
            written.append(draw_timeline(track.times, track.probabilities, title, target))
    return written
