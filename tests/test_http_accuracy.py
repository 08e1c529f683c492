"""scripts/model/http_accuracy.py: a split scored through a real server's POST /inference."""

from __future__ import annotations

import importlib.util
import io
import json

import numpy as np
import pytest
from conftest import BUNDLED_MODEL, ROOT, GunicornServer
from PIL import Image

from emotion_server.config import bundled_model
from emotion_server.contract import EMOTIONS
from emotion_server.training.data import encoded_files, find_dataset

pytestmark = pytest.mark.e2e


def load_script():
    path = ROOT / "scripts" / "model" / "http_accuracy.py"
    spec = importlib.util.spec_from_file_location("http_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_dataset(folder):
    """A Kaggle-layout folder: two PrivateTest JPEGs per class, one Training and one PublicTest
    file that the scoring must leave out."""
    rng = np.random.default_rng(11)
    for index, emotion in enumerate(EMOTIONS):
        (folder / "test" / emotion).mkdir(parents=True)
        (folder / "train" / emotion).mkdir(parents=True)
        for copy in range(2):
            pixels = rng.integers(0, 256, (48, 48), dtype=np.uint8)
            Image.fromarray(pixels).save(
                folder / "test" / emotion / f"PrivateTest_{index}{copy}.jpg", quality=90
            )
    Image.new("L", (48, 48), 90).save(folder / "train" / "happy" / "Training_1.jpg")
    Image.new("L", (48, 48), 90).save(folder / "test" / "sad" / "PublicTest_1.jpg")
    return folder


def test_synthetic_split_scored_from_the_servers_answers(server, app, tmp_path):
    """Each file's prediction is the server's for those bytes, the accuracy is computed from
    them, and a model that cannot reach the card's accuracy on noise is reported (exit 1)."""
    from emotion_server.api.state import state_of

    data = synthetic_dataset(tmp_path / "fer")
    files = encoded_files("PrivateTest", data)
    assert len(files) == 14 and all(name.startswith("PrivateTest_") for name, _, _ in files)
    out = tmp_path / "figures.json"
    status = load_script().main([server.url, "--data", str(data), "--json", str(out)])
    figures = json.loads(out.read_text())
    pipeline = state_of(app).pipeline
    expected = {name: pipeline.analyze(raw).classification.prediction for name, _, raw in files}
    assert figures["predictions"] == expected
    hits = [expected[name] == EMOTIONS[label] for name, label, _ in files]
    assert figures["accuracy"] == pytest.approx(np.mean(hits), abs=1e-4)
    assert figures["images"] == 14 and figures["failures"] == 0
    assert (
        figures["model"]["accuracy"]
        == json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())["accuracy"]
    )
    assert figures["summary_agrees"] is False
    assert status == 1


def test_csv_rows_are_sent_as_lossless_png(tmp_path):
    pixels = np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) % 251
    csv = tmp_path / "fer2013.csv"
    rows = [("3", "Training"), ("5", "PrivateTest"), ("0", "PrivateTest")]
    csv.write_text(
        "emotion,pixels,Usage\n"
        + "".join(
            f"{label},{' '.join(map(str, pixels.ravel()))},{usage}\n" for label, usage in rows
        )
    )
    files = encoded_files("PrivateTest", csv)
    assert [(name, label) for name, label, _ in files] == [("row1", 5), ("row2", 0)]
    decoded = np.asarray(Image.open(io.BytesIO(files[0][2])))
    assert np.array_equal(decoded, pixels.astype(np.uint8))
    with pytest.raises(ValueError, match="unknown split"):
        encoded_files("Validation", csv)


@pytest.mark.dataset
def test_private_test_through_http_agrees_with_the_card(server, tmp_path):
    """All of PrivateTest through the served model over HTTP: the accuracy /summary states."""
    location = find_dataset()
    if location is None:
        pytest.skip("FER2013 not found in ../shared/data and $FER2013_PATH is unset")
    out = tmp_path / "figures.json"
    status = load_script().main([server.url, "--json", str(out)])
    figures = json.loads(out.read_text())
    print(f"PrivateTest through HTTP: {figures['accuracy']} (card {figures['model']['accuracy']})")
    assert figures["images"] == 3589 and figures["failures"] == 0
    assert figures["accuracy"] == pytest.approx(figures["model"]["accuracy"], abs=1e-4)
    assert figures["summary_agrees"] is True
    assert status == 0


@pytest.mark.dataset
def test_accurate_mode_through_http_agrees_with_its_card(tmp_path):
    """`EMOTION_MODE=accurate` serves the second bundled model: all of PrivateTest through it
    over HTTP scores what its card (and so /summary) states, above the default model."""
    accurate = ROOT / bundled_model("accurate")  # an absolute path stays as it is
    if not accurate.exists():
        pytest.skip(f"no accurate model ships ({accurate} is absent)")
    if find_dataset() is None:
        pytest.skip("FER2013 not found in ../shared/data and $FER2013_PATH is unset")
    running = GunicornServer(env={"EMOTION_MODE": "accurate", "EMOTION_MODEL_PATH": None})
    try:
        out = tmp_path / "figures.json"
        status = load_script().main([running.url, "--json", str(out)])
    finally:
        running.stop()
    figures = json.loads(out.read_text())
    card = json.loads(accurate.with_suffix(".json").read_text())
    default = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    print(f"accurate mode through HTTP: {figures['accuracy']} (card {card['accuracy']})")
    assert figures["images"] == 3589 and figures["failures"] == 0
    assert figures["model"]["accuracy"] == card["accuracy"]
    assert figures["accuracy"] == pytest.approx(card["accuracy"], abs=1e-4)
    assert figures["accuracy"] > default["accuracy"]
    assert status == 0


def test_api_key_is_sent_and_a_refusal_is_reported(tmp_path, capsys):
    """A server that needs a key: without one the script stops at /summary (exit 2); with it
    every image is answered."""
    from conftest import GunicornServer

    data = synthetic_dataset(tmp_path / "fer")
    keyed = GunicornServer(env={"EMOTION_API_KEYS": "secret-key"})
    try:
        script = load_script()
        assert script.main([keyed.url, "--data", str(data)]) == 2
        assert "GET /summary: HTTP 401" in capsys.readouterr().err
        out = tmp_path / "figures.json"
        script.main([keyed.url, "--data", str(data), "--api-key", "secret-key", "--json", str(out)])
        figures = json.loads(out.read_text())
        assert figures["images"] == 14 and figures["failures"] == 0
    finally:
        keyed.stop()
