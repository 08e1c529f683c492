"""Face tracks across a video's sampled frames: each box gets the id of the person it follows.

A small IoU tracker with constant-velocity prediction (the idea of SORT, without its Kalman
filter): every track predicts where its face is now from its last box and speed; detections are
matched to predictions greedily by overlap, or by centre distance where a fast face at a low
sampling rate leaves no overlap; unmatched detections start new tracks; a track unseen for
`max_gap_s` seconds ends. The tracker libraries we measured cost more than this module does:
norfair pins numpy below 2 and brings SciPy, matplotlib and filterpy; motpy (last release 2021)
brings the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emotion_server.faces import FaceBox


@dataclass
class _Track:
    track_id: int
    corners: np.ndarray  # x1, y1, x2, y2 of the last box
    velocity: np.ndarray  # corners per second
    last_time: float
    seen: int = 1

    def predict(self, time: float) -> np.ndarray:
        return self.corners + self.velocity * (time - self.last_time)


def _corners(box: FaceBox) -> np.ndarray:
    return np.array([box.x, box.y, box.x + box.width, box.y + box.height], np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _centre_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between the boxes' centres, in units of their mean side."""
    centre_a = (a[:2] + a[2:]) / 2
    centre_b = (b[:2] + b[2:]) / 2
    side = ((a[2] - a[0]) + (a[3] - a[1]) + (b[2] - b[0]) + (b[3] - b[1])) / 4
    return float(np.linalg.norm(centre_a - centre_b) / max(side, 1.0))


class IoUTracker:
    """Assigns stable 1-based track ids to face boxes, frame after frame."""

    def __init__(
        self,
        min_iou: float = 0.2,
        max_distance: float = 0.75,
        first_step_distance: float = 1.5,
        max_gap_s: float = 1.5,
    ):
        self.min_iou = min_iou
        # Centre distance (in face sides) for a match: around the predicted box, or around the
        # last box of a track seen once (whose speed is not known yet, so a wider gate).
        self.max_distance = max_distance
        self.first_step_distance = first_step_distance
        self.max_gap_s = max_gap_s
        self.tracks: list[_Track] = []
        self.next_id = 1

    def _similarity(self, predicted: np.ndarray, detected: np.ndarray, gate: float) -> float:
        """IoU where it is enough; else a smaller score for a near centre; else 0 (no match)."""
        iou = _iou(predicted, detected)
        if iou >= self.min_iou:
            return iou
        distance = _centre_distance(predicted, detected)
        if distance < gate:
            return self.min_iou * (1 - distance / gate) * 0.99
        return 0.0

    def update(self, time: float, boxes: Sequence[FaceBox]) -> list[int]:
        """The track id of each box, in the order given; `time` in seconds, increasing."""
        self.tracks = [t for t in self.tracks if time - t.last_time <= self.max_gap_s]
        detected = [_corners(box) for box in boxes]
        pairs = []
        for t_index, track in enumerate(self.tracks):
            predicted = track.predict(time)
            gate = self.first_step_distance if track.seen == 1 else self.max_distance
            for d_index, corners in enumerate(detected):
                score = self._similarity(predicted, corners, gate)
                if score > 0:
                    pairs.append((score, t_index, d_index))
        ids: list[int | None] = [None] * len(boxes)
        used_tracks: set[int] = set()
        for _score, t_index, d_index in sorted(pairs, reverse=True):
            if t_index in used_tracks or ids[d_index] is not None:
                continue
            used_tracks.add(t_index)
            track = self.tracks[t_index]
            elapsed = time - track.last_time
            if elapsed > 0:
                measured = (detected[d_index] - track.corners) / elapsed
                # The first step sets the speed; later ones average it, to damp detector jitter.
                track.velocity = measured if track.seen == 1 else (track.velocity + measured) / 2
            track.corners = detected[d_index]
            track.last_time = time
            track.seen += 1
            ids[d_index] = track.track_id
        for d_index, corners in enumerate(detected):
            if ids[d_index] is None:
                track = _Track(self.next_id, corners, np.zeros(4), time)
                self.tracks.append(track)
                ids[d_index] = track.track_id
                self.next_id += 1
        return [track_id for track_id in ids if track_id is not None]
