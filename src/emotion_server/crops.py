"""From a detected face to the model's input: a square crop around the box, greyscale, 48x48,
scaled as the model contract says (contract.scale)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from emotion_server.contract import INPUT_SIZE, scale
from emotion_server.faces import FaceBox

# Square crops are taken a little wider than the detector's box: FER2013's faces include the
# whole head outline (brow to chin), the detector's boxes are tighter.
CROP_MARGIN = 1.15


def square_crop(
    gray: np.ndarray, face: FaceBox, margin: float = CROP_MARGIN, step: int = 1
) -> np.ndarray:
    """A square around the face box, `margin` times its longer side; edges replicated. With a
    `step`, only every step-th row and column of it (a quick reduction of a large one)."""
    side = max(1, int(round(max(face.width, face.height) * margin)))
    cx, cy = face.x + face.width / 2, face.y + face.height / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    height, width = gray.shape
    if x0 >= 0 and y0 >= 0 and x0 + side <= width and y0 + side <= height:
        return gray[y0 : y0 + side : step, x0 : x0 + side : step]  # a view: nothing copied
    # Over an edge: each row and column index clamped into the image replicates its edge
    # pixels, and only the crop is allocated (padding the whole image would hold a padded
    # copy of it per face).
    rows = np.clip(np.arange(y0, y0 + side, step), 0, height - 1)
    columns = np.clip(np.arange(x0, x0 + side, step), 0, width - 1)
    return gray[np.ix_(rows, columns)]


# A face turned upright is first brought to this many pixels across (its square's corners
# included), so that turning it, and looking at it again, cost the same for a face of any
# size: the face is then about 120 pixels wide, which CenterFace's quick first pass finds.
_TURN_SIDE = 4 * INPUT_SIZE


@dataclass(frozen=True)
class Turned:
    """A square of the picture around a face, turned by `roll` degrees about its centre so
    that the face, tilted by `roll` as seen, is upright in it."""

    image: np.ndarray  # uint8, square, edges replicated where it passed the picture's
    centre: tuple[float, float]  # the picture's point at its middle
    scale: float  # its pixels per picture pixel
    roll: float

    def to_picture(self, x: float, y: float) -> tuple[float, float]:
        """A point of `image` -> the same point in the picture."""
        half = self.image.shape[0] / 2
        dx, dy = (x - half) / self.scale, (y - half) / self.scale
        angle = math.radians(self.roll)
        cos, sin = math.cos(angle), math.sin(angle)
        return self.centre[0] + dx * cos - dy * sin, self.centre[1] + dx * sin + dy * cos

    def crop(self, side: float) -> np.ndarray:
        """The model's 48x48 input: the upright square of `side` picture pixels in the
        middle."""
        middle, half = self.image.shape[0] / 2, side * self.scale / 2
        box = (middle - half, middle - half, middle + half, middle + half)
        picture = Image.fromarray(self.image)
        return np.asarray(
            picture.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR, box=box)
        )


def turn_upright(
    gray: np.ndarray, face: FaceBox, roll: float, margin: float = CROP_MARGIN
) -> Turned:
    """The square around `face` that `square_crop` would cut with this `margin`, and its
    corners, turned by `roll` degrees so the face is upright in it."""
    # The square turned by any angle lies within one sqrt(2) times as wide about the same
    # centre: cut that (edges replicated), bring it to _TURN_SIDE, turn it.
    longer = max(face.width, face.height, 1)
    outer_margin = margin * math.sqrt(2) + 2 / longer
    side = max(1, int(round(longer * outer_margin)))
    # A square many times _TURN_SIDE (a large face in a large PNG) is first taken at every
    # step-th pixel, so its cost does not grow with the face's area.
    step = max(1, side // (2 * _TURN_SIDE))
    outer = square_crop(gray, face, outer_margin, step)
    picture = Image.fromarray(np.ascontiguousarray(outer))
    if outer.shape[0] != _TURN_SIDE:
        picture = picture.resize((_TURN_SIDE, _TURN_SIDE), Image.Resampling.BILINEAR)
    # square_crop centres its whole-pixel square as near the box's centre as it can.
    x0 = int(round(face.x + face.width / 2 - side / 2))
    y0 = int(round(face.y + face.height / 2 - side / 2))
    centre = (x0 + side / 2, y0 + side / 2)
    # Pillow turns counter-clockwise for a positive angle: a face leaning clockwise by `roll`
    # is turned back by as much.
    turned = picture.rotate(roll, resample=Image.Resampling.BILINEAR)
    return Turned(np.asarray(turned), centre, picture.width / side, roll)


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
