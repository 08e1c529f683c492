"""Pipeline.analyze_batch: several images, one model call, the same answers as one by one."""

import numpy as np
import pytest
from conftest import BUNDLED_MODEL, encode

from emotion_server.config import Settings
from emotion_server.crops import square_crop, to_model_input
from emotion_server.errors import (
    CorruptImage,
    EmptyBody,
    InvalidImage,
    OutOfTime,
    UnreadableFile,
)
from emotion_server.model import EmotionModel
from emotion_server.pipeline import Pipeline


class CountingModel(EmotionModel):
    """The real bundled model, counting the rows of each predict() call."""

    def __init__(self, path):
        super().__init__(path)
        self.calls: list[int] = []

    def predict(self, batch):
        self.calls.append(len(batch))
        return super().predict(batch)


def _pipeline(**settings) -> Pipeline:
    base = Pipeline.from_settings(Settings(model_path=str(BUNDLED_MODEL), **settings))
    return Pipeline(CountingModel(BUNDLED_MODEL), base.detector, base.options)


@pytest.fixture(scope="module")
def pipeline():
    return _pipeline(tta="none")


def _same(batched, single):
    assert len(batched.faces) == len(single.faces)
    assert [f.box for f in batched.faces] == [f.box for f in single.faces]
    assert batched.whole_image_reason == single.whole_image_reason
    assert (batched.image_width, batched.image_height) == (single.image_width, single.image_height)
    pairs = [(batched.classification, single.classification)] + [
        (b.classification, s.classification)
        for b, s in zip(batched.faces, single.faces, strict=True)
    ]
    for b, s in pairs:
        assert b.prediction == s.prediction
        assert b.probabilities == pytest.approx(s.probabilities, abs=1e-5)


def test_batch_matches_one_by_one_with_one_model_call(pipeline, astronaut):
    gray = np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
    images = [
        encode(astronaut, "JPEG"),
        encode(gray, "PNG"),
        b"not an image",
        encode(np.full((300, 300), 90, np.uint8), "PNG"),
        encode(astronaut, "JPEG")[:4000],
        b"",
    ]
    pipeline.model.calls.clear()
    results = pipeline.analyze_batch(images)
    assert pipeline.model.calls == [3]  # astronaut's face, the crop, the no-face image
    assert isinstance(results[2], InvalidImage)
    assert isinstance(results[4], CorruptImage)
    assert isinstance(results[5], EmptyBody)
    for index in (0, 1, 3):
        _same(results[index], pipeline.analyze(images[index]))
    assert results[0].face_detected and results[1].whole_image_reason == "image_is_face_crop"
    assert results[3].whole_image_reason == "no_face_found"


def test_items_that_failed_before_keep_their_place(pipeline, astronaut):
    """A caller's own failures (an unreadable file, one over a limit) pass through in place."""
    unreadable = UnreadableFile("missing.jpg: No such file or directory")
    images = [encode(astronaut, "JPEG"), unreadable, encode(astronaut, "PNG")]
    pipeline.model.calls.clear()
    results = pipeline.analyze_batch(images)
    assert pipeline.model.calls == [2]
    assert results[1] is unreadable
    _same(results[0], pipeline.analyze(images[0]))
    _same(results[2], pipeline.analyze(images[2]))


def test_images_not_begun_within_the_time_budget_are_left_unread(pipeline, astronaut):
    """A budget already spent: the first image is still analysed, the others get an OutOfTime
    error in their place, and a caller's own failure keeps its own."""
    unreadable = UnreadableFile("missing.jpg: No such file or directory")
    images = [unreadable, encode(astronaut, "JPEG"), b"not an image", encode(astronaut, "PNG")]
    pipeline.model.calls.clear()
    results = pipeline.analyze_batch(images, time_budget_s=0.0)
    assert pipeline.model.calls == [1]  # the first image's one face, nothing of the others
    assert results[0] is unreadable
    _same(results[1], pipeline.analyze(images[1]))
    for late in results[2:]:
        assert isinstance(late, OutOfTime) and late.code == "time_budget_exceeded"
        assert "the 1 before it" in late.message and "of the 0 s" in late.message
    # Time enough: all are analysed.
    results = pipeline.analyze_batch(images, time_budget_s=60.0)
    assert isinstance(results[2], InvalidImage)
    _same(results[3], pipeline.analyze(images[3]))


def test_flip_tta_batch_is_still_one_call(astronaut):
    pipeline = _pipeline(tta="flip")
    images = [encode(astronaut, "PNG"), encode(np.zeros((40, 40), np.uint8), "PNG")]
    pipeline.model.calls.clear()
    results = pipeline.analyze_batch(images)
    assert pipeline.model.calls == [4]  # two crops and their mirror images
    for result, data in zip(results, images, strict=True):
        _same(result, pipeline.analyze(data))


def test_crops_are_kept_at_model_size(pipeline, astronaut):
    from emotion_server.imaging import decode_image

    image = decode_image(encode(astronaut, "PNG"))
    located = pipeline.locate_faces(image)
    assert [crop.shape for crop in located.crops] == [(48, 48)]
    # Resizing early changes nothing: the model input is the one the full-size crop gives.
    full = square_crop(image.gray, located.faces[0])
    assert full.shape[0] > 48
    assert np.array_equal(to_model_input(located.crops), to_model_input([full]))


def test_empty_batch(pipeline):
    assert pipeline.analyze_batch([]) == []
