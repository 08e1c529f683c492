"""One image through the house: decode, find faces, crop, classify, assemble the result.

The pipeline orchestrates; the steps live beside it: imaging.py decodes, faces.py detects,
crops.py cuts the model's input, model.py runs it, contract.py holds the model's maths
(mirror averaging, temperature), results.py the result types. It is configured by its own
`PipelineOptions`, which `Pipeline.from_settings` derives from the server's settings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from emotion_server import activity
from emotion_server.activity import Activity
from emotion_server.batching import InFlight, MicroBatcher
from emotion_server.config import Settings
from emotion_server.contract import apply_temperature, mirror_average
from emotion_server.crops import (
    CROP_MARGIN,
    Turned,
    resize_to_input,
    square_crop,
    to_model_input,
    turn_upright,
)
from emotion_server.errors import EmotionServerError, OutOfTime
from emotion_server.faces import FaceBox, FaceDetector, Landmark, make_detector
from emotion_server.imaging import DecodedImage, decode_image
from emotion_server.model import EmotionModel
from emotion_server.results import Classification, FaceResult, InferenceResult

TTA_MODES = ("none", "flip")
# The least distance between the eyes, in the face box's longer side, at which their line is
# taken for the face's tilt (Pipeline._eyes_apart).
EYES_APART = 0.15


@dataclass(frozen=True)
class PipelineOptions:
    """How the pipeline treats an image; the defaults are the server's."""

    tta: str = "auto"  # test-time augmentation; "auto": what the model card was evaluated with
    max_faces: int = 20  # the largest faces kept per image
    crop_size_limit: int = 96  # images no larger than this are taken as a face crop
    align_roll: float = 10.0  # faces tilted more than this (degrees) are turned upright
    max_pixels: int = 40_000_000  # decoded images larger than this are refused
    decode_side: int = 800  # large images are decoded or reduced near this (the detector's input)
    # Micro-batching of concurrent callers' crops into shared model calls; 0 ms: off.
    batch_max_size: int = 32
    batch_max_wait_ms: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineOptions:
        # Concurrent requests reach one pipeline only through gunicorn's threads: micro-batching
        # pays there and nowhere else.
        concurrent = settings.worker_threads > 1
        return cls(
            tta=settings.tta,
            max_faces=settings.max_faces,
            crop_size_limit=settings.crop_size_limit,
            align_roll=settings.align_roll,
            max_pixels=settings.max_pixels,
            decode_side=settings.detect_max_side,
            batch_max_size=settings.batch_max_size,
            batch_max_wait_ms=settings.batch_max_wait_ms if concurrent else 0.0,
        )


@dataclass(frozen=True)
class LocatedFaces:
    """One image after detection, before the model: its faces and their 48x48 crops.

    Only the small crops are kept, so a batch of large photos does not hold every decoded image
    while it waits for the one model call.
    """

    faces: list[FaceBox]  # largest first; empty when the whole image is classified
    crops: list[np.ndarray]  # uint8 48x48: one per face, or the whole image
    whole_image_reason: str | None
    image_width: int
    image_height: int


class Pipeline:
    """Holds the loaded model and detector (once per worker) and classifies images."""

    def __init__(
        self,
        model: EmotionModel,
        detector: FaceDetector,
        options: PipelineOptions | None = None,
        server: Activity | None = None,
    ):
        options = options or PipelineOptions()
        # Every analysis is counted in the server's activity while it runs (activity.py).
        self.server = server or Activity()
        self.model = model
        self.detector = detector
        tta = options.tta
        if tta == "auto":
            tta = model.card.get("tta", "none")
        if tta not in TTA_MODES:
            raise ValueError(f"unknown test-time augmentation {tta!r}: use one of {TTA_MODES}")
        self.tta = tta
        self.options = replace(options, tta=tta)
        # Fitted on PublicTest by `evaluate` and stored in the card; 1.0 leaves outputs as-is.
        self.temperature = float(model.card.get("temperature", 1.0))
        self.in_flight = InFlight()
        self.batcher = (
            MicroBatcher(
                lambda rows: self.model.predict(rows),
                max_rows=options.batch_max_size,
                max_wait_s=options.batch_max_wait_ms / 1000,
                in_flight=self.in_flight,
            )
            if options.batch_max_wait_ms > 0
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings, server: Activity | None = None) -> Pipeline:
        """The pipeline of one worker; `server` counts the analyses in progress on the whole
        server (activity.py; this process's own count where not given)."""
        server = server or activity.share()
        # Each reads the CPU count and the cgroup's quota: once here, for both.
        threads, idle_threads = settings.intra_op_threads, settings.idle_intra_op_threads
        model = EmotionModel(
            settings.model_path, threads=threads, idle_threads=idle_threads, idle=server.alone
        )
        detector = make_detector(
            settings.detector,
            threshold=settings.detect_threshold,
            max_side=settings.detect_max_side,
            threads=threads,
            large_face=settings.detect_large_face,
            precision=settings.detect_precision,
            idle_threads=idle_threads,
            idle=server.alone,
        )
        return cls(model, detector, PipelineOptions.from_settings(settings), server)

    def classify_crops(self, gray_crops: list[np.ndarray]) -> np.ndarray:
        """Greyscale face crops -> [N,7] probabilities, with TTA and calibration applied.

        This is the one path from crops to probabilities: `evaluate` scores models through it.
        """
        batch = to_model_input(gray_crops)
        predict = self.batcher.predict if self.batcher and len(batch) else self.model.predict
        if self.tta == "flip" and len(batch):
            probabilities = mirror_average(predict, batch)
        else:
            probabilities = predict(batch)
        return apply_temperature(probabilities, self.temperature)

    def _is_face_crop(self, image: DecodedImage) -> bool:
        limit = self.options.crop_size_limit  # the file's size, not that of a reduced copy
        return max(image.file_size) <= limit

    def analyze(self, data: bytes) -> InferenceResult:
        """Image bytes -> per-face emotions (or the whole image's, as the original service)."""
        with self.in_flight, self.server:
            image = self.decode(data)
            return self.analyze_image(image)

    def analyze_image(self, image: DecodedImage) -> InferenceResult:
        """A decoded image -> its result; the caller counts it in `self.server` (activity.py)."""
        located = self.locate_faces(image)
        return self.assemble(located, self.classify_crops(located.crops))

    def analyze_batch(
        self, images: Sequence[bytes | EmotionServerError], time_budget_s: float | None = None
    ) -> list[InferenceResult | EmotionServerError]:
        """Several images -> one result each, in order; the faces of all go through ONE model call.

        An item that already failed (an unreadable file, one over a limit) and an image that
        cannot be decoded keep their error in their place; the others are unaffected. With
        `time_budget_s`, an image is begun only where the time spent so far plus the slowest
        image's would stay within it (the first is always begun); the rest get an OutOfTime
        error in their place.
        """
        with self.server:
            return self._analyze_batch(images, time_budget_s)

    def _analyze_batch(
        self, images: Sequence[bytes | EmotionServerError], time_budget_s: float | None
    ) -> list[InferenceResult | EmotionServerError]:
        located: list[LocatedFaces | EmotionServerError] = []
        started, begun, slowest = time.monotonic(), 0, 0.0
        out_of_time: str | None = None
        for item in images:
            if isinstance(item, EmotionServerError):
                located.append(item)
                continue
            if time_budget_s is not None and begun and out_of_time is None:
                # Begun only where the slowest file so far would still end within the budget.
                elapsed = time.monotonic() - started
                if elapsed + slowest > time_budget_s:
                    out_of_time = (
                        f"This file was not analysed: the {begun} before it took {elapsed:.1f} s "
                        f"of the {time_budget_s:g} s a request may spend, too little left for "
                        "another. Send it again, or fewer or smaller images per request."
                    )
            if out_of_time is not None:
                located.append(OutOfTime(out_of_time))
                continue
            begun += 1
            began = time.monotonic()
            try:
                located.append(self.locate_faces(self.decode(item)))
            except EmotionServerError as error:
                located.append(error)
            slowest = max(slowest, time.monotonic() - began)
        crops = [crop for item in located if isinstance(item, LocatedFaces) for crop in item.crops]
        with self.in_flight:
            vectors = self.classify_crops(crops)
        results: list[InferenceResult | EmotionServerError] = []
        start = 0
        for item in located:
            if isinstance(item, EmotionServerError):
                results.append(item)
                continue
            end = start + len(item.crops)
            results.append(self.assemble(item, vectors[start:end]))
            start = end
        return results

    def decode(self, data: bytes) -> DecodedImage:
        """Bytes -> image; large ones are decoded (JPEG) or reduced to near the detector's input."""
        return decode_image(
            data, max_pixels=self.options.max_pixels, draft_side=self.options.decode_side
        )

    def face_crop(self, gray: np.ndarray, face: FaceBox) -> tuple[FaceBox, np.ndarray]:
        """The face as reported, and its crop for the model.

        A face tilted more than `align_roll` degrees (its roll, from the detector's eye
        points) is turned upright first: FER2013's faces are about upright, and the model
        reads a face lying on its side poorly (bench/alignment.py). On a tilted face the
        detector's points understate the tilt (its eyes' line reads about 65 degrees on a face
        turned by 90), so the detector looks again at the face turned upright, where it
        reads the small tilt left over well; the crop is then turned by both, about the
        upright face's box and as wide as it (a tilted face's box is wider), and the face
        reports the second look's points. Near upright, the estimate's own error (a few
        degrees, now and then 15) would only blur a face the model reads as it is: turning
        every face cost 1.0 point on upright faces, turning those above 10 degrees nothing
        (bench/alignment.py)."""
        roll = face.roll
        if roll is None or abs(roll) <= self.options.align_roll:
            return face, square_crop(gray, face)
        turned = turn_upright(gray, face, roll)
        second = self._second_look(turned)
        if second is None:
            if not self._eyes_apart(face):
                # Eyes nearly meeting (a face seen from the side, or points read poorly) give
                # any angle, and the second look did not confirm it: left as it is.
                return face, square_crop(gray, face)
            return face, turned.crop(max(face.width, face.height) * CROP_MARGIN)
        points = tuple(Landmark(p.name, *turned.to_picture(p.x, p.y)) for p in second.landmarks)
        centre = turned.to_picture(second.x + second.width / 2, second.y + second.height / 2)
        width, height = second.width / turned.scale, second.height / turned.scale
        upright = FaceBox(
            round(centre[0] - width / 2),
            round(centre[1] - height / 2),
            round(width),
            round(height),
            face.score,
        )
        face = replace(face, landmarks=points)
        crop = turn_upright(gray, upright, face.roll).crop(max(width, height) * CROP_MARGIN)
        return face, crop

    @staticmethod
    def _eyes_apart(face: FaceBox) -> bool:
        """Whether the eyes are far enough apart for their line to say the face's tilt: about a
        third of the face on a face seen from the front (0.36 on the sample photo's), nearly
        nothing on a face seen from the side, whose roll is then any angle."""
        left, right = face.eyes
        return math.hypot(right.x - left.x, right.y - left.y) >= EYES_APART * max(
            face.width, face.height
        )

    def _second_look(self, turned: Turned) -> FaceBox | None:
        """The face the detector finds in the middle of a turned square, with its points."""
        size = turned.image.shape[0]
        found = [
            f
            for f in self.detector.detect(np.repeat(turned.image[..., None], 3, axis=2))
            if f.landmarks
            and abs(f.x + f.width / 2 - size / 2) < size / 6
            and abs(f.y + f.height / 2 - size / 2) < size / 6
        ]
        return max(found, key=lambda f: f.area, default=None)

    def locate_faces(self, image: DecodedImage) -> LocatedFaces:
        """Detect the faces (unless the image is a face crop) and cut their 48x48 crops."""
        faces: list[FaceBox] = []
        reason = None
        if self._is_face_crop(image):
            reason = "image_is_face_crop"
        else:
            faces = self.detector.detect(image.rgb)
            faces = sorted(faces, key=lambda f: f.area, reverse=True)[: self.options.max_faces]
            if not faces:
                reason = "no_face_found"
        crops = [image.gray]
        if faces:
            cropped = [self.face_crop(image.gray, face) for face in faces]
            faces, crops = [face for face, _ in cropped], [crop for _, crop in cropped]
        full_width, full_height = image.file_size
        if (full_width, full_height) != (image.width, image.height):
            # Decoded at reduced size: report the boxes in the file's upright pixels.
            sx, sy = full_width / image.width, full_height / image.height
            faces = [face.scaled(sx, sy) for face in faces]
        return LocatedFaces(
            faces=faces,
            crops=[resize_to_input(crop) for crop in crops],
            whole_image_reason=reason,
            image_width=full_width,
            image_height=full_height,
        )

    @staticmethod
    def assemble(located: LocatedFaces, vectors: np.ndarray) -> InferenceResult:
        """A located image and its crops' probabilities -> the result (largest face on top)."""
        if not located.faces:
            (vector,) = vectors
            return InferenceResult(
                classification=Classification.from_vector(vector),
                faces=[],
                face_detected=False,
                whole_image_reason=located.whole_image_reason,
                image_width=located.image_width,
                image_height=located.image_height,
            )
        results = [
            FaceResult(box=face, classification=Classification.from_vector(vector))
            for face, vector in zip(located.faces, vectors, strict=True)
        ]
        return InferenceResult(
            classification=results[0].classification,  # the largest face
            faces=results,
            face_detected=True,
            whole_image_reason=None,
            image_width=located.image_width,
            image_height=located.image_height,
        )
