"""The training wing: data loading, a smoke training run, export parity, a user's own model."""

import csv
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import requests
from conftest import ROOT, GunicornServer, encode

from emotion_server.classes import EMOTIONS
from emotion_server.training.data import load_fer2013

keras = pytest.importorskip(
    "keras", reason="the [train] extra (Keras, TensorFlow) is not installed"
)
pytestmark = pytest.mark.train

# Kaggle folders sort alphabetically; labels must follow FER2013's order, by name.
FOLDERS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def _image(label: int, index: int) -> np.ndarray:
    """A 48x48 image whose mean brightness encodes its label, so a model can learn it."""
    rng = np.random.default_rng(label * 1000 + index)
    return np.clip(rng.normal(30 + 30 * label, 8, (48, 48)), 0, 255).astype(np.uint8)


def _write_kaggle_folder(root, per_class=6):
    for folder in FOLDERS:
        label = EMOTIONS.index(folder)
        for split, directory, count in (
            ("Training", "train", per_class),
            ("PublicTest", "test", 2),
            ("PrivateTest", "test", 2),
        ):
            target = root / directory / folder
            target.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (target / f"{split}_{label}{i:03d}.jpg").write_bytes(
                    encode(_image(label, i), "JPEG", quality=100)
                )


def test_kaggle_folder_labels_follow_fer_order(tmp_path):
    _write_kaggle_folder(tmp_path)
    data = load_fer2013(tmp_path)
    assert len(data["Training"].labels) == 42 and len(data["PrivateTest"].labels) == 14
    for image, label, name in zip(
        data["Training"].images, data["Training"].labels, data["Training"].names, strict=True
    ):
        assert name.startswith(f"Training_{label}")  # file named after its true label
        assert abs(image.mean() - (30 + 30 * label)) < 6


def test_tar_gz_and_csv_load_the_same(tmp_path):
    _write_kaggle_folder(tmp_path / "folder")
    archive = tmp_path / "fer.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "folder" / "train", arcname="train")
        tar.add(tmp_path / "folder" / "test", arcname="test")
    from_folder, from_tar = load_fer2013(tmp_path / "folder"), load_fer2013(archive)
    assert np.array_equal(from_folder["Training"].images, from_tar["Training"].images)
    assert from_tar.sha256 and len(from_tar.sha256) == 64

    csv_path = tmp_path / "fer2013.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for label in range(7):
            writer.writerow([label, " ".join(map(str, _image(label, 0).ravel())), "Training"])
            writer.writerow([label, " ".join(map(str, _image(label, 1).ravel())), "PrivateTest"])
            writer.writerow([label, " ".join(map(str, _image(label, 2).ravel())), "PublicTest"])
    from_csv = load_fer2013(csv_path)
    assert from_csv["Training"].labels.tolist() == list(range(7))
    assert np.array_equal(from_csv["Training"].images[3], _image(3, 0))


def test_export_matches_keras(tmp_path):
    from emotion_server.model import EmotionModel
    from emotion_server.training.architectures import vgg
    from emotion_server.training.export import export_onnx, sample_inputs

    model = vgg(width=8, dense=32)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    # Non-trivial BatchNorm statistics, so the export is checked on more than identity maps.
    model.fit(sample_inputs(32, seed=3), np.eye(7)[np.arange(32) % 7], epochs=1, verbose=0)
    path = tmp_path / "vgg8.h5"
    model.save(path)
    onnx_path = export_onnx(path)
    inputs = sample_inputs(16, seed=9)
    expected = np.asarray(model(inputs, training=False))
    got = EmotionModel(onnx_path).predict(inputs)
    assert np.abs(expected - got).max() <= 1e-4
    assert (expected.argmax(1) == got.argmax(1)).all()


def test_export_refuses_a_model_of_another_shape(tmp_path):
    from emotion_server.training.export import export_onnx

    inputs = keras.Input((64, 64, 3))
    outputs = keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs))
    path = tmp_path / "wrong.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="48,48,1"):
        export_onnx(path)


def test_smoke_training_run_then_evaluate(tmp_path):
    """`train` and `evaluate` end to end on a tiny synthetic FER2013 in the Kaggle layout."""
    _write_kaggle_folder(tmp_path / "fer", per_class=20)
    env = {**os.environ, "FER2013_PATH": str(tmp_path / "fer")}
    cli = [sys.executable, "-m", "emotion_server.cli"]
    out = tmp_path / "run"
    subprocess.run(
        [
            *cli,
            "train",
            "--config",
            str(ROOT / "configs" / "smoke.toml"),
            "--output",
            str(out),
            "--data",
            str(tmp_path / "fer"),
            "--epochs",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    info = json.loads((out / "train_info.json").read_text())
    assert info["recipe"]["epochs"] == 2 and 1 <= info["best_epoch"] <= 2
    assert (out / "emotion_model.h5").is_file()
    subprocess.run(
        [*cli, "export", str(out / "emotion_model.h5")],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = subprocess.run(
        [
            *cli,
            "evaluate",
            "--model",
            str(out / "emotion_model.onnx"),
            "--data",
            str(tmp_path / "fer"),
            "--train-info",
            str(out / "train_info.json"),
            "--plots",
            str(tmp_path / "plots"),
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    card = json.loads((out / "emotion_model.json").read_text())
    assert "confusion matrix" in result.stdout and "precision" in result.stdout
    matrix = np.array(card["metrics"]["PrivateTest"]["confusion_matrix"])
    assert matrix.sum() == 14
    assert card["accuracy"] == round(np.trace(matrix) / matrix.sum(), 4)
    assert card["training"]["best_epoch"] == info["best_epoch"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "emotion_model_confusion_matrix.png",
        "emotion_model_per_class.png",
        "emotion_model_reliability.png",
    ]


def test_users_own_h5_is_served_after_one_export(tmp_path):
    """A user's Keras .h5: `emotion-server export` once, then served; HTTP returns its output."""
    from emotion_server.training.architectures import tiny

    model = tiny()
    images = np.stack([_image(label, 0) for label in range(7)])[..., None] / 255.0
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(images, np.eye(7), epochs=3, verbose=0)
    path = tmp_path / "mine.h5"
    model.save(path)
    subprocess.run(
        [sys.executable, "-m", "emotion_server.cli", "export", str(path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    server = GunicornServer(
        env={"EMOTION_MODEL_PATH": str(tmp_path / "mine.onnx"), "EMOTION_TTA": "none"}
    )
    try:
        summary = requests.get(server.url + "/summary", timeout=10).json()
        assert summary["name"] == "mine" and summary["accuracy"] is None
        assert summary["created_at"] is None and summary["precision"] == "float32"
        for label in (0, 3, 6):
            body = requests.post(
                server.url + "/inference",
                data=encode(_image(label, 0), "PNG"),
                headers={"Content-Type": "application/octet-stream"},
                timeout=30,
            ).json()
            expected = np.asarray(model(images[label : label + 1]))[0]
            got = np.array([body["probabilities"][name] for name in EMOTIONS])
            assert np.abs(expected - got).max() <= 1e-4
    finally:
        server.stop()


def test_resnet18_and_vgg64_have_the_documented_sizes():
    from emotion_server.training.architectures import resnet, vgg

    assert abs(resnet().count_params() - 11.2e6) < 0.1e6  # ResNet-18, 3x3 stem
    assert vgg(width=64).output_shape == (None, 7)


def test_ensemble_exports_as_the_weighted_mean_of_its_members(tmp_path):
    from emotion_server.model import EmotionModel
    from emotion_server.training.architectures import ensemble, tiny
    from emotion_server.training.export import export_onnx, sample_inputs

    first, second = tiny(), tiny()
    combined = ensemble([first, second], weights=[3, 1])
    combined.save(tmp_path / "ens.keras")
    served = EmotionModel(export_onnx(tmp_path / "ens.keras"))
    inputs = sample_inputs(8)
    expected = 0.75 * np.asarray(first(inputs)) + 0.25 * np.asarray(second(inputs))
    assert np.abs(served.predict(inputs) - expected).max() <= 1e-5


def test_recipe_options_mixup_ema_and_distillation_train(tmp_path, monkeypatch):
    """The issue-3 recipe options run end to end on a tiny synthetic set."""
    from emotion_server.training.architectures import tiny
    from emotion_server.training.export import export_onnx
    from emotion_server.training.train import Batches, load_recipe, train

    _write_kaggle_folder(tmp_path / "fer", per_class=10)
    teacher = tiny()
    teacher.save(tmp_path / "teacher.keras")
    teacher_onnx = export_onnx(tmp_path / "teacher.keras")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(ROOT / "configs" / "smoke.toml", epochs=2)
    recipe.mixup, recipe.ema, recipe.teacher = 0.4, True, str(teacher_onnx)
    recipe.augment_impl, recipe.erasing, recipe.precision = "affine", 0.5, "mixed_bfloat16"
    try:
        info = train(recipe, tmp_path / "run", data_path=str(tmp_path / "fer"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert info["recipe"]["teacher"] == str(teacher_onnx) and info["best_epoch"] in (1, 2)
    saved = keras.saving.load_model(tmp_path / "run" / "emotion_model.keras")
    assert saved.layers[-1].dtype_policy.name == "float32"  # served in float32

    # Mixup mixes images and targets with the same weight, so targets stay distributions.
    x = np.random.default_rng(0).random((64, 48, 48, 1), dtype=np.float32)
    targets = np.eye(7, dtype=np.float32)[np.arange(64) % 7]
    mixed_x, mixed_y = Batches(x, targets, 32, 0.4, seed=0)[0]
    assert np.allclose(mixed_y.sum(1), 1) and (mixed_y.max(1) < 1).any()
    assert not np.allclose(mixed_x, x[:32])


def test_greedy_weights_prefer_the_better_member():
    from emotion_server.training.ensemble import greedy_weights

    labels = np.arange(700) % 7
    good = np.eye(7, dtype=np.float32)[labels] * 0.6 + 0.4 / 7
    noise = np.random.default_rng(0).dirichlet(np.ones(7), 700).astype(np.float32)
    counts, accuracy = greedy_weights([noise, good], labels)
    assert counts[1] >= 1 and counts[1] > counts[0] and accuracy == 1.0


def test_ensemble_command_weights_members_on_public_test(tmp_path):
    from emotion_server.training.architectures import tiny

    _write_kaggle_folder(tmp_path / "fer", per_class=4)
    for name in ("a", "b"):
        tiny().save(tmp_path / f"{name}.keras")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_server.cli",
            "ensemble",
            str(tmp_path / "a.keras"),
            str(tmp_path / "b.keras"),
            "--output",
            str(tmp_path / "ens.keras"),
            "--data",
            str(tmp_path / "fer"),
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = json.loads((tmp_path / "ens.ensemble.json").read_text())
    assert [m["model"] for m in report["members"]] == [
        str(tmp_path / "a.keras"),
        str(tmp_path / "b.keras"),
    ]
    assert sum(m["weight"] for m in report["members"]) >= 1
    assert (tmp_path / "ens.keras").is_file()


def test_random_affine_is_identity_at_inference_and_mirrors_at_most():
    from emotion_server.training.train import RandomAffine

    images = np.random.default_rng(0).random((16, 48, 48, 1), dtype=np.float32)
    layer = RandomAffine(rotation_degrees=0, zoom=0, shift=0, erasing=0, seed=1)
    assert np.array_equal(np.asarray(layer(images, training=False)), images)
    out = np.asarray(layer(images, training=True))
    for original, augmented in zip(images, out, strict=True):
        # With no rotation, zoom or shift, each image is itself or its mirror image.
        same = np.abs(augmented - original).max() < 1e-4
        mirrored = np.abs(augmented - original[:, ::-1]).max() < 1e-4
        assert same or mirrored
    moved = np.asarray(RandomAffine(20, 0.2, 0.2, erasing=1.0, seed=2)(images, training=True))
    assert moved.shape == images.shape and not np.allclose(moved, images)
