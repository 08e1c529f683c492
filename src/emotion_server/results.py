"""What classifying an image produces: each face's box (the detector's own FaceBox, in the
upright image's pixels) with its emotions, or the whole image's emotions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emotion_server.contract import EMOTIONS
from emotion_server.faces import FaceBox


@dataclass(frozen=True)
class Classification:
    prediction: str
    confidence: float
    probabilities: dict[str, float]

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> Classification:
        best = int(np.argmax(vector))
        return cls(
            prediction=EMOTIONS[best],
            confidence=float(vector[best]),
            probabilities={name: float(p) for name, p in zip(EMOTIONS, vector, strict=True)},
        )


def face_points(box: FaceBox) -> dict[str, Any]:
    """A face's `landmarks` (by name, x and y to 0.1 pixel; None where the detector gave none)
    and `roll` (degrees to 0.1; None without eyes), as answers and `classify` rows carry them."""
    roll = box.roll
    return {
        "landmarks": {p.name: {"x": round(p.x, 1), "y": round(p.y, 1)} for p in box.landmarks}
        or None,
        "roll": None if roll is None else round(roll, 1),
    }


@dataclass(frozen=True)
class FaceResult:
    box: FaceBox
    classification: Classification

    @property
    def score(self) -> float:
        """The face detector's confidence."""
        return self.box.score


@dataclass(frozen=True)
class InferenceResult:
    classification: Classification  # the largest face's, or the whole image's
    faces: list[FaceResult]
    face_detected: bool
    whole_image_reason: str | None  # why the whole image was classified, if it was
    image_width: int
    image_height: int
