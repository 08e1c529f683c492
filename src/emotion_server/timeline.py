"""One video through the house: sampled frames -> the image pipeline -> face tracks -> a
timeline per track and its summary.

Each sampled frame goes through `Pipeline.analyze_image` exactly as a photo posted to
/inference does, so a frame's probabilities are the ones /inference gives for that picture
(before the optional smoothing). Frames are handled one at a time and only per-track sums are
kept, so memory does not grow with the video's length.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from emotion_server.contract import EMOTIONS
from emotion_server.errors import InvalidParameter, VideoTooLong
from emotion_server.faces import FaceBox
from emotion_server.imaging import DecodedImage, block_reduced
from emotion_server.pipeline import Pipeline
from emotion_server.results import Classification
from emotion_server.tracking import IoUTracker
from emotion_server.video_reader import VideoInfo, VideoReader


@dataclass(frozen=True)
class Sampling:
    """How the video was sampled: `fps` frames per second of video; `smoothing` the weight of
    the past in each track's exponential moving average of probabilities (0: none)."""

    fps: float
    smoothing: float


@dataclass(frozen=True)
class TrackedFace:
    track_id: int
    box: FaceBox  # with the detector's confidence
    classification: Classification

    @property
    def score(self) -> float:
        return self.box.score


@dataclass(frozen=True)
class FrameResult:
    index: int  # the frame's place among all decoded frames
    time: float  # seconds since the first frame
    faces: list[TrackedFace]  # largest first


@dataclass(frozen=True)
class TrackSummary:
    track_id: int
    frames: int  # sampled frames where the face was seen
    first_seen: float
    last_seen: float
    dominant: str  # the emotion predicted in most of those frames
    time_share: dict[str, float]  # the share of those frames with each prediction
    mean_probabilities: dict[str, float]


@dataclass
class _Totals:
    first_seen: float
    last_seen: float
    frames: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(EMOTIONS)))
    sums: np.ndarray = field(default_factory=lambda: np.zeros(len(EMOTIONS)))
    smoothed: np.ndarray | None = None


def check_sampling(fps: float, smoothing: float, max_fps: float) -> Sampling:
    """The request's sampling, or InvalidParameter naming what is out of range."""
    if not np.isfinite(fps) or not 0 < fps <= max_fps:
        raise InvalidParameter(f"fps must be above 0 and at most {max_fps:g}; it was {fps:g}.")
    if not np.isfinite(smoothing) or not 0 <= smoothing < 1:
        raise InvalidParameter(f"smoothing must be at least 0 and below 1; it was {smoothing:g}.")
    return Sampling(fps=fps, smoothing=smoothing)


class VideoTimeline:
    """Analyses one video: iterate `frames()` for per-frame results, then call `tracks()`."""

    def __init__(
        self,
        pipeline: Pipeline,
        reader: VideoReader,
        sampling: Sampling,
        time_budget_s: float | None = None,
    ):
        self.pipeline = pipeline
        self.reader = reader
        self.sampling = sampling
        # A face is followed across a gap of a few sampled frames (as a missed detection
        # leaves): at a low fps those are further apart than the tracker's usual 1.5 s.
        self.tracker = IoUTracker(max_gap_s=max(1.5, 2.5 / sampling.fps))
        self.totals: dict[int, _Totals] = {}
        self.frames_analysed = 0
        # Past this moment, stop: a worker that runs past gunicorn's timeout without returning
        # to its event loop misses its heartbeat and is killed.
        self.deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
        self.time_budget_s = time_budget_s

    @property
    def info(self) -> VideoInfo:
        return self.reader.info

    def _check_time(self, at: float) -> None:
        """Stops once the request's time is spent; runs before each packet is decoded."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise VideoTooLong(
                f"Analysing this video takes longer than the {self.time_budget_s:g} s a "
                f"request may use (stopped at {at:.1f} s of video): ask for a lower fps, or "
                "send a shorter or smaller video."
            )

    def frames(self) -> Iterator[FrameResult]:
        for frame in self.reader.frames(self.sampling.fps, check=self._check_time):
            # Also before each analysis: the decoder's last packet can release a dozen frames
            # at once, and a worker past gunicorn's timeout is killed with all its connections.
            self._check_time(frame.time)
            width, height = frame.picture.size
            # Reduced as a photo of that size is (decode_image), so a frame gets what
            # POST /inference gives for the same picture, at a photo's cost; the boxes are in
            # the frame's own pixels.
            picture = block_reduced(frame.picture, self.pipeline.options.decode_side)
            image = DecodedImage(picture, "VIDEO", full_width=width, full_height=height)
            with self.pipeline.in_flight, self.pipeline.server:
                result = self.pipeline.analyze_image(image)
            if result.faces:
                found = [(f.box, f.classification) for f in result.faces]
            elif result.whole_image_reason == "image_is_face_crop":
                # A video as small as a face crop is one face filling the frame, as a photo is.
                found = [(FaceBox(0, 0, width, height, 1.0), result.classification)]
            else:
                found = []
            ids = self.tracker.update(frame.time, [box for box, _ in found])
            faces = [
                TrackedFace(track_id, box, self._record(track_id, frame.time, c))
                for track_id, (box, c) in zip(ids, found, strict=True)
            ]
            self.frames_analysed += 1
            yield FrameResult(index=frame.index, time=frame.time, faces=faces)

    def _record(self, track_id: int, at: float, classification: Classification) -> Classification:
        """Adds one observation to its track; returns it smoothed where smoothing is on."""
        vector = np.array([classification.probabilities[e] for e in EMOTIONS])
        totals = self.totals.setdefault(track_id, _Totals(first_seen=at, last_seen=at))
        alpha = self.sampling.smoothing
        if alpha > 0:
            if totals.smoothed is not None:
                vector = alpha * totals.smoothed + (1 - alpha) * vector
            totals.smoothed = vector
            classification = Classification.from_vector(vector)
        totals.frames += 1
        totals.last_seen = at
        totals.sums += vector
        totals.counts[EMOTIONS.index(classification.prediction)] += 1
        return classification

    def tracks(self) -> list[TrackSummary]:
        """Per-track summaries, by track id."""
        summaries = []
        for track_id, totals in sorted(self.totals.items()):
            share = totals.counts / totals.frames
            mean = totals.sums / totals.frames
            summaries.append(
                TrackSummary(
                    track_id=track_id,
                    frames=totals.frames,
                    first_seen=totals.first_seen,
                    last_seen=totals.last_seen,
                    # Ties go to the higher mean probability.
                    dominant=EMOTIONS[int(np.lexsort((mean, share))[-1])],
                    time_share={e: float(v) for e, v in zip(EMOTIONS, share, strict=True)},
                    mean_probabilities={e: float(v) for e, v in zip(EMOTIONS, mean, strict=True)},
                )
            )
        return summaries
