import json
import re

import numpy as np
import onnx
import pytest
from conftest import BUNDLED_MODEL
from onnx import TensorProto, helper

from emotion_server.errors import ModelLoadError
from emotion_server.model import EmotionModel


@pytest.fixture(scope="module")
def model():
    return EmotionModel(BUNDLED_MODEL)


def _identity_like_onnx(path, in_shape, out_shape):
    """A minimal ONNX graph: flatten then a fixed matrix, softmax; shapes as asked."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    features = int(np.prod(in_shape[1:]))
    classes = out_shape[-1]
    weights = helper.make_tensor(
        "w",
        TensorProto.FLOAT,
        [features, classes],
        np.linspace(-1, 1, features * classes).astype(np.float32),
    )
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_bundled_model_gives_probabilities(model):
    batch = np.random.default_rng(0).random((5, 48, 48, 1), dtype=np.float32)
    probabilities = model.predict(batch)
    assert probabilities.shape == (5, 7)
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert (probabilities >= 0).all()
    assert np.ptp(probabilities, axis=0).max() > 1e-3  # each picture its own answer
    # Batched and one-by-one agree: no state leaks between rows.
    single = np.concatenate([model.predict(batch[i : i + 1]) for i in range(5)])
    assert np.abs(single - probabilities).max() < 1e-5


def test_empty_batch(model):
    assert model.predict(np.zeros((0, 48, 48, 1), np.float32)).shape == (0, 7)


def _calls(threads: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("emotion_model_calls_total", {"threads": threads}) or 0.0


def test_lone_calls_run_on_the_idle_threads_with_the_same_probabilities():
    """idle() true: the call runs on the session with `idle_threads` threads (counted as such);
    false: on the worker's own; both give the same probabilities."""
    alone = [True]
    model = EmotionModel(BUNDLED_MODEL, threads=1, idle_threads=2, idle=lambda: alone[0])
    batch = np.random.default_rng(3).random((5, 48, 48, 1), dtype=np.float32)
    before = {t: _calls(t) for t in ("idle", "worker")}
    lone = model.predict(batch)
    alone[0] = False
    shared = model.predict(batch)
    assert _calls("idle") - before["idle"] == 1
    assert _calls("worker") - before["worker"] == 1
    np.testing.assert_allclose(lone, shared, atol=1e-5)
    assert (lone.argmax(1) == shared.argmax(1)).all()


def test_no_idle_session_where_it_would_not_add_threads():
    assert EmotionModel(BUNDLED_MODEL, threads=2, idle_threads=2, idle=bool).idle_session is None
    assert EmotionModel(BUNDLED_MODEL, threads=1, idle_threads=2).idle_session is None  # no idle()
    assert EmotionModel(BUNDLED_MODEL, threads=1, idle_threads=2, idle=bool).idle_session


def test_bundled_model_has_a_card(model):
    info = model.info()
    assert info.input_shape == [1, 48, 48, 1] and info.output_shape == [1, 7]
    assert info.classes == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    card = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    assert info.accuracy == card["accuracy"] and info.created_at == card["created_at"]


def test_user_model_without_card_reports_nulls(tmp_path):
    path = tmp_path / "mine.onnx"
    _identity_like_onnx(path, ["N", 48, 48, 1], ["N", 7])
    info = EmotionModel(path).info()
    assert info.name == "mine" and info.precision == "float32"
    assert info.accuracy is None and info.version is None and info.dataset is None
    assert info.created_at is None


def test_a_card_of_the_wrong_shape_stops_the_model_loading_clearly(tmp_path):
    """A hand-written card beside a user's model is checked where it is read: one that is not
    an object, or a field /summary reports of the wrong JSON type, fails the load (and so the
    start) with the field's name, instead of a 500 on every /summary later."""
    path = tmp_path / "mine.onnx"
    _identity_like_onnx(path, ["N", 48, 48, 1], ["N", 7])
    card = path.with_suffix(".json")
    card.write_text(json.dumps({"version": "2", "accuracy": 0.7, "training": {"views": "flip"}}))
    assert EmotionModel(path).info().version == "2"
    for wrong, field in (
        ({"version": 2}, "version"),
        ({"accuracy": "69%"}, "accuracy"),
        ({"accuracy": True}, "accuracy"),
        ({"metrics": []}, "metrics"),
        ({"training": {"views": ["flip"]}}, "training.views"),
    ):
        card.write_text(json.dumps(wrong))
        with pytest.raises(ModelLoadError, match=rf"wrong type of {re.escape(field)} \(should"):
            EmotionModel(path)
    card.write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        EmotionModel(path)


def test_fixed_batch_model_is_fed_one_at_a_time(tmp_path):
    path = tmp_path / "fixed.onnx"
    _identity_like_onnx(path, [1, 48, 48, 1], [1, 7])
    model = EmotionModel(path)
    batch = np.random.default_rng(1).random((3, 48, 48, 1), dtype=np.float32)
    out = model.predict(batch)
    # Each row its own answer, as the graph computes it: flatten, the matrix, softmax.
    weights = np.linspace(-1, 1, 48 * 48 * 7).astype(np.float32).reshape(48 * 48, 7)
    logits = batch.reshape(3, -1).astype(np.float64) @ weights
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-4)  # float32 sums of 2,304 terms
    assert np.ptp(out, axis=0).max() > 1e-3


def test_wrong_shape_model_is_refused(tmp_path):
    path = tmp_path / "wrong.onnx"
    _identity_like_onnx(path, ["N", 64, 64, 3], ["N", 7])
    with pytest.raises(ModelLoadError, match=r"\[N,48,48,1\]"):
        EmotionModel(path)


def test_missing_corrupt_and_keras_files_fail_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        EmotionModel(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        EmotionModel(corrupt)
    with pytest.raises(ModelLoadError, match="emotion-server export"):
        EmotionModel(tmp_path / "mine.h5")


def test_only_shipped_models_are_tracked_each_under_40_mb():
    """models/ holds the bundled models alone (each mode's .h5, or one .h5 per member of an
    ensemble that its card lists, float32 and INT8 ONNX and their cards), never an experiment's
    file, and no tracked model or weights file reaches 40 MB."""
    import json
    import subprocess

    from conftest import ROOT

    from emotion_server.config import MODES

    listed = subprocess.run(
        ["git", "ls-files", "-z", "models", "src/emotion_server/weights"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    files = [name for name in listed.stdout.split("\0") if name]
    assert "models/emotion_model.h5" in files and "models/emotion_model.int8.onnx" in files
    shipped = {
        f"models/{stem}{suffix}"
        for stem in MODES.values()
        for suffix in (".h5", ".onnx", ".json", ".int8.onnx", ".int8.json")
    }
    for name in shipped & set(files):  # an ensemble written one member per file (ensemble.py)
        if name.endswith(".json"):
            training = json.loads((ROOT / name).read_text()).get("training") or {}
            stem = name.removeprefix("models/").split(".")[0]
            parts = {f"models/{stem}.{part}.h5" for part in training.get("h5_parts") or []}
            # Its parts all ship (`recover` needs each), and no stale whole .h5 beside them.
            assert parts <= set(files), f"{name} lists parts not in git: {parts - set(files)}"
            if parts:
                assert f"models/{stem}.h5" not in files, f"{stem}.h5 beside its parts"
            # A served model ships its Keras form too, whole or in parts (`recover` reads it).
            assert f"models/{stem}.h5" in files or parts, f"{name}: no .h5 and no parts"
            shipped |= parts
    assert not {name for name in files if name.startswith("models/")} - shipped
    sizes = {name: (ROOT / name).stat().st_size for name in files}
    assert not {name: size for name, size in sizes.items() if size >= 40_000_000}
