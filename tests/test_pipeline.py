from dataclasses import replace

import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, BUNDLED_MODEL, ROOT, encode
from PIL import Image

from emotion_server.config import Settings
from emotion_server.contract import EMOTIONS
from emotion_server.crops import (
    CROP_MARGIN,
    resize_to_input,
    square_crop,
    to_model_input,
    turn_upright,
)
from emotion_server.faces import FaceBox, Landmark
from emotion_server.pipeline import Pipeline, PipelineOptions


@pytest.fixture(scope="module")
def pipeline():
    return Pipeline.from_settings(Settings(model_path=str(BUNDLED_MODEL)))


def test_square_crop_is_square_and_centred():
    gray = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100).astype(np.uint8)
    crop = square_crop(gray, FaceBox(40, 30, 20, 40, 0.9), margin=1.0)
    assert crop.shape == (40, 40)
    assert np.array_equal(crop, gray[30:70, 30:70])


def test_square_crop_pads_at_the_edges():
    gray = np.full((50, 50), 7, np.uint8)
    crop = square_crop(gray, FaceBox(0, 0, 30, 30, 0.9), margin=1.5)
    assert crop.shape == (45, 45) and (crop == 7).all()


@pytest.mark.parametrize(
    "box",
    [(0, 0, 30, 30), (180, 90, 40, 30), (-5, 100, 60, 20), (150, -20, 70, 70), (10, 10, 300, 200)],
    ids=["top-left", "bottom-right", "left", "top", "larger-than-the-image"],
)
def test_square_crop_over_an_edge_replicates_it_and_holds_only_the_crop(box):
    gray = np.random.default_rng(1).integers(0, 256, (120, 200), dtype=np.uint8)
    face = FaceBox(*box, 0.9)
    crop = square_crop(gray, face)
    # The reference: the whole image edge-padded, then cut (what a crop over an edge means).
    side = crop.shape[0]
    x0 = int(round(face.x + face.width / 2 - side / 2))
    y0 = int(round(face.y + face.height / 2 - side / 2))
    pad = side + 1
    reference = np.pad(gray, pad, mode="edge")[
        y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side
    ]
    assert crop.shape == (side, side) and np.array_equal(crop, reference)
    # A face on the edge of a 40 MP photo must not keep a padded copy of the photo alive.
    owner = crop if crop.base is None else crop.base
    assert owner.size == side * side


def test_to_model_input_scales_and_resizes():
    batch = to_model_input([np.full((48, 48), 255, np.uint8), np.zeros((100, 80), np.uint8)])
    assert batch.shape == (2, 48, 48, 1) and batch.dtype == np.float32
    assert batch[0].min() == 1.0 and batch[1].max() == 0.0


def test_face_crop_is_classified_whole(pipeline):
    gray = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    result = pipeline.analyze(encode(gray, "PNG"))
    assert not result.face_detected and result.faces == []
    assert result.whole_image_reason == "image_is_face_crop"
    expected = pipeline.classify_crops([gray])[0]
    assert result.classification.prediction == EMOTIONS[int(expected.argmax())]
    assert result.classification.probabilities["happy"] == pytest.approx(expected[3], abs=1e-6)


def test_no_face_found_classifies_whole_image(pipeline):
    """No face in a 300x200 picture: the whole picture, squeezed to 48x48, is what is read."""
    ramp = np.linspace(0, 255, 300, dtype=np.float32)
    gray = (ramp[None, :] * np.linspace(0.2, 1.0, 200)[:, None]).astype(np.uint8)
    gray[60:140, 100:200] = 255 - gray[60:140, 100:200]
    result = pipeline.analyze(encode(gray, "PNG"))
    assert not result.face_detected and result.whole_image_reason == "no_face_found"
    expected = pipeline.classify_crops([resize_to_input(gray)])[0]
    probabilities = result.classification.probabilities
    assert [probabilities[name] for name in EMOTIONS] == pytest.approx(expected, abs=1e-5)
    # Not what its centre square alone gives.
    centre = pipeline.classify_crops([resize_to_input(gray[:, 50:250])])[0]
    assert np.abs(centre - expected).max() > 1e-3


def test_astronaut_face_is_found_and_classified(pipeline, astronaut):
    result = pipeline.analyze(encode(astronaut, "JPEG"))
    assert result.face_detected and len(result.faces) == 1
    face = result.faces[0]
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert x1 <= face.box.x and face.box.x + face.box.width <= x2
    assert y1 <= face.box.y and face.box.y + face.box.height <= y2
    assert result.classification == face.classification
    assert (result.image_width, result.image_height) == (512, 512)


def test_largest_face_is_the_top_level_answer(pipeline, astronaut):
    from PIL import Image

    canvas = np.full((600, 900, 3), 120, np.uint8)
    face = Image.fromarray(astronaut).crop((150, 20, 300, 220))
    canvas[50:450, 50:350] = np.asarray(face.resize((300, 400)))
    canvas[300:400, 600:675] = np.asarray(face.resize((75, 100)))
    result = pipeline.analyze(encode(canvas, "PNG"))
    assert len(result.faces) == 2
    assert result.faces[0].box.width > result.faces[1].box.width
    assert result.classification == result.faces[0].classification


def test_flip_tta_averages_both_views():
    settings = Settings(model_path=str(BUNDLED_MODEL), tta="flip", detector="none")
    pipeline = Pipeline.from_settings(settings)
    pipeline.temperature = 1.0  # calibration is tested on its own below
    gray = np.random.default_rng(2).integers(0, 256, (48, 48), dtype=np.uint8)
    batch = to_model_input([gray])
    plain = pipeline.model.predict(batch)[0]
    flipped = pipeline.model.predict(batch[:, :, ::-1])[0]
    assert np.allclose(pipeline.classify_crops([gray])[0], (plain + flipped) / 2, atol=1e-6)


def test_unknown_tta_is_refused():
    with pytest.raises(ValueError):
        Pipeline.from_settings(Settings(model_path=str(BUNDLED_MODEL), tta="tencrop"))


def test_temperature_scaling_keeps_the_ranking_and_softens():
    from emotion_server.contract import apply_temperature

    probabilities = np.array([[0.7, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03]], np.float32)
    softer = apply_temperature(probabilities, 2.0)
    assert softer.argmax() == 0 and softer.max() < 0.7
    assert softer.sum() == pytest.approx(1, abs=1e-6)
    # T = 2 is the square root of each probability, renormalised.
    root = np.sqrt(probabilities)
    assert np.allclose(softer, root / root.sum(), atol=1e-6)
    assert apply_temperature(probabilities, 1.0) is probabilities


def test_evaluate_fits_a_temperature_that_lowers_nll():
    from emotion_server.training.evaluate import fit_temperature

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 2000)
    # Over-confident outputs: 95% on a class that is right only 60% of the time.
    guess = np.where(rng.random(2000) < 0.6, labels, (labels + 1) % 7)
    probabilities = np.full((2000, 7), 0.05 / 6, np.float32)
    probabilities[np.arange(2000), guess] = 0.95
    assert fit_temperature(probabilities, labels) > 1.5


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_boxes_of_a_reduced_picture_are_in_the_files_pixels(pipeline, astronaut, fmt):
    """A large JPEG is decoded at reduced size (draft mode), a large PNG reduced after decoding
    by the same factor: the face's box is in the file's pixels, its emotion the same."""
    from PIL import Image

    big = np.asarray(Image.fromarray(astronaut).resize((3072, 3072)))
    result = pipeline.analyze(encode(big, fmt, **({"quality": 90} if fmt == "JPEG" else {})))
    assert (result.image_width, result.image_height) == (3072, 3072)
    (face,) = result.faces
    x1, y1, x2, y2 = (6 * v for v in ASTRONAUT_FACE)
    assert x1 <= face.box.x and face.box.x + face.box.width <= x2
    assert y1 <= face.box.y and face.box.y + face.box.height <= y2
    # Same emotion as the photo at its own size (the crop is taken at a similar resolution).
    assert (
        result.classification.prediction
        == pipeline.analyze(encode(astronaut)).classification.prediction
    )


def test_calibration_from_the_card_is_applied_after_tta():
    from emotion_server.contract import apply_temperature

    settings = Settings(model_path=str(BUNDLED_MODEL), tta="flip", detector="none")
    pipeline = Pipeline.from_settings(settings)
    gray = np.random.default_rng(3).integers(0, 256, (48, 48), dtype=np.uint8)
    batch = to_model_input([gray])
    mean = (pipeline.model.predict(batch) + pipeline.model.predict(batch[:, :, ::-1])) / 2
    pipeline.temperature = 0.5
    assert np.allclose(pipeline.classify_crops([gray]), apply_temperature(mean, 0.5), atol=1e-6)


def _pattern() -> tuple[np.ndarray, FaceBox]:
    """A grey picture with a lopsided 'face' (a bar off-centre above a blob), and its box."""
    gray = np.full((400, 400), 60, np.uint8)
    gray[150:170, 140:220] = 250
    gray[230:250, 180:200] = 180
    return gray, FaceBox(140, 130, 120, 140, 0.9)


@pytest.mark.parametrize("turn", [30, -60, 90, 170])
def test_a_face_turned_by_its_roll_comes_out_as_the_upright_face(turn):
    gray, face = _pattern()
    upright = resize_to_input(square_crop(gray, face))
    # The picture turned clockwise (as seen) by `turn` about the box's centre.
    centre = (face.x + face.width / 2, face.y + face.height / 2)
    tilted = np.asarray(
        Image.fromarray(gray).rotate(-turn, center=centre, resample=Image.Resampling.BILINEAR)
    )
    back = turn_upright(tilted, face, turn).crop(max(face.width, face.height) * CROP_MARGIN)
    assert back.shape == (48, 48) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - upright).mean() < 2
    # Without the turn the crop is another picture (what a broken turn would give).
    assert np.abs(resize_to_input(square_crop(tilted, face)).astype(int) - upright).mean() > 10


def test_points_of_the_turned_square_map_back_to_the_picture():
    gray, face = _pattern()
    turned = turn_upright(gray, face, 90)
    # The bar's middle, upright in the turned square, is (180, 160) in the picture.
    size = turned.image.shape[0]
    bright = np.argwhere(turned.image > 200)
    y, x = bright.mean(axis=0)
    assert turned.to_picture(x, y) == pytest.approx((180, 160), abs=2)
    # The square's middle is the box's centre; the turned square's is upright.
    assert turned.to_picture(size / 2, size / 2) == pytest.approx((200, 200), abs=1)


@pytest.mark.parametrize("box", [(-30, -20, 80, 90), (350, 330, 80, 90), (0, 0, 400, 400)])
def test_a_tilted_face_over_the_edge_is_cut_with_the_edge_replicated(box):
    gray = np.full((400, 400), 90, np.uint8)
    face = FaceBox(*box, 0.9)
    crop = turn_upright(gray, face, 40).crop(max(face.width, face.height) * CROP_MARGIN)
    assert crop.shape == (48, 48) and (crop == 90).all()


def _turned_photo(turn: float) -> bytes:
    """The bundled sample photo turned clockwise by `turn` degrees, as a PNG."""
    photo = Image.open(ROOT / "samples" / "astronaut.jpg")
    return encode(np.asarray(photo.rotate(-turn, expand=True)), "PNG")


@pytest.fixture(scope="module")
def never_turning(pipeline):
    return Pipeline(pipeline.model, pipeline.detector, PipelineOptions(align_roll=180))


@pytest.mark.parametrize("turn", [40, 90, -90])
def test_a_tilted_face_is_read_upright(pipeline, never_turning, turn):
    upright = pipeline.analyze(_turned_photo(0))
    tilted = pipeline.analyze(_turned_photo(turn))
    (face,) = tilted.faces
    # The second look puts the roll near the turn (plus the astronaut's own slight tilt).
    error = (face.box.roll - upright.faces[0].box.roll - turn + 180) % 360 - 180
    assert abs(error) < 8
    # Its points, mapped back from the turned square, still lie in the face's box.
    for point in face.box.landmarks:
        assert face.box.x - 2 <= point.x <= face.box.x + face.box.width + 2
        assert face.box.y - 2 <= point.y <= face.box.y + face.box.height + 2
    # The model sees about the upright face's crop, not the tilted one's.
    image = pipeline.decode(_turned_photo(turn))
    (crop,) = pipeline.locate_faces(image).crops
    (unturned,) = never_turning.locate_faces(image).crops
    (wanted,) = pipeline.locate_faces(pipeline.decode(_turned_photo(0))).crops
    assert (
        np.abs(crop - wanted.astype(int)).mean()
        < 0.5 * np.abs(unturned - wanted.astype(int)).mean()
    )
    # So it gets the upright face's answer, which a face on its side left as it is does not:
    # its probabilities move several times further (the VGG-64 default still reads the face
    # turned one way as happy, 0.76 against 0.87, and the other way as neutral).
    assert face.classification.prediction == upright.classification.prediction == "happy"
    wanted_answer = upright.classification.probabilities
    happy = wanted_answer["happy"]
    assert face.classification.probabilities["happy"] == pytest.approx(happy, abs=0.08)

    def moved(probabilities: dict) -> float:  # L1 distance from the upright face's answer
        return sum(abs(probabilities[name] - wanted_answer[name]) for name in wanted_answer)

    if abs(turn) == 90:
        left = never_turning.analyze(_turned_photo(turn)).classification.probabilities
        assert moved(left) > max(0.15, 5 * moved(face.classification.probabilities))


def test_a_face_tilted_less_than_the_setting_is_cut_as_before(pipeline, never_turning):
    """The astronaut's own tilt (about 5 degrees) is under EMOTION_ALIGN_ROLL's 10."""
    image = pipeline.decode(_turned_photo(0))
    located = pipeline.locate_faces(image)
    assert 3 < abs(located.faces[0].roll) < Settings().align_roll
    assert all(
        np.array_equal(a, b)
        for a, b in zip(located.crops, never_turning.locate_faces(image).crops, strict=True)
    )


def test_a_large_face_in_a_large_picture_is_turned_from_a_reduced_square():
    """A 2,400-pixel face (in a picture analysed at full size) is cut at every few pixels before
    turning, so the work does not grow with its area; the crop is the same face."""
    small, face = _pattern()
    gray = np.asarray(Image.fromarray(small).resize((3000, 3000), Image.Resampling.NEAREST))
    big = FaceBox(face.x * 7.5, face.y * 7.5, face.width * 7.5, face.height * 7.5, 0.9)
    upright = resize_to_input(square_crop(gray, big))
    centre = (big.x + big.width / 2, big.y + big.height / 2)
    tilted = np.asarray(Image.fromarray(gray).rotate(-35, center=centre))
    turned = turn_upright(tilted, big, 35)
    assert turned.image.shape == (192, 192)
    crop = turned.crop(max(big.width, big.height) * CROP_MARGIN)
    assert np.abs(crop.astype(int) - upright).mean() < 3
    assert turned.to_picture(96, 96) == pytest.approx(centre, abs=8)


def test_a_face_whose_eyes_nearly_meet_is_not_turned_unless_the_second_look_confirms(pipeline):
    """Seen from the side, the eyes' line says nothing of the tilt: where the second look
    finds no face in the turned square (here: no face at all), no turn, whatever roll."""
    gray, face = _pattern()
    side_view = FaceBox(
        *(face.x, face.y, face.width, face.height, 0.9),
        landmarks=(Landmark("eye_left", 200.0, 170.0), Landmark("eye_right", 203.0, 178.0)),
    )
    assert side_view.roll > 60
    seen, crop = pipeline.face_crop(gray, side_view)
    assert seen == side_view and np.array_equal(crop, square_crop(gray, side_view))
    # The same roll from eyes a third of the face apart is turned.
    front = replace(
        side_view,
        landmarks=(Landmark("eye_left", 180.0, 150.0), Landmark("eye_right", 196.0, 192.0)),
    )
    assert front.roll > 60
    crop = pipeline.face_crop(gray, front)[1]
    side = max(front.width, front.height) * CROP_MARGIN
    assert np.array_equal(crop, turn_upright(gray, front, front.roll).crop(side))
    # and turning changed what the model sees
    assert np.abs(crop.astype(int) - resize_to_input(square_crop(gray, front))).mean() > 10
