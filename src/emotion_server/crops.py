"""From a detected face to the model's input: a square crop around the box, greyscale, 48x48,
scaled as the model contract says (contract.scale)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from emotion_server.contract import INPUT_SIZE, scale
from emotion_server.faces import FaceBox

# Square crops are taken a little wider than the detector's box: FER2013's faces include the
# whole head outline (brow to chin), the detector's boxes are tighter.
CROP_MARGIN = 1.15


def square_crop(gray: np.ndarray, face: FaceBox, margin: float = CROP_MARGIN) -> np.ndarray:
    """A square around the face box, `margin` times its longer side; edges replicated."""
    side = max(1, int(round(max(face.width, face.height) * margin)))
    cx, cy = face.x + face.width / 2, face.y + face.height / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    height, width = gray.shape
    if x0 >= 0 and y0 >= 0 and x0 + side <= width and y0 + side <= height:
        return gray[y0 : y0 + side, x0 : x0 + side]  # a view: nothing copied
    # Over an edge: each row and column index clamped into the image replicates its edge
    # pixels, and only the side x side crop is allocated (padding the whole image would
    # hold a padded copy of it per face).
    rows = np.clip(np.arange(y0, y0 + side), 0, height - 1)
    columns = np.clip(np.arange(x0, x0 + side), 0, width - 1)
    return gray[np.ix_(rows, columns)]


def resize_to_input(crop: np.ndarray) -> np.ndarray:
    """A greyscale uint8 crop of any size -> uint8 48x48 (unchanged if it already is)."""
    if crop.shape == (INPUT_SIZE, INPUT_SIZE):
        return crop
    return np.asarray(
        Image.fromarray(crop).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    )


def to_model_input(gray_crops: list[np.ndarray]) -> np.ndarray:
    """Greyscale uint8 crops of any size -> float32 [N,48,48,1] in [0,1]."""
    faces = np.empty((len(gray_crops), INPUT_SIZE, INPUT_SIZE), np.uint8)
    for index, crop in enumerate(gray_crops):
        faces[index] = resize_to_input(crop)
    return scale(faces)
