"""The training wing: data loading, the PyTorch loop and its resume, PyTorch/Keras/ONNX parity,
the train -> export -> evaluate path, ensembles, and a user's own Keras model."""

import csv
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
from conftest import ROOT, GunicornServer, encode, softmax_tail

import emotion_server.training  # noqa: F401  (selects Keras's PyTorch backend)
from emotion_server import hostinfo
from emotion_server.contract import EMOTIONS
from emotion_server.training.data import load_fer2013

torch = pytest.importorskip("torch", reason="the [train] extra (PyTorch, Keras) is missing")
keras = pytest.importorskip("keras", reason="the [train] extra (PyTorch, Keras) is missing")
pytestmark = pytest.mark.train

from emotion_server.training import keras_nets  # noqa: E402
from emotion_server.training.architectures import resnet, tiny, vgg  # noqa: E402
from emotion_server.training.export import export_onnx, keras_predict, sample_inputs  # noqa: E402
from emotion_server.training.torch_nets import build_torch, parameter_count  # noqa: E402
from emotion_server.training.train import predict_proba  # noqa: E402

# Kaggle folders sort alphabetically; labels must follow FER2013's order, by name.
FOLDERS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
CLI = [sys.executable, "-m", "emotion_server.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`emotion-server ARGS...` in a subprocess, its output captured as text (for refusals)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def _train_smoke(fer, name: str) -> None:
    """A finished two-epoch run of configs/smoke.toml on the synthetic FER2013, as `name`."""
    smoke = str(ROOT / "configs" / "smoke.toml")
    _cli("train", "--config", smoke, "--data", str(fer), "--name", name).check_returncode()


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


@pytest.fixture
def fer(tmp_path, monkeypatch):
    """A small synthetic FER2013 in the Kaggle layout, and a runs folder of its own."""
    _write_kaggle_folder(tmp_path / "fer", per_class=16)
    monkeypatch.setenv("EMOTION_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("FER2013_PATH", str(tmp_path / "fer"))
    return tmp_path / "fer"


def _randomise(model, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so parity is checked on more than identity maps, and
    a sharpened classifier, so probabilities are far from uniform and differences show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.layers["probabilities"].weight.mul_(30)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor, low, high in (
                (module.running_mean, -0.5, 0.5),
                (module.running_var, 0.5, 2.0),
                (module.weight.data, 0.5, 1.5),
                (module.bias.data, -0.2, 0.2),
            ):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


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


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "configs").rglob("*.toml")),
    ids=lambda path: str(path.relative_to(ROOT / "configs")),
)
def test_every_shipped_recipe_loads_and_builds_its_network(path):
    """A typo in a recipe would otherwise surface hours into a session, or not at all."""
    from emotion_server.training.architectures import build_spec
    from emotion_server.training.train import load_recipe

    recipe = load_recipe(path)
    assert recipe.epochs > 0 and recipe.batch_size > 0 and 0 < recipe.learning_rate < 1
    net = build_torch(build_spec(recipe.architecture, **recipe.arch_args))
    assert parameter_count(net) > 0


def test_architectures_have_the_documented_sizes_in_both_frameworks():
    for arch, millions in ((resnet(), 11.17), (vgg(64), 6.27), (vgg(48, dense=512), 3.10)):
        torch_count = parameter_count(build_torch(arch))
        assert abs(torch_count / 1e6 - millions) < 0.01, arch.name
        body = keras_nets.build_body(arch)
        # Keras also counts BatchNorm's moving statistics, which PyTorch keeps as buffers.
        assert sum(int(np.prod(w.shape)) for w in body.trainable_weights) == torch_count


def _asymmetric_faces(count: int) -> np.ndarray:
    """uint8 48x48 images unlike their mirror images and their corner crops: a ramp across
    the width, a bright block near one corner, and noise."""
    rng = np.random.default_rng(5)
    images = rng.normal(0, 20, (count, 48, 48)) + np.linspace(0, 150, 48)[None, None, :]
    for image in images:
        top, left = rng.integers(0, 12, 2)
        image[top : top + 10, left : left + 10] += 100
    return np.clip(images, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("arch", "views"),
    [(tiny(), "centre"), (vgg(8, dense=16), "flip"), (resnet(8, crop=36), "tencrop")],
    ids=["tiny-centre", "vgg8-flip", "resnet8-tencrop"],
)
@pytest.mark.e2e
def test_pytorch_keras_and_onnx_agree(tmp_path, arch, views):
    """One description, two builds: PyTorch (trains), the .h5 (ships), its ONNX (serves)."""
    torch.manual_seed(0)
    net = build_torch(arch)
    _randomise(net)
    net.eval()
    faces = _asymmetric_faces(12)
    inputs = faces[..., None].astype(np.float32) / 255
    expected = predict_proba(net, faces, views)
    path = tmp_path / "model.h5"
    keras_nets.from_torch(net, views).save(path)
    shipped = keras_predict(keras.saving.load_model(path, compile=False), inputs)
    from emotion_server.model import EmotionModel
    from emotion_server.training.export import export_torch_onnx

    # What a user's .h5 goes through (Keras's exporter), and what a run's export serves
    # (straight from PyTorch): both must match the trained network.
    from_keras = EmotionModel(export_onnx(path)).predict(inputs)
    served_path = export_torch_onnx([net], views, tmp_path / "served.onnx")
    served = EmotionModel(served_path).predict(inputs)
    for got in (shipped, from_keras, served):
        assert np.abs(expected - got).max() <= 1e-4
        assert (expected.argmax(1) == got.argmax(1)).all()
    # The served graph runs the views as one batch: each convolution once, not once per view.
    convolutions = sum(isinstance(module, torch.nn.Conv2d) for module in net.modules())
    served_ops = [node.op_type for node in onnx.load(served_path).graph.node]
    assert served_ops.count("Conv") == convolutions


@pytest.mark.parametrize("views", ["flip", "tencrop"])
def test_both_builds_cut_the_same_views(views):
    """A position-sensitive body (a dense layer on the raw pixels) would expose any crop or
    mirror one build took differently from the other; the views must also differ."""
    crop = 40
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.05, (crop * crop, 7)).astype(np.float32)
    inputs = keras.Input((crop, crop, 1))
    dense = keras.layers.Dense(7, activation="softmax")
    body = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([kernel, np.zeros(7, np.float32)])

    class Pixels(torch.nn.Module):
        arch = tiny()

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(crop * crop, 7, bias=False)
            self.linear.weight.data = torch.from_numpy(kernel.T.copy())

        def forward(self, x):
            return self.linear(torch.flatten(x, 1))

    faces = _asymmetric_faces(6)
    expected = predict_proba(Pixels(), faces, views)
    got = keras_predict(keras_nets.wrap(body, crop, views), faces[..., None] / np.float32(255))
    assert np.abs(expected - got).max() <= 1e-5
    assert np.abs(predict_proba(Pixels(), faces, "centre") - expected).max() > 0.05


def test_augmentation_crops_flips_and_erases():
    from emotion_server.training.augment import Augmentation, augment

    # A linear image, f = x + 2y: bilinear sampling reproduces it exactly, so a crop at any
    # sub-pixel offset is still linear with the same slopes, and a mirror flips the x slope.
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    images = ((xs + 2 * ys) / 200).expand(64, 1, 48, 48).contiguous()
    plain = Augmentation(crop=40, flip=True, rotation_degrees=0, zoom=0, shift=0, erasing=0)
    out = augment(images, plain, torch.Generator().manual_seed(1)) * 200
    assert out.shape == (64, 1, 40, 40)
    x_slope = out[:, 0, :, 1:] - out[:, 0, :, :-1]
    y_slope = out[:, 0, 1:, :] - out[:, 0, :-1, :]
    assert torch.allclose(y_slope, torch.tensor(2.0), atol=1e-3)
    mirrored = x_slope.mean((1, 2)) < 0
    assert torch.allclose(x_slope.abs(), torch.tensor(1.0), atol=1e-3)
    assert 16 < int(mirrored.sum()) < 48  # mirrored about half the time
    # Where each crop starts (x + 2y at its top-left source pixel): inside the 8-pixel slack
    # on both axes, so within 0..24, and not always the same place.
    start = torch.where(mirrored, out[:, 0, 0, -1], out[:, 0, 0, 0])
    assert (start >= -1e-3).all() and (start <= 24 + 1e-3).all() and start.std() > 1

    # Erasing comes last, so the same seed gives the same crops: what differs is, in each
    # image, one rectangle of 2-25% of the crop (a little more or less once cut to pixels).
    erased = augment(images, Augmentation(erasing=1.0), torch.Generator().manual_seed(2))
    kept = augment(images, Augmentation(erasing=0.0), torch.Generator().manual_seed(2))
    for changed in (erased != kept)[:, 0]:
        rows, cols = torch.nonzero(changed.any(1))[:, 0], torch.nonzero(changed.any(0))[:, 0]
        box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.float().mean() > 0.99  # the changed pixels fill their bounding box
        assert 0.01 * 1600 <= box.numel() <= 0.3 * 1600
    half = augment(images, Augmentation(erasing=0.5), torch.Generator().manual_seed(2))
    touched = (half != kept).flatten(1).any(1)
    assert 16 < int(touched.sum()) < 48  # about half the images


def test_publictest_is_scored_every_few_epochs_then_each_of_the_last_quarter():
    from emotion_server.training.train import evaluates

    scored = [done for done in range(1, 151) if evaluates(done, 150, 5)]
    assert scored == [*range(5, 115, 5), *range(114, 151)]
    assert all(evaluates(done, 3, 5) for done in (1, 2, 3))  # a short run: every epoch
    assert [evaluates(done, 12, 1) for done in range(1, 13)] == [True] * 12
    assert [d for d in range(1, 21) if evaluates(d, 20, 4)] == [4, 8, 12, *range(16, 21)]


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.e2e
def test_a_stopped_run_resumes_to_the_same_weights(fer, tmp_path):
    """SIGTERM a real training process mid-run, resume it, and end where an uninterrupted
    run ends: same weights, same EMA weights, same per-epoch log."""
    from emotion_server.training.train import BEST_CENTRE, CHECKPOINT, runs_dir

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        (ROOT / "configs" / "smoke.toml").read_text().replace("epochs = 2", "epochs = 40")
    )
    env = {**os.environ}
    base = [*CLI, "train", "--config", str(recipe), "--data", str(fer)]
    subprocess.run(
        [*base, "--name", "whole"], env=env, check=True, capture_output=True, timeout=600
    )

    stopped = subprocess.Popen(
        [*base, "--name", "stopped"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoint = runs_dir() / "stopped" / CHECKPOINT
    assert _wait_for(checkpoint.exists, 300), "no checkpoint was written"
    stopped.send_signal(signal.SIGTERM)
    output, _ = stopped.communicate(timeout=120)
    assert "stopped during epoch" in output
    done = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 1 <= done < 40  # really interrupted, with at least one epoch kept

    result = subprocess.run(
        [*CLI, "train", "--resume", "stopped"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert f"resumed {runs_dir() / 'stopped'} at epoch {done}/40" in result.stdout
    whole = torch.load(runs_dir() / "whole" / CHECKPOINT, weights_only=False)
    resumed = torch.load(checkpoint, weights_only=False)
    assert resumed["epoch"] == whole["epoch"] == 40
    for key in ("model", "ema"):
        for name, tensor in whole[key].items():
            assert torch.allclose(tensor.float(), resumed[key][name].float(), atol=1e-5), name
    strip = [{k: v for k, v in row.items() if "seconds" not in k} for row in whole["log"]]
    assert strip == [{k: v for k, v in row.items() if "seconds" not in k} for row in resumed["log"]]
    # PublicTest scored at the first epoch, every 5th, then each of the last quarter's (31-40).
    scored = [row["epoch"] for row in whole["log"] if row["public_flip"] is not None]
    assert scored == [1, 5, 10, 15, 20, 25, 30, *range(31, 41)]
    assert all(row["public_centre"] is None for row in whole["log"] if 1 < row["epoch"] < 5)
    with (runs_dir() / "whole" / "log.csv").open() as handle:
        empty = [r["public_flip"] == "" for r in csv.DictReader(handle)][:5]
    assert empty == [False, True, True, True, False]
    # Beside best.pt (chosen with the mirror image), best-centre.pt keeps the first epoch with
    # the best centre-view score, for a model that ships without the mirror image; the resumed
    # run kept the same one.
    scores = [(row["public_centre"], -row["epoch"]) for row in whole["log"]]
    score, epoch = max(entry for entry in scores if entry[0] is not None)
    for run in ("whole", "stopped"):
        kept = torch.load(runs_dir() / run / BEST_CENTRE, weights_only=False)
        assert (kept["public_test_centre"], kept["epoch"]) == (score, -epoch), run
    assert resumed["best_centre"] == whole["best_centre"] == {"accuracy": score, "epoch": -epoch}
    # A second start under the same name is refused rather than overwriting the run.
    again = subprocess.run(
        [*base, "--name", "whole"], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 2 and "already holds a run" in again.stderr


@pytest.mark.e2e
def test_train_takes_its_teachers_from_the_command_line(fer):
    """`train --teachers RUN...` replaces the recipe's teachers: a run that does not exist is
    reported by name, with exit status 2, before any epoch is trained."""
    smoke = str(ROOT / "configs" / "smoke.toml")
    result = _cli(
        "train",
        "--config",
        smoke,
        "--data",
        str(fer),
        "--name",
        "student",
        "--teachers",
        "no-such-teacher",
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no-such-teacher" in result.stderr
    assert "epoch 1/" not in result.stdout


def test_a_resumed_run_can_be_given_a_new_length(fer):
    """`train --resume RUN --epochs N` lengthens (or shortens) a run: the cosine schedule is
    stretched from where it stands, and a length the run has already passed is refused."""
    from emotion_server.training.train import CHECKPOINT, runs_dir

    base = [*CLI, "train", "--config", str(ROOT / "configs" / "smoke.toml"), "--data", str(fer)]
    subprocess.run([*base, "--name", "longer"], check=True, capture_output=True, timeout=300)
    first = torch.load(runs_dir() / "longer" / CHECKPOINT, weights_only=False)
    assert first["epoch"] == 2 and first["log"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)

    result = subprocess.run(
        [*CLI, "train", "--resume", "longer", "--epochs", "4"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"resumed {runs_dir() / 'longer'} at epoch 2/4" in result.stdout
    state = torch.load(runs_dir() / "longer" / CHECKPOINT, weights_only=False)
    assert state["epoch"] == 4 and state["recipe"]["epochs"] == 4
    rates = [row["lr"] for row in state["log"]]
    # At 2 of 4 epochs the stretched schedule is back above zero, then decays to it again.
    assert rates[2] > rates[3] >= 0 and rates[2] > rates[1]
    assert "epochs = 4" in (runs_dir() / "longer" / "recipe.toml").read_text()

    refused = _cli("train", "--resume", "longer", "--epochs", "3")
    assert refused.returncode == 2 and "has done 4 epochs already" in refused.stderr


def test_a_time_budget_shortens_the_run_to_the_epochs_that_fit(tmp_path, monkeypatch):
    from emotion_server.training.train import epochs_within, parse_duration

    # 1 epoch done, an hour left at 100 s an epoch: 36 more fit.
    assert epochs_within(1, 40, 3600, 100) == 37
    assert epochs_within(5, 40, 1e9, 100) == 40  # a budget never lengthens the recipe
    assert epochs_within(5, 40, 99, 100) == 5  # not one more: the run ends where it is
    assert epochs_within(5, 40, -10, 100) == 5
    assert epochs_within(5, 40, -10, 0.0) == 5  # out of time, however short the epochs
    assert epochs_within(0, 40, 250, 100) == 2
    assert [parse_duration(text) for text in ("2.5h", "90m", "600s", "600")] == [
        9000,
        5400,
        600,
        600,
    ]
    for bad in ("soon", "0", "-5m", "", "inf", "1e400"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    from emotion_server.training.train import Recipe, train

    # A runs folder that cannot be made (under a file): refused before any folder is tried.
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("EMOTION_RUNS_DIR", str(tmp_path / "a-file" / "runs"))
    with pytest.raises(ValueError, match="finite"):
        train(Recipe(), "never-started", time_budget_s=float("inf"))


def test_a_budget_follows_the_measured_epochs(monkeypatch):
    """Budget on a clock the test moves: a slow first pass shortens the run, is left out once
    a second is timed (the run grows back to its plan, even where the first pass had cut it to
    a few epochs), and a late slowdown shortens it again with its warm-up cut to a quarter of
    the new length."""
    from emotion_server.training import train as training

    clock = [0.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    planned = training.Recipe(epochs=40, warmup_epochs=6)
    budget = training.Budget(1000.0, planned)
    recipe = planned

    def epoch(done: int, seconds: float) -> None:
        nonlocal recipe
        clock[0] += seconds
        recipe = budget.recipe(done, recipe)
        budget.lap()

    epoch(1, 40)  # 960 s left at 40 s an epoch: 24 more
    assert (recipe.epochs, recipe.warmup_epochs) == (25, 6)
    epoch(2, 20)  # the second pass is timed: 940 s at 20 s an epoch fits all 40 planned
    assert (recipe.epochs, recipe.warmup_epochs) == (40, 6)
    epoch(3, 20)
    assert recipe.epochs == 40
    for done in range(4, 21):
        epoch(done, 20)
    assert recipe.epochs == 40 and clock[0] == 420
    epoch(21, 100)  # 480 s left at 100 s an epoch: 4 more
    assert (recipe.epochs, recipe.warmup_epochs) == (25, 6)
    epoch(22, 10)  # faster again, but past the first quarter: no longer schedule
    assert recipe.epochs == 25
    clock[0] = 2000  # out of time
    assert budget.recipe(23, recipe).epochs == 23


def test_a_slow_first_pass_does_not_lock_a_short_budget_short(monkeypatch):
    """A 7-minute budget whose first pass pays 60 s of start-up, then 2 s an epoch: cut to 7
    epochs after the first, the run grows back at the second to what the steady speed fits."""
    from emotion_server.training import train as training

    clock = [0.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    planned = training.Recipe(epochs=200, warmup_epochs=2)
    budget = training.Budget(420.0, planned)
    clock[0] += 60
    recipe = budget.recipe(1, planned)
    assert recipe.epochs == 7
    budget.lap()
    clock[0] += 2
    recipe = budget.recipe(2, recipe)
    assert recipe.epochs == 181  # 358 s left at 2 s an epoch: 179 more
    budget.lap()


def test_a_run_out_of_time_ends_finished_at_the_epoch_it_reached(fer):
    """`train --time-budget`: with no time left after the first epoch, a 40-epoch run ends
    there, and its checkpoint and recipe say it is a 1-epoch run (finished, not stopped)."""
    from emotion_server.training.train import BEST, CHECKPOINT, runs_dir

    base = ["train", "--config", str(ROOT / "configs" / "smoke.toml"), "--data", str(fer)]
    result = _cli(*base, "--name", "hurried", "--epochs", "40", "--time-budget", "0.001s")
    assert result.returncode == 0, result.stderr
    assert "time budget: the run ends at epoch 1 of the 40 planned" in result.stdout
    state = torch.load(runs_dir() / "hurried" / CHECKPOINT, weights_only=False)
    assert state["epoch"] == 1 and state["recipe"]["epochs"] == 1
    assert state["time_budget"] == {"seconds": 0.001, "planned_epochs": 40}
    assert "epochs = 1\n" in (runs_dir() / "hurried" / "recipe.toml").read_text()
    assert torch.load(runs_dir() / "hurried" / BEST, weights_only=False)["epoch"] == 1

    ample = _cli(*base, "--name", "unhurried", "--time-budget", "1h")
    assert ample.returncode == 0 and "time budget" not in ample.stdout
    assert torch.load(runs_dir() / "unhurried" / CHECKPOINT, weights_only=False)["epoch"] == 2
    # Resumed with a new length and no time: one epoch more (timed in this process), then done.
    resumed = _cli("train", "--resume", "unhurried", "--epochs", "40", "--time-budget", "0.001s")
    assert "the run ends at epoch 3" in resumed.stdout, resumed.stdout + resumed.stderr
    state = torch.load(runs_dir() / "unhurried" / CHECKPOINT, weights_only=False)
    assert state["epoch"] == 3
    # Scored although not a 5th epoch nor in the last quarter of 40: under a time budget every
    # epoch is, since any may be the last.
    assert state["log"][-1]["public_flip"] is not None

    refused = _cli(*base, "--name", "never", "--time-budget", "soon")
    assert refused.returncode == 2 and "2.5h" in refused.stderr


def test_the_decoded_cache_is_written_whole_and_read_back_the_same(fer, tmp_path, monkeypatch):
    """load_cached writes .data/fer2013-<sha>.npz whole and then renames it (runs started side
    by side each write it), a second load reads the same arrays from it, and a write that
    fails leaves nothing behind."""
    from emotion_server.training.data import load_cached

    archive = tmp_path / "fer.tar.gz"  # archives are cached, folders are read each time
    with tarfile.open(archive, "w:gz") as tar:
        for child in fer.iterdir():
            tar.add(child, arcname=child.name)
    monkeypatch.chdir(tmp_path)
    first = load_cached(str(archive))
    written = sorted(path.name for path in (tmp_path / ".data").iterdir())
    assert len(written) == 1 and written[0].startswith("fer2013-") and written[0].endswith(".npz")
    second = load_cached(str(archive))
    assert second.sha256 == first.sha256
    for split in ("Training", "PublicTest", "PrivateTest"):
        assert np.array_equal(first[split].images, second[split].images)
        assert np.array_equal(first[split].labels, second[split].labels)

    # A write that fails half-way (a full disk, a kill) leaves no cache to be read later.
    def half_then_fail(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("no space left on device")

    for path in (tmp_path / ".data").iterdir():
        path.unlink()
    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(OSError, match="no space"):
        load_cached(str(archive))
    assert list((tmp_path / ".data").iterdir()) == []


def test_a_shortened_run_decays_to_zero_on_its_new_length(fer, monkeypatch):
    """Where the budget fits 3 of 6 planned epochs, the cosine schedule is refitted to 3: the
    learning rate reaches zero at the end of epoch 3 (on the old schedule it would be half the
    peak there), and the checkpoint records both lengths."""
    from emotion_server.training import train as training
    from emotion_server.training.train import CHECKPOINT, load_recipe, resolve_run

    monkeypatch.setattr(training, "epochs_within", lambda done, planned, left, per: 3)
    recipe = load_recipe(ROOT / "configs" / "smoke.toml", epochs=6)
    lines = []
    summary = training.train(
        recipe, "refitted", data_path=str(fer), progress=lines.append, time_budget_s=3600
    )
    assert summary["epochs_done"] == 3
    assert any("the run ends at epoch 3 of the 6 planned" in line for line in lines)
    state = torch.load(resolve_run("refitted") / CHECKPOINT, weights_only=False)
    assert state["recipe"]["epochs"] == 3 and state["time_budget"]["planned_epochs"] == 6
    rates = [row["lr"] for row in state["log"]]
    assert rates[0] > 0.01 and rates[-1] == pytest.approx(0.0, abs=1e-9)


def test_a_packed_run_comes_home_as_a_finished_run_with_its_best_weights(fer, tmp_path):
    """transfer.py: a run packed into one file (best weights in float16) unpacks into a run
    folder whose network answers as the original's does, within float16's rounding, and
    which is finished: resuming it is refused, as is unpacking over an existing run."""
    from emotion_server.training.train import BEST, load_run_model, runs_dir

    _train_smoke(fer, "far")
    transfer = [sys.executable, "-m", "emotion_server.training.transfer"]
    packed = tmp_path / "out" / "far.run.pt"
    subprocess.run(
        [*transfer, "pack", "far", "--out", str(packed.parent)], check=True, capture_output=True
    )
    original = torch.load(runs_dir() / "far" / BEST, weights_only=False)
    small = torch.load(packed, weights_only=False)
    assert small["epochs_done"] == 2 and small["best"]["epoch"] == original["epoch"]
    assert all(
        value.dtype == torch.float16
        for value in small["weights"].values()
        if value.is_floating_point()
    )
    home = subprocess.run(
        [*transfer, "unpack", str(packed), "--name", "home"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "not resumable, finished" in home.stdout
    faces = np.round(sample_inputs()[..., 0] * 255).astype(np.uint8)
    there = predict_proba(load_run_model("far"), faces, "flip")
    here = predict_proba(load_run_model("home"), faces, "flip")
    assert np.abs(there - here).max() <= 1e-2
    assert (there.argmax(1) == here.argmax(1)).mean() >= 0.9
    refused = _cli("train", "--resume", "home")
    assert refused.returncode == 2 and "not resumed" in refused.stderr
    again = subprocess.run(
        [*transfer, "unpack", str(packed), "--name", "home"], capture_output=True, text=True
    )
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_a_warm_restart_starts_from_the_other_runs_best_weights(fer, tmp_path):
    """`train --init RUN` begins from RUN's best weights with a fresh optimizer: at learning
    rate 0 the network's weights stay exactly those, where a cold start's are random; a
    recipe of another network is refused before any epoch."""
    from emotion_server.training.train import BEST, CHECKPOINT, runs_dir

    smoke = (ROOT / "configs" / "smoke.toml").read_text()
    still = tmp_path / "still.toml"
    still.write_text(smoke.replace("learning_rate = 0.02", "learning_rate = 0.0"))
    assert "learning_rate = 0.0" in still.read_text()
    base = ["train", "--data", str(fer)]
    smoke_path = str(ROOT / "configs" / "smoke.toml")
    subprocess.run(
        [*CLI, *base, "--config", smoke_path, "--name", "source"], check=True, capture_output=True
    )
    for name, init in (("warm", ["--init", "source"]), ("cold", [])):
        subprocess.run(
            [*CLI, *base, "--config", str(still), "--name", name, "--epochs", "1", *init],
            check=True,
            capture_output=True,
            timeout=300,
        )
    source = torch.load(runs_dir() / "source" / BEST, weights_only=False)["weights"]
    learned = [key for key in source if key.endswith("weight") and source[key].dim() == 4]
    assert learned
    for name, same in (("warm", True), ("cold", False)):
        state = torch.load(runs_dir() / name / CHECKPOINT, weights_only=False)
        assert state["recipe"]["init_from"] == ("source" if same else None)
        for weights in (state["model"], state["ema"]):
            for key in learned:
                assert torch.equal(weights[key], source[key]) is same, (name, key)

    other = tmp_path / "other.toml"
    other.write_text(smoke.replace('"tiny"', '"vgg"\narch_args = { width = 8, dense = 16 }'))
    refused = _cli(*base, "--config", str(other), "--name", "other", "--init", "source")
    assert refused.returncode == 2 and "needs the same network" in refused.stderr
    assert not (runs_dir() / "other").exists()  # a refused start leaves no folder behind
    assert "epoch 1/" not in refused.stdout
    both = _cli("train", "--resume", "warm", "--init", "source")
    assert both.returncode == 2 and "--init starts a new run" in both.stderr
    # A resumed run keeps its recipe: options that would change it are refused, not ignored.
    for option in (["--seed", "3"], ["--config", smoke_path], ["--name", "other"]):
        changed = _cli("train", "--resume", "warm", *option)
        assert changed.returncode == 2, option
        assert f"{option[0]} cannot change a resumed run" in changed.stderr


def test_training_commands_say_what_is_wrong_without_a_traceback(tmp_path):
    """A recipe that is missing or not TOML, and the training extra not installed (as after
    the README's serving install): a message and exit status 2, no traceback."""
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = [\n")
    misspelt = tmp_path / "misspelt.toml"
    misspelt.write_text("epoch = 3\n")
    for config, fragment in (
        (tmp_path / "absent.toml", "No such file or directory"),
        (broken, "broken.toml is not valid TOML"),
        (misspelt, "misspelt.toml: unknown recipe keys"),
    ):
        done = _cli("train", "--config", str(config))
        assert done.returncode == 2 and fragment in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    without_torch = (
        "import sys; sys.modules['torch'] = None; from emotion_server.cli import main; "
        "sys.exit(main(['train', '--config', 'configs/smoke.toml']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", without_torch], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "needs the training extra (torch is missing)" in done.stderr
    assert 'pip install -e ".[train]"' in done.stderr and "Traceback" not in done.stderr


def test_a_run_being_trained_is_not_started_twice(fer):
    """Two processes training one run folder would write over each other's checkpoints:
    while one holds the run's lock, a second start is refused before any epoch; the lock goes
    with the process that held it."""
    from emotion_server.training.train import CHECKPOINT, run_lock, runs_dir

    start = ["train", "--config", str(ROOT / "configs" / "smoke.toml"), "--data", str(fer)]
    folder = runs_dir() / "busy"
    folder.mkdir(parents=True)
    with run_lock(folder):
        refused = _cli(*start, "--name", "busy", "--epochs", "1")
    assert refused.returncode == 2 and "being trained by another process" in refused.stderr
    assert "epoch 1/" not in refused.stdout and not (folder / CHECKPOINT).exists()
    started = _cli(*start, "--name", "busy", "--epochs", "1")
    assert started.returncode == 0, started.stderr
    assert (folder / CHECKPOINT).exists()


@pytest.mark.e2e
def test_train_export_evaluate_end_to_end(fer, tmp_path):
    """`train`, `export --run` and `evaluate` through the CLI on a tiny synthetic FER2013."""
    env = {**os.environ}
    subprocess.run(
        [
            *CLI,
            "train",
            "--config",
            str(ROOT / "configs" / "smoke.toml"),
            "--name",
            "smoke",
            "--data",
            str(fer),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    h5 = tmp_path / "out" / "smoke_model.h5"
    subprocess.run(
        [*CLI, "export", "--run", "smoke", "--output", str(h5)],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    info = json.loads(h5.with_suffix(".train.json").read_text())
    assert info["epochs_done"] == 2 and 1 <= info["best_epoch"] <= 2
    assert info["parity_max_abs_diff"]["torch_vs_onnx"] <= 1e-4
    assert info["balance"]["tau"] >= 0 and len(info["balance"]["bias"]) == 7
    # The recorded PublicTest figure is the exported model's own (its views, adjusted bias).
    public = load_fer2013(str(fer))["PublicTest"]
    answered = _served_accuracy(h5.with_suffix(".onnx"), public)
    assert info["public_test_accuracy"] == round(answered, 4)
    # Choosing between candidates: PublicTest alone, printed; no card, PrivateTest unread.
    evaluate = ["evaluate", "--model", str(h5.with_suffix(".onnx")), "--data", str(fer)]
    evaluate += ["--train-info", str(h5.with_suffix(".train.json"))]
    public_only = _cli(*evaluate, "--public-only")
    assert public_only.returncode == 0, public_only.stderr
    assert f"PublicTest: accuracy {info['public_test_accuracy']:.4f}" in public_only.stdout
    assert "PrivateTest" not in public_only.stdout and not h5.with_suffix(".json").exists()
    result = subprocess.run(
        [*CLI, *evaluate, "--plots", str(tmp_path / "plots")],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    card = json.loads(h5.with_suffix(".json").read_text())
    assert "confusion matrix" in result.stdout and "precision" in result.stdout
    # The export's views are in the graph: evaluate adds no server-side mirror image of its own,
    # so it does not choose between views on PublicTest.
    assert card["tta"] == "none" and card["tta_public_test_accuracy"] is None
    matrix = np.array(card["metrics"]["PrivateTest"]["confusion_matrix"])
    assert matrix.sum() == 14
    assert card["accuracy"] == round(np.trace(matrix) / matrix.sum(), 4)
    assert card["training"]["best_epoch"] == info["best_epoch"]
    assert card["framework"].startswith("trained with PyTorch 2.")
    assert "shipped as Keras 3." in card["framework"] and "ONNX Runtime" in card["framework"]
    assert card["parameters"] == info["parameters"] > 0
    # The speed is stated with the CPU it was measured on (hostinfo.py).
    assert card["ms_per_face_1_thread"] > 0 and card["cpu"] == hostinfo.cpu()
    assert card["evaluated_on"].startswith(hostinfo.describe())
    # Temperature scaling is kept only where it lowers PublicTest's calibration error.
    calibration = card["calibration"]
    lowered = calibration["public_test_ece_after"] < calibration["public_test_ece_before"]
    assert calibration["kept"] == lowered
    assert card["temperature"] == (calibration["fitted_temperature"] if lowered else 1.0)


def test_a_centre_only_export_ships_the_best_centre_epoch(fer, tmp_path):
    """`export --views centre` ships best-centre.pt where its centre view scored better than
    best.pt's epoch (the flip score breaking a tie); other views, or a best-centre.pt that
    scored worse (one kept only since a resume), ship best.pt. The exported files answer as
    the chosen weights do."""
    from emotion_server.training.train import (
        BEST,
        BEST_CENTRE,
        best_file,
        load_run_model,
        runs_dir,
    )

    _train_smoke(fer, "views")
    folder = runs_dir() / "views"
    flip = torch.load(folder / BEST, weights_only=False)
    # Another epoch's weights, better on the centre view than best.pt's epoch.
    other = load_run_model("views")
    _randomise(other, seed=3)
    centre = {**flip, "epoch": 7, "weights": other.state_dict()}
    centre["public_test_centre"] = flip["public_test_centre"] + 0.01
    torch.save(centre, folder / BEST_CENTRE)
    assert best_file("views", "flip") == best_file("views", "ten-crop") == folder / BEST
    assert best_file("views", "centre") == folder / BEST_CENTRE

    h5 = tmp_path / "out" / "centre.h5"
    _cli("export", "--run", "views", "--views", "centre", "--output", str(h5)).check_returncode()
    info = json.loads(h5.with_suffix(".train.json").read_text())
    assert info["weights"] == BEST_CENTRE and info["best_epoch"] == 7
    assert info["best"]["epoch"] == 7 and info["best"]["centre"] == centre["public_test_centre"]
    assert info["run_best_flip"]["epoch"] == flip["epoch"]
    faces = np.round(sample_inputs()[..., 0] * 255).astype(np.uint8)
    from emotion_server.model import EmotionModel

    served = EmotionModel(h5.with_suffix(".onnx")).predict(faces[..., None] / np.float32(255))
    assert np.abs(served - predict_proba(other, faces, "centre")).max() <= 1e-4

    # So does an ensemble with the centre view alone, naming each member's weights.
    ens = tmp_path / "out" / "ens.h5"
    made = _cli("ensemble", "views", "--views", "centre", "--balance", "none", "--output", str(ens))
    assert made.returncode == 0, made.stderr
    (member,) = json.loads(ens.with_suffix(".train.json").read_text())["members"]
    assert member["weights"] == BEST_CENTRE and member["best"]["epoch"] == 7
    served = EmotionModel(ens.with_suffix(".onnx")).predict(faces[..., None] / np.float32(255))
    assert np.abs(served - predict_proba(other, faces, "centre")).max() <= 1e-4

    # Worse on the centre view than best.pt's epoch: best.pt ships.
    torch.save(
        {**centre, "public_test_centre": flip["public_test_centre"] - 0.01}, folder / BEST_CENTRE
    )
    assert best_file("views", "centre") == folder / BEST
    # A best.pt from before it recorded its centre score: its epoch's row in log.csv gives it.
    torch.save({k: v for k, v in flip.items() if k != "public_test_centre"}, folder / BEST)
    with (folder / "log.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if int(r["epoch"]) == flip["epoch"])
    assert float(row["public_centre"]) == flip["public_test_centre"]
    assert best_file("views", "centre") == folder / BEST
    torch.save(centre, folder / BEST_CENTRE)  # above the log's figure for best.pt's epoch
    assert best_file("views", "centre") == folder / BEST_CENTRE
    # A tie on the centre view: the better flip score ships.
    tie = {**centre, "public_test_centre": flip["public_test_centre"]}
    torch.save({**tie, "public_test_flip": flip["public_test_flip"]}, folder / BEST_CENTRE)
    assert best_file("views", "centre") == folder / BEST
    torch.save({**tie, "public_test_flip": flip["public_test_flip"] + 0.01}, folder / BEST_CENTRE)
    assert best_file("views", "centre") == folder / BEST_CENTRE


def _served_accuracy(onnx_path, split) -> float:
    from emotion_server.model import EmotionModel

    predicted = EmotionModel(onnx_path).predict(split.images[..., None] / np.float32(255))
    return float((predicted.argmax(1) == split.labels).mean())


def test_an_export_that_fails_its_parity_check_leaves_the_shipped_files(fer, tmp_path, monkeypatch):
    """The .h5 and .onnx are written beside the output and moved into place only after the
    PyTorch/Keras/ONNX check: a failed check leaves what was there (and no scratch folder)."""
    from emotion_server.training import export
    from emotion_server.training.train import BEST, load_recipe, resolve_run, runs_summary, train

    train(
        load_recipe(ROOT / "configs" / "smoke.toml"), "parity", data_path=str(fer), progress=print
    )
    h5 = tmp_path / "models" / "shipped.h5"
    export.export_run("parity", h5, views="centre", data_path=str(fer))
    before = {path.name: path.read_bytes() for path in h5.parent.iterdir()}
    # views other than flip: PublicTest scored at export, with those views
    info = json.loads(h5.with_suffix(".train.json").read_text())
    public = load_fer2013(str(fer))["PublicTest"]
    assert info["public_test_accuracy"] == round(
        _served_accuracy(h5.with_suffix(".onnx"), public), 4
    )

    def refuse(name, expected, got):
        raise RuntimeError(f"{name} differ")

    monkeypatch.setattr(export, "check_parity", refuse)
    with pytest.raises(RuntimeError, match="differ"):
        export.export_run("parity", h5, views="flip", data_path=str(fer))
    assert {path.name: path.read_bytes() for path in h5.parent.iterdir()} == before

    # A run's best is best.pt's (saved at every improvement), not the checkpoint's record
    # (saved every `checkpoint_every` epochs, so possibly older).
    folder = resolve_run("parity")
    best = torch.load(folder / BEST, map_location="cpu", weights_only=False)
    torch.save({**best, "epoch": 7, "public_test_flip": 0.5}, folder / BEST)
    assert runs_summary("parity")["best"] == {"accuracy": 0.5, "epoch": 7}


@pytest.mark.e2e
def test_ensemble_of_runs_is_their_weighted_mean(fer, tmp_path):
    from emotion_server.model import EmotionModel
    from emotion_server.training.ensemble import build_ensemble
    from emotion_server.training.train import load_recipe, load_run_model, train

    for seed in (1, 2):
        recipe = load_recipe(ROOT / "configs" / "smoke.toml", seed=seed)
        train(recipe, f"member{seed}", data_path=str(fer), progress=lambda _: None)
    report = build_ensemble(["member1", "member2"], tmp_path / "ens.h5", data_path=str(fer))
    weights = [m["weight"] for m in report["members"]]
    assert sum(weights) >= 1 and report["views"] in ("flip", "tencrop")
    faces = np.round(sample_inputs(8)[..., 0] * 255).astype(np.uint8)
    nets = [load_run_model(name) for name in ("member1", "member2")]
    expected = sum(
        w * predict_proba(n, faces, report["views"]) for n, w in zip(nets, weights, strict=True)
    ) / sum(weights)
    served = EmotionModel(tmp_path / "ens.onnx").predict(faces[..., None] / np.float32(255))
    assert np.abs(served - expected).max() <= 1e-4
    # Each option is scored on the answers of its own views (ten-crop's answers are computed
    # once and flip's taken from them): as scoring each from scratch does.
    from emotion_server.training.ensemble import greedy_weights

    public = load_fer2013(str(fer))["PublicTest"]
    for option in ("flip", "tencrop"):
        alone = [predict_proba(net, public.images, option) for net in nets]
        accuracy = greedy_weights(alone, public.labels)[1]
        assert report["views_public_test_accuracy"][option] == round(accuracy, 4), option
        if option == report["views"]:
            members = [round(float((a.argmax(1) == public.labels).mean()), 4) for a in alone]
            assert [m["public_test_accuracy"] for m in report["members"]] == members
            assert weights == greedy_weights(alone, public.labels)[0]

    # An ensemble of large members ships in INT8 only (its float32 file would pass 40 MB):
    # the quantized ensemble keeps the contract, quantizes every member's convolutions and
    # averages the members' probabilities in float32.
    import onnx

    from emotion_server.training.quantize import quantize_onnx

    quantized = quantize_onnx(tmp_path / "ens.onnx", tmp_path / "ens.int8.onnx", faces)
    int8 = EmotionModel(quantized)
    assert int8.info().precision == "int8"
    answered = int8.predict(faces[..., None] / np.float32(255))
    assert answered.shape == (8, 7) and np.allclose(answered.sum(1), 1, atol=1e-5)
    assert np.abs(answered - served).max() < 0.1
    graph = onnx.load(quantized).graph
    assert "QuantizeLinear" in {node.op_type for node in graph.node}
    tail, written = softmax_tail(graph)  # from each member's Softmax to the weighted mean
    assert not [n.name for n in tail if "Linear" in n.op_type]
    assert graph.output[0].name in written


@pytest.mark.e2e
def test_a_balanced_ensemble_shifts_every_member_and_its_members_are_recovered(
    fer, tmp_path, monkeypatch
):
    """`ensemble --views centre --balance auto`: one logit adjustment fitted on PublicTest and
    built into each member's bias; `recover` gets every member back, adjustment taken out."""
    import shutil

    from emotion_server.model import EmotionModel
    from emotion_server.training.balance import class_prior
    from emotion_server.training.ensemble import build_ensemble
    from emotion_server.training.recover import recover_run
    from emotion_server.training.train import load_recipe, load_run_model, runs_dir, train

    for path in sorted((fer / "train" / "disgust").iterdir())[4:]:
        path.unlink()  # a rare class, so that the adjustment is not a constant shift
    for seed in (1, 2):
        recipe = load_recipe(ROOT / "configs" / "smoke.toml", seed=seed)
        train(recipe, f"m{seed}", data_path=str(fer), progress=lambda _: None)

    def build(output: Path, **size) -> dict:
        return build_ensemble(
            ["m1", "m2"],
            output,
            views="centre",
            balance="auto",
            data_path=str(fer),
            taus=(0.5,),  # the grid is real (`fit_balance`); one value makes the shift certain
            **size,
        )

    report = build(tmp_path / "ens.h5")
    assert report["views"] == "centre" and report["balance"]["tau"] == 0.5
    # The recorded PublicTest figure is the shipped ensemble's, adjustment included.
    public = load_fer2013(str(fer))["PublicTest"]
    assert report["public_test_accuracy"] == round(
        _served_accuracy(tmp_path / "ens.onnx", public), 4
    )
    tau = report["balance"]["tau"]
    prior = class_prior(load_fer2013(str(fer))["Training"].labels)
    assert np.allclose(report["balance"]["bias"], -tau * np.log(prior), atol=1e-5)
    weights = [m["weight"] for m in report["members"]]
    nets = [load_run_model(name) for name in ("m1", "m2")]
    faces = np.round(sample_inputs(8)[..., 0] * 255).astype(np.uint8)
    shift = prior ** (-tau)
    adjusted = [predict_proba(net, faces, "centre") * shift for net in nets]
    expected = sum(
        w * a / a.sum(1, keepdims=True) for a, w in zip(adjusted, weights, strict=True)
    ) / sum(weights)
    served = EmotionModel(tmp_path / "ens.onnx").predict(faces[..., None] / np.float32(255))
    assert np.abs(served - expected).max() <= 1e-4

    # An ensemble whose .h5 would reach the size limit (here: any) is written one member per
    # file instead, beside the same ONNX file; files of an ensemble written before under that
    # name (its .h5 of the whole, a member no longer in it) are removed.
    kept = [name for name, w in zip(("m1", "m2"), weights, strict=True) if w]
    split = tmp_path / "split"
    split.mkdir()
    (split / "ens.h5").write_bytes(b"an older ensemble")
    (split / "ens.member7.h5").write_bytes(b"an older member")
    report = build(split / "ens.h5", max_file_bytes=1)
    parts = [f"member{int(name[1]) - 1}" for name in kept]
    assert report["h5_parts"] == parts
    assert sorted(f.name for f in split.glob("*.h5")) == [f"ens.{part}.h5" for part in parts]
    again = EmotionModel(split / "ens.onnx").predict(faces[..., None] / np.float32(255))
    assert np.abs(again - served).max() <= 1e-6

    # Beside its .h5, an accurate mode ships only its INT8 file's card: that is read. Members
    # written one per file are read from beside the .h5 named, renamed with it as they ship.
    (tmp_path / "ens.train.json").rename(tmp_path / "ens.int8.json")
    (split / "ens.train.json").rename(split / "accurate.int8.json")
    for part in parts:
        (split / f"ens.{part}.h5").rename(split / f"accurate.{part}.h5")
    for source in (tmp_path / "ens.h5", split / "accurate.h5"):
        for name in ("m1", "m2"):
            shutil.rmtree(runs_dir() / name, ignore_errors=True)
        reports = recover_run(source)
        assert [Path(r["run"]).name for r in reports] == kept
        for name in kept:
            original = nets[int(name[1]) - 1].state_dict()
            recovered = load_run_model(name).state_dict()
            for key, value in original.items():
                if not key.endswith("num_batches_tracked"):
                    assert torch.allclose(recovered[key], value, atol=1e-6), key
    # A member's file gone missing is named.
    (split / f"accurate.{parts[0]}.h5").unlink()
    for name in kept:
        shutil.rmtree(runs_dir() / name, ignore_errors=True)
    with pytest.raises(FileNotFoundError, match=f"accurate.{parts[0]}.h5"):
        recover_run(split / "accurate.h5")
    # Written whole again under that name, the members' files go.
    (split / "ens.member0.h5").write_bytes(b"an older member")
    for name in kept:
        shutil.rmtree(runs_dir() / name, ignore_errors=True)
    for seed in (1, 2):  # the runs again, as at the start
        recipe = load_recipe(ROOT / "configs" / "smoke.toml", seed=seed)
        train(recipe, f"m{seed}", data_path=str(fer), progress=lambda _: None)
    assert build(split / "ens.h5")["h5_parts"] is None
    assert sorted(f.name for f in split.glob("ens*.h5")) == ["ens.h5"]

    # --skip-existing, on an ensemble that holds both runs (the weights set to 1 and 1: the
    # search may keep one): a member already there with these weights is kept, the other
    # written; a member there with other weights (or none to compare) stops it before
    # anything is written, even the member before it.
    from emotion_server.training import ensemble
    from emotion_server.training.train import best_file

    monkeypatch.setattr(ensemble, "greedy_weights", lambda p, labels: ([1] * len(p), 0.0))
    both = tmp_path / "both"
    both.mkdir()
    assert [m["weight"] for m in build(both / "both.h5")["members"]] == [1, 1]
    shutil.rmtree(runs_dir() / "m1")
    reports = recover_run(both / "both.h5", skip_existing=True)
    assert [r["kept"] for r in reports] == [None, best_file("m2", "centre").name]
    assert (runs_dir() / "m1" / "checkpoint.pt").exists()
    held = runs_dir() / "m2" / best_file("m2", "centre").name
    saved = torch.load(held, weights_only=False)
    saved["weights"]["layers.probabilities.bias"] += 1e-3
    torch.save(saved, held)
    for name in ("best.pt", "best-centre.pt"):  # neither holds the shipped weights now
        (runs_dir() / "m2" / name).write_bytes(held.read_bytes())
    for change in ("other weights", "no best weights"):
        if change == "no best weights":
            for name in ("best.pt", "best-centre.pt"):
                (runs_dir() / "m2" / name).unlink(missing_ok=True)
        shutil.rmtree(runs_dir() / "m1", ignore_errors=True)
        with pytest.raises(FileExistsError, match="are not the weights in"):
            recover_run(both / "both.h5", skip_existing=True)
        assert not (runs_dir() / "m1").exists(), change


@pytest.mark.e2e
def test_distillation_moves_the_student_towards_its_teacher(fer):
    """Online distillation with the whole weight on the teacher: a teacher made to call every
    face 'surprise' (its classifier's bias raised) teaches its student to say the same, where a
    run of the same recipe on the labels alone does not."""
    from emotion_server.training.data import load_cached
    from emotion_server.training.train import (
        BEST,
        load_recipe,
        load_run_model,
        predict_proba,
        resolve_run,
        train,
    )

    quiet = {"data_path": str(fer), "progress": lambda _: None}
    base = load_recipe(ROOT / "configs" / "smoke.toml")
    train(base, "teacher", **quiet)
    surprise = EMOTIONS.index("surprise")
    best = resolve_run("teacher") / BEST
    state = torch.load(best, weights_only=False)
    state["weights"]["layers.probabilities.bias"][surprise] += 10.0
    torch.save(state, best)

    student = load_recipe(ROOT / "configs" / "smoke.toml", teachers=["teacher"], distill_weight=1.0)
    train(student, "student", **quiet)
    train(base, "plain", **quiet)
    images = load_cached(str(fer))["PublicTest"].images

    def share_of_surprise(run: str) -> float:
        return float((predict_proba(load_run_model(run), images).argmax(1) == surprise).mean())

    assert share_of_surprise("teacher") == 1.0
    assert share_of_surprise("student") >= 0.8
    assert share_of_surprise("plain") <= 0.5  # two of the 14 PublicTest faces are surprise


@pytest.mark.e2e
def test_fixed_distillation_targets_are_the_teachers_softened_views_and_outlive_them(fer):
    """distill_targets = "fixed": each Training image's target is the teachers' mean of
    softmax(logits / T) over its centre crop and mirror image, computed once; a resumed run
    reads them from its folder, so it needs no teacher any more."""
    import shutil

    import torch.nn.functional as F

    from emotion_server.training.data import load_cached
    from emotion_server.training.train import (
        TARGETS,
        load_recipe,
        load_run_model,
        resolve_run,
        to_tensor,
        train,
    )

    quiet = {"data_path": str(fer), "progress": lambda _: None}
    base = load_recipe(ROOT / "configs" / "smoke.toml")
    train(base, "teacher-a", **quiet)
    train(load_recipe(ROOT / "configs" / "smoke.toml", seed=2), "teacher-b", **quiet)
    recipe = load_recipe(
        ROOT / "configs" / "smoke.toml",
        teachers=["teacher-a", "teacher-b"],
        distill_weight=1.0,
        distill_temperature=3.0,
        distill_targets="fixed",
        epochs=1,
    )
    assert train(recipe, "student", **quiet)["epochs_done"] == 1
    saved = torch.load(resolve_run("student") / TARGETS, weights_only=False)["targets"]

    # The same targets, computed here from the teachers' logits.
    images = load_cached(str(fer))["Training"].images
    x = to_tensor(images)
    expected = torch.zeros(len(images), 7)
    for run in ("teacher-a", "teacher-b"):
        net = load_run_model(run)
        crop, top = net.arch.crop, (48 - net.arch.crop) // 2
        centre = x[..., top : top + crop, top : top + crop]
        with torch.no_grad():
            for view in (centre, centre.flip(-1)):
                expected += F.softmax(net(view) / 3.0, 1) / 4
    assert torch.allclose(saved, expected, atol=1e-4)
    assert not torch.allclose(saved, F.softmax(torch.log(saved) * 3.0, 1), atol=1e-2)  # T mattered

    # Resumed without its teachers: the kept targets are read, not recomputed.
    for run in ("teacher-a", "teacher-b"):
        shutil.rmtree(resolve_run(run))
    resumed = train(None, "student", resume=True, epochs=3, **quiet)
    assert resumed["epochs_done"] == 3


def test_kept_targets_are_made_anew_for_other_images_or_a_changed_teacher(fer):
    """Fixed targets are read back only for the same images in the same order and a teacher
    whose weights are unchanged (or gone): never another image's target."""
    from emotion_server.training.data import load_cached
    from emotion_server.training.train import (
        BEST,
        fixed_targets,
        load_recipe,
        resolve_run,
        train,
    )

    quiet = {"data_path": str(fer), "progress": lambda _: None}
    train(load_recipe(ROOT / "configs" / "smoke.toml"), "teacher-c", **quiet)
    recipe = load_recipe(
        ROOT / "configs" / "smoke.toml", teachers=["teacher-c"], distill_targets="fixed"
    )
    images = load_cached(str(fer))["Training"].images
    folder = resolve_run("teacher-c").parent / "student-c"
    folder.mkdir()
    made: list[str] = []

    def targets(pixels):
        return fixed_targets(recipe, pixels, folder, torch.device("cpu"), made.append)

    first = targets(images)
    assert torch.equal(targets(images), first) and len(made) == 1  # read back
    # The same images in another order (FER2013's CSV against its folders): made anew, each
    # image keeping its own target.
    reordered = targets(images[::-1].copy())
    assert len(made) == 2 and torch.allclose(reordered, first.flip(0), atol=1e-5)
    targets(images)
    # The teacher's weights changed under its name (trained again, recovered): made anew.
    state = torch.load(resolve_run("teacher-c") / BEST, weights_only=False)
    for tensor in state["weights"].values():
        if tensor.is_floating_point():
            tensor.mul_(1.5)
    torch.save(state, resolve_run("teacher-c") / BEST)
    changed = targets(images)
    assert len(made) == 4 and not torch.allclose(changed, first, atol=1e-3)
    # The teacher gone: the kept targets are read on trust.
    (resolve_run("teacher-c") / BEST).unlink()
    assert torch.equal(targets(images), changed) and len(made) == 4


def test_a_served_model_file_is_a_teacher_of_fixed_targets(fer):
    """`--teachers models/x.onnx`: a shipped model teaches when no run survives (a new machine
    has none); its targets are its served probabilities, softened by T."""
    from dataclasses import replace

    from emotion_server.contract import scale
    from emotion_server.model import EmotionModel
    from emotion_server.training.data import load_cached
    from emotion_server.training.train import TARGETS, load_recipe, resolve_run, train

    quiet = {"data_path": str(fer), "progress": lambda _: None}
    teacher = ROOT / "models" / "emotion_model.onnx"
    recipe = load_recipe(
        ROOT / "configs" / "smoke.toml",
        teachers=[str(teacher)],
        distill_weight=1.0,
        distill_temperature=2.0,
        distill_targets="fixed",
        epochs=1,
    )
    assert train(recipe, "student-of-a-file", **quiet)["epochs_done"] == 1
    saved = torch.load(resolve_run("student-of-a-file") / TARGETS, weights_only=False)["targets"]
    images = load_cached(str(fer))["Training"].images
    model = EmotionModel(teacher)
    served = torch.from_numpy(model.predict(scale(images))).double()
    # Its class-balance adjustment (export --balance) taken out of the logits first.
    bias = torch.tensor(model.card["training"]["balance"]["bias"], dtype=torch.float64)
    assert bias.abs().max() > 0.1
    unadjusted = torch.softmax(torch.log(served + 1e-12) - bias, 1)
    expected = torch.softmax(torch.log(unadjusted) / 2.0, 1).float()
    assert torch.allclose(saved, expected, atol=1e-4)
    assert not torch.allclose(saved, served.float(), atol=1e-2)  # softened, not copied
    leaning = torch.softmax(torch.log(served + 1e-12) / 2.0, 1).float()
    assert not torch.allclose(saved, leaning, atol=1e-3)  # not the adjusted probabilities
    with pytest.raises(ValueError, match="only with distill_targets = 'fixed'"):
        train(replace(recipe, distill_targets="online"), "online-student", **quiet)


def test_a_time_per_face_measured_on_a_busy_machine_is_flagged():
    """The card's ms per face is wall time; where it is well over the model thread's CPU time,
    other processes had the CPU and `evaluate` says so rather than ship the figure quietly."""
    from emotion_server.training.evaluate import BUSY_RATIO, busy_note

    assert busy_note(2.0, 1.9) is None and busy_note(BUSY_RATIO * 2.0, 2.0) is None
    note = busy_note(13.87, 2.7)
    assert note.startswith("warning: 13.87 ms per face") and "2.70 ms of the model's" in note


def test_logit_adjustment_lifts_the_rare_class_and_is_what_the_bias_shift_computes():
    from emotion_server.training.balance import adjust, class_prior, fit_balance

    rng = np.random.default_rng(0)
    counts = np.array([300, 20, 150, 400, 200, 150, 300])
    labels = np.repeat(np.arange(7), counts)
    prior = class_prior(labels)
    # A network that learned the prior: its logits lean towards the frequent classes.
    logits = 1.5 * np.eye(7)[labels] + rng.normal(0, 1, (len(labels), 7)) + np.log(prior)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    chosen = fit_balance([probs, probs], labels, prior, max_accuracy_drop=0.01)
    before, after = chosen.public_test["unadjusted"], chosen.public_test["chosen"]
    assert chosen.tau > 0 and after["recall"]["disgust"] > before["recall"]["disgust"]
    assert after["macro_f1"] > before["macro_f1"]
    assert after["accuracy"] >= before["accuracy"] - 0.01
    assert np.allclose(chosen.bias, -chosen.tau * np.log(prior), atol=1e-5)

    # adjust() on each view's probabilities equals the network with its bias shifted.
    torch.manual_seed(0)
    net = build_torch(tiny())
    _randomise(net)
    faces = _asymmetric_faces(8)
    from emotion_server.training.train import predict_views

    expected = adjust(predict_views(net, faces, "flip"), prior, 0.7)
    with torch.no_grad():
        net.layers["probabilities"].bias -= torch.tensor(0.7 * np.log(prior), dtype=torch.float32)
    assert np.abs(predict_proba(net, faces, "flip") - expected).max() < 1e-5


def test_greedy_weights_prefer_the_better_member():
    from emotion_server.training.ensemble import greedy_weights

    labels = np.arange(700) % 7
    good = np.eye(7, dtype=np.float32)[labels] * 0.6 + 0.4 / 7
    noise = np.random.default_rng(0).dirichlet(np.ones(7), 700).astype(np.float32)
    counts, accuracy = greedy_weights([noise, good], labels)
    assert counts[1] >= 1 and counts[1] > counts[0] and accuracy == 1.0


@pytest.mark.e2e
def test_export_refuses_a_model_of_another_shape(tmp_path):
    inputs = keras.Input((64, 64, 3))
    outputs = keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs))
    path = tmp_path / "wrong.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="48,48,1"):
        export_onnx(path)


@pytest.mark.e2e
def test_users_own_h5_is_served_after_one_export(tmp_path):
    """A user's Keras .h5: `emotion-server export` once, then served; HTTP returns its output."""
    model = keras_nets.tiny_keras()
    images = np.stack([_image(label, 0) for label in range(7)])[..., None] / 255.0
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(images, np.eye(7), epochs=3, verbose=0)
    path = tmp_path / "mine.h5"
    model.save(path)
    subprocess.run([*CLI, "export", str(path)], check=True, capture_output=True, timeout=300)
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
            expected = keras_predict(model, images[label : label + 1].astype(np.float32))[0]
            got = np.array([body["probabilities"][name] for name in EMOTIONS])
            assert np.abs(expected - got).max() <= 1e-4
    finally:
        server.stop()


@pytest.mark.e2e
def test_a_lost_run_is_recovered_from_its_exported_h5(fer, tmp_path):
    """`recover` rebuilds a run from the .h5 and card `export --run` wrote: the same weights
    as the run's best.pt once the logit adjustment built into the bias is taken out; an
    ensemble member like any run, and refused as a run to resume."""
    import shutil

    from emotion_server.training.export import export_run
    from emotion_server.training.recover import recover_run
    from emotion_server.training.train import load_recipe, load_run_model, runs_dir, train

    train(
        load_recipe(ROOT / "configs" / "smoke.toml"),
        "lost",
        data_path=str(fer),
        progress=lambda _: None,
    )
    h5 = tmp_path / "out" / "lost.h5"
    export_run("lost", h5, views="flip", data_path=str(fer))
    # Build a known logit adjustment into the shipped bias and its card, as `--balance auto`
    # does, so that recovering must take it out again.
    shipped = keras.saving.load_model(h5, compile=False)
    info = json.loads(h5.with_suffix(".train.json").read_text())
    final = shipped.get_layer(info["architecture"]["name"]).get_layer("probabilities")
    shift = np.linspace(-0.5, 0.7, 7).astype(np.float32)
    kernel, bias = final.get_weights()
    final.set_weights([kernel, bias + shift])
    shipped.save(h5)
    info["balance"] = {"tau": 0.3, "bias": shift.tolist()}
    h5.with_suffix(".train.json").write_text(json.dumps(info))
    original = load_run_model("lost")
    shutil.rmtree(runs_dir() / "lost")  # the machine is new: the run folder is gone

    (report,) = recover_run(h5, "found")
    assert report["views"] == "flip" and report["parity_max_abs_diff"] <= 1e-4
    recovered = load_run_model("found")
    for key, value in original.state_dict().items():
        if key.endswith("num_batches_tracked"):  # a training counter, not a weight
            continue
        assert torch.allclose(recovered.state_dict()[key], value, atol=1e-6), key
    faces = np.round(sample_inputs(8)[..., 0] * 255).astype(np.uint8)
    assert np.abs(predict_proba(recovered, faces) - predict_proba(original, faces)).max() < 1e-5

    result = subprocess.run(
        [*CLI, "train", "--resume", "found", "--data", str(fer)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "recovered from" in result.stderr
    again = subprocess.run(
        [*CLI, "recover", str(h5), "--name", "found"], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 2 and "already holds a run" in again.stderr

    # --skip-existing keeps a run that holds these very weights as it is, and still refuses
    # one whose weights differ (here one bias nudged by 1e-3).
    def skipping() -> subprocess.CompletedProcess:
        return subprocess.run(
            [*CLI, "recover", str(h5), "--name", "found", "--skip-existing"],
            capture_output=True,
            text=True,
            timeout=120,
        )

    best = runs_dir() / "found" / "best.pt"
    written = best.stat().st_mtime_ns, (runs_dir() / "found" / "checkpoint.pt").stat().st_mtime_ns
    kept = skipping()
    assert kept.returncode == 0 and "its best.pt holds" in kept.stdout
    assert "wrote" not in kept.stdout
    assert (best.stat().st_mtime_ns, (best.parent / "checkpoint.pt").stat().st_mtime_ns) == written
    saved = torch.load(best, weights_only=False)
    saved["weights"]["layers.probabilities.bias"] += 1e-3
    torch.save(saved, best)
    other = skipping()
    assert other.returncode == 2 and "are not the weights in" in other.stderr
