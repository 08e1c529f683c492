import numpy as np
import pytest
from conftest import ASTRONAUT_FACE
from PIL import Image

from emotion_server.errors import ModelLoadError
from emotion_server.faces import CenterFaceDetector, NoDetector, _nms, make_detector


@pytest.fixture(scope="module")
def detector():
    return CenterFaceDetector()


def _overlap(box, region) -> float:
    """Share of `box` (a FaceBox) that lies inside `region` (x1, y1, x2, y2)."""
    x1, y1 = max(box.x, region[0]), max(box.y, region[1])
    x2, y2 = min(box.x + box.width, region[2]), min(box.y + box.height, region[3])
    return max(0, x2 - x1) * max(0, y2 - y1) / box.area


def test_finds_the_astronaut_face(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.7
    assert _overlap(face, ASTRONAUT_FACE) > 0.9
    assert 60 < face.width < 140 and 80 < face.height < 170


def test_boxes_are_in_original_pixels_after_downscaling(astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048)))
    (face,) = CenterFaceDetector(max_side=512).detect(big)
    scaled = tuple(4 * v for v in ASTRONAUT_FACE)
    assert _overlap(face, scaled) > 0.9


def test_rotated_photo_face_is_found(detector, astronaut):
    rotated = np.asarray(Image.fromarray(astronaut).rotate(90, expand=True))
    (face,) = detector.detect(rotated)
    # Rotating 90 degrees anticlockwise maps (x, y) to (y, 512 - x).
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert _overlap(face, (y1, 512 - x2, y2, 512 - x1)) > 0.9


def test_small_face_in_large_image(detector, astronaut):
    canvas = np.full((1000, 1000, 3), 128, np.uint8)
    face = Image.fromarray(astronaut).crop((150, 20, 300, 220)).resize((45, 60))
    canvas[600:660, 300:345] = np.asarray(face)
    faces = detector.detect(canvas)
    assert len(faces) == 1
    assert _overlap(faces[0], (295, 595, 350, 665)) > 0.8


@pytest.mark.parametrize("shape", [(300, 400, 3), (1, 1, 3), (1, 2000, 3), (5000, 3, 3)])
def test_no_faces_in_blank_or_extreme_images(detector, shape):
    assert detector.detect(np.full(shape, 200, np.uint8)) == []


def test_nms_keeps_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=float)
    assert _nms(boxes, np.array([0.6, 0.9, 0.5]), 0.3) == [1, 2]


def test_make_detector():
    assert isinstance(make_detector("none"), NoDetector)
    assert make_detector("none").detect(np.zeros((10, 10, 3), np.uint8)) == []
    with pytest.raises(ModelLoadError):
        make_detector("nonsense")


def test_detector_hands_its_activation_memory_back_after_each_photo():
    """ONNX Runtime's arena would keep a 640x480 detection's activations resident for good;
    measured in fresh processes by the benchmark's own code (bench/detector_memory.py)."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "detector_memory", ROOT / "bench" / "detector_memory.py"
    )
    detector_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(detector_memory)
    served = detector_memory.measure("shrink", "glibc.malloc.hugetlb=1", runs=3)
    kept = detector_memory.measure("keep", "glibc.malloc.hugetlb=1", runs=3)
    assert served["rss_growth_mb"] < 70, served
    assert kept["rss_growth_mb"] > served["rss_growth_mb"] + 40, (kept, served)  # it can tell
