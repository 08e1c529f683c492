"""One image through the house: decode, find faces, crop, classify, assemble the result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from emotion_server.batching import InFlight, MicroBatcher
from emotion_server.config import Settings
from emotion_server.contract import (
    EMOTIONS,
    INPUT_SIZE,
    apply_temperature,
    mirror_average,
    scale,
)
from emotion_server.errors import EmotionServerError
from emotion_server.faces import FaceBox, FaceDetector, make_detector
from emotion_server.imaging import DecodedImage, decode_image
from emotion_server.model import EmotionModel

# Square crops are taken a little wider than the detector's box: FER2013's faces include the
# whole head outline (brow to chin), the detector's boxes are tighter.
CROP_MARGIN = 1.15
TTA_MODES = ("none", "flip")


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int


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


@dataclass(frozen=True)
class FaceResult:
    box: Box
    score: float
    classification: Classification


@dataclass(frozen=True)
class InferenceResult:
    classification: Classification  # the largest face's, or the whole image's
    faces: list[FaceResult]
    face_detected: bool
    whole_image_reason: str | None  # why the whole image was classified, if it was
    image_width: int
    image_height: int


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


def square_crop(gray: np.ndarray, face: FaceBox, margin: float = CROP_MARGIN) -> np.ndarray:
    """A square around the face box, `margin` times its longer side; edges replicated."""
    side = max(1, int(round(max(face.width, face.height) * margin)))
    cx, cy = face.x + face.width / 2, face.y + face.height / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    height, width = gray.shape
    pad = max(0, -x0, -y0, x0 + side - width, y0 + side - height)
    if pad:
        gray = np.pad(gray, pad, mode="edge")
        x0, y0 = x0 + pad, y0 + pad
    return gray[y0 : y0 + side, x0 : x0 + side]


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

    def __init__(self, settings: Settings, model: EmotionModel, detector: FaceDetector):
        self.settings = settings
        self.model = model
        self.detector = detector
        tta = settings.tta
        if tta == "auto":
            tta = model.card.get("tta", "none")
        if tta not in TTA_MODES:
            raise ValueError(f"unknown test-time augmentation {tta!r}: use one of {TTA_MODES}")
        self.tta = tta
        # Fitted on PublicTest by `evaluate` and stored in the card; 1.0 leaves outputs as-is.
        self.temperature = float(model.card.get("temperature", 1.0))
        # Micro-batching pays only where one worker serves several requests at once (threads).
        self.in_flight = InFlight()
        self.batcher = (
            MicroBatcher(
                lambda rows: self.model.predict(rows),
                max_rows=settings.batch_max_size,
                max_wait_s=settings.batch_max_wait_ms / 1000,
                in_flight=self.in_flight,
            )
            if settings.worker_threads > 1 and settings.batch_max_wait_ms > 0
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        model = EmotionModel(settings.model_path, threads=settings.intra_op_threads)
        detector = make_detector(
            settings.detector,
            threshold=settings.detect_threshold,
            max_side=settings.detect_max_side,
            threads=settings.intra_op_threads,
        )
        return cls(settings, model, detector)

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
        limit = self.settings.crop_size_limit
        return image.width <= limit and image.height <= limit

    def analyze(self, data: bytes) -> InferenceResult:
        """Image bytes -> per-face emotions (or the whole image's, as the original service)."""
        with self.in_flight:
            image = self.decode(data)
            return self.analyze_image(image)

    def analyze_image(self, image: DecodedImage) -> InferenceResult:
        located = self.locate_faces(image)
        return self.assemble(located, self.classify_crops(located.crops))

    def analyze_batch(self, images: Sequence[bytes]) -> list[InferenceResult | EmotionServerError]:
        """Several images -> one result each, in order; the faces of all go through ONE model call.

        An image that cannot be decoded gets its error in its place; the others are unaffected.
        """
        located: list[LocatedFaces | EmotionServerError] = []
        for data in images:
            try:
                image = self.decode(data)
                located.append(self.locate_faces(image))
            except EmotionServerError as error:
                located.append(error)
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
        """Bytes -> image; big JPEGs are decoded at reduced size, near the detector's input."""
        return decode_image(
            data, max_pixels=self.settings.max_pixels, draft_side=self.settings.detect_max_side
        )

    def locate_faces(self, image: DecodedImage) -> LocatedFaces:
        """Detect the faces (unless the image is a face crop) and cut their 48x48 crops."""
        faces: list[FaceBox] = []
        reason = None
        if self._is_face_crop(image):
            reason = "image_is_face_crop"
        else:
            faces = self.detector.detect(image.rgb)
            faces = sorted(faces, key=lambda f: f.area, reverse=True)[: self.settings.max_faces]
            if not faces:
                reason = "no_face_found"
        crops = [square_crop(image.gray, face) for face in faces] if faces else [image.gray]
        full_width, full_height = image.full_width or image.width, image.full_height or image.height
        if (full_width, full_height) != (image.width, image.height):
            # Decoded at reduced size: report the boxes in the file's upright pixels.
            sx, sy = full_width / image.width, full_height / image.height
            faces = [
                FaceBox(
                    round(f.x * sx),
                    round(f.y * sy),
                    round(f.width * sx),
                    round(f.height * sy),
                    f.score,
                )
                for f in faces
            ]
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
            FaceResult(
                box=Box(face.x, face.y, face.width, face.height),
                score=face.score,
                classification=Classification.from_vector(vector),
            )
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
