"""Train a model on FER2013 Training, keeping the epoch with the best PublicTest accuracy.

The recipe lives in a versioned TOML file (configs/*.toml) so a run can be repeated exactly.
Writes into the output folder: best.keras, emotion_model.h5 (same weights), history.csv and
train_info.json (recipe, seed, epochs, wall time, PublicTest accuracy) for `evaluate`.
"""

from __future__ import annotations

import json
import os
import platform
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np

from emotion_server.training import architectures
from emotion_server.training.data import load_cached


@dataclass
class Recipe:
    name: str = "default"
    architecture: str = "vgg"
    arch_args: dict = field(default_factory=dict)
    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 0.03
    warmup_epochs: int = 2
    momentum: float = 0.9
    weight_decay: float = 5e-3
    label_smoothing: float = 0.1
    rotation_degrees: float = 10.0
    zoom: float = 0.1
    shift: float = 0.1
    erasing: float = 0.0
    seed: int = 1
    limit_train: int | None = None  # for smoke tests: use only the first N Training images


def load_recipe(path: str | os.PathLike | None, **overrides) -> Recipe:
    values = tomllib.loads(Path(path).read_text()) if path else {}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return Recipe(**values)


def augmentation(recipe: Recipe) -> keras.Sequential:
    """Training-time augmentation as standard Keras layers (kept out of the saved model)."""
    steps = [
        keras.layers.RandomFlip("horizontal", seed=recipe.seed),
        keras.layers.RandomRotation(recipe.rotation_degrees / 360, fill_mode="nearest"),
        keras.layers.RandomZoom(recipe.zoom, fill_mode="nearest"),
        keras.layers.RandomTranslation(recipe.shift, recipe.shift, fill_mode="nearest"),
    ]
    if recipe.erasing:
        steps.append(keras.layers.RandomErasing(factor=recipe.erasing, value_range=(0, 1)))
    return keras.Sequential(steps, name="augmentation")


def _to_inputs(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0)[..., None]


def train(recipe: Recipe, output: str | os.PathLike, data_path: str | None = None) -> dict:
    """Fit `recipe` and save the PublicTest-best model into `output`; return train_info."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(recipe.seed)
    data = load_cached(data_path)
    train_split, val_split = data["Training"], data["PublicTest"]
    x_train, y_train = _to_inputs(train_split.images), train_split.labels
    if recipe.limit_train:
        x_train, y_train = x_train[: recipe.limit_train], y_train[: recipe.limit_train]
    x_val, y_val = _to_inputs(val_split.images), val_split.labels
    num_classes = 7

    model = architectures.ARCHITECTURES[recipe.architecture](**recipe.arch_args)
    inputs = keras.Input(model.input_shape[1:])
    trainable = keras.Model(inputs, model(augmentation(recipe)(inputs)), name="training")

    steps_per_epoch = len(x_train) // recipe.batch_size  # partial last batch dropped below
    warmup = recipe.warmup_epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=recipe.learning_rate / 10,
        decay_steps=recipe.epochs * steps_per_epoch - warmup,
        warmup_target=recipe.learning_rate,
        warmup_steps=warmup,
    )
    optimizer = keras.optimizers.SGD(
        schedule, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay
    )
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    trainable.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )
    n = steps_per_epoch * recipe.batch_size
    y_train_onehot = keras.utils.to_categorical(y_train, num_classes)
    y_val_onehot = keras.utils.to_categorical(y_val, num_classes)

    best_path = out / "best.keras"
    callbacks = [
        # "Chosen on PublicTest": keep the epoch with the best PublicTest accuracy.
        keras.callbacks.ModelCheckpoint(
            best_path, monitor="val_accuracy", mode="max", save_best_only=True
        ),
        keras.callbacks.CSVLogger(out / "history.csv"),
    ]

    class SaveInner(keras.callbacks.Callback):
        """ModelCheckpoint saves the training wrapper; keep the bare inference model too."""

        best = -1.0

        def on_epoch_end(self, epoch, logs=None):
            if logs and logs.get("val_accuracy", -1) > self.best:
                self.best = logs["val_accuracy"]
                self.epoch = epoch + 1
                model.save(out / "inference_best.keras")

    saver = SaveInner()
    callbacks.append(saver)
    started = time.time()
    rng = np.random.default_rng(recipe.seed)
    for_epoch = rng.permutation(len(x_train))[:n]
    trainable.fit(
        x_train[for_epoch],
        y_train_onehot[for_epoch],
        batch_size=recipe.batch_size,
        epochs=recipe.epochs,
        validation_data=(x_val, y_val_onehot),
        callbacks=callbacks,
        shuffle=True,
        verbose=2,
    )
    wall = time.time() - started
    best = keras.saving.load_model(out / "inference_best.keras")
    best.save(out / "emotion_model.h5")
    best.save(out / "emotion_model.keras")
    best_path.unlink(missing_ok=True)
    info = {
        "recipe": asdict(recipe),
        "best_epoch": saver.epoch,
        "public_test_accuracy": round(float(saver.best), 4),
        "train_wall_seconds": round(wall, 1),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "dataset_sha256": data.sha256,
        "parameters": int(best.count_params()),
    }
    (out / "train_info.json").write_text(json.dumps(info, indent=2))
    return info
