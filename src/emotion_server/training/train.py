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
    augment_impl: str = "layers"  # "layers": Keras preprocessing layers; "affine": jit-friendly
    precision: str = "float32"  # or "mixed_bfloat16" on a GPU; the saved model is float32
    mixup: float = 0.0  # Beta(a, a) mixing of image pairs and their targets; 0 disables
    ema: bool = False  # keep an exponential moving average of the weights and select on it
    ema_momentum: float = 0.999
    init_weights: str | None = None  # start from this Keras model's weights (warm restart)
    teacher: str | None = None  # an ONNX model (e.g. an exported ensemble) to distil from
    distill_weight: float = 0.7  # share of the teacher's probabilities in the targets
    distill_temperature: float = 2.0  # softening of the teacher's probabilities
    seed: int = 1
    limit_train: int | None = None  # for smoke tests: use only the first N Training images


def load_recipe(path: str | os.PathLike | None, **overrides) -> Recipe:
    values = tomllib.loads(Path(path).read_text()) if path else {}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return Recipe(**values)


class RandomAffine(keras.layers.Layer):
    """Per-image flip, rotation, zoom and shift (one `affine_transform` call) and random
    erasing, in keras.ops only, so it stays inside a jit-compiled step (JAX on a GPU), unlike
    Keras's RandomRotation/RandomZoom/RandomTranslation layers (GPU.md)."""

    def __init__(self, rotation_degrees=10.0, zoom=0.1, shift=0.1, erasing=0.0, seed=None, **kw):
        super().__init__(**kw)
        self.rotation = np.deg2rad(rotation_degrees)
        self.zoom, self.shift, self.erasing = zoom, shift, erasing
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        ops, random = keras.ops, keras.random
        n = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]

        def uniform(low, high):
            return random.uniform((n,), low, high, seed=self.generator)

        angle = uniform(-self.rotation, self.rotation)
        scale = uniform(1 - self.zoom, 1 + self.zoom)
        tx, ty = uniform(-self.shift, self.shift) * width, uniform(-self.shift, self.shift) * height
        flip = ops.where(uniform(0, 1) < 0.5, -1.0, 1.0)
        cos, sin = ops.cos(angle) / scale, ops.sin(angle) / scale
        # Output pixel -> input pixel: mirror, then rotate and scale about the centre, then shift.
        m00, m01, m10, m11 = cos * flip, sin, -sin * flip, cos
        cx, cy = (width - 1) / 2, (height - 1) / 2
        transform = ops.stack(
            [
                m00,
                m01,
                cx - m00 * (cx + tx) - m01 * (cy + ty),
                m10,
                m11,
                cy - m10 * (cx + tx) - m11 * (cy + ty),
                ops.zeros((n,)),
                ops.zeros((n,)),
            ],
            axis=1,
        )
        images = ops.image.affine_transform(images, transform, fill_mode="nearest")
        if self.erasing:
            # One random rectangle per image (2%-25% of the area), filled with noise.
            area = uniform(0.02, 0.25) * height * width
            aspect = ops.exp(uniform(np.log(0.3), np.log(3.3)))
            h = ops.minimum(ops.sqrt(area * aspect), height)
            w = ops.minimum(ops.sqrt(area / aspect), width)
            y0, x0 = uniform(0, 1) * (height - h), uniform(0, 1) * (width - w)
            ys = ops.arange(height, dtype="float32")[None, :, None, None]
            xs = ops.arange(width, dtype="float32")[None, None, :, None]

            def column(v):
                return ops.reshape(v, (-1, 1, 1, 1))

            inside = (
                (ys >= column(y0))
                & (ys < column(y0 + h))
                & (xs >= column(x0))
                & (xs < column(x0 + w))
                & column(uniform(0, 1) < self.erasing)
            )
            noise = random.uniform(ops.shape(images), seed=self.generator)
            images = ops.where(inside, ops.cast(noise, images.dtype), images)
        return images


def augmentation(recipe: Recipe) -> keras.Sequential:
    """Training-time augmentation (kept out of the saved inference model)."""
    if recipe.augment_impl == "affine":
        layer = RandomAffine(
            recipe.rotation_degrees, recipe.zoom, recipe.shift, recipe.erasing, seed=recipe.seed
        )
        return keras.Sequential([layer], name="augmentation")
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


class Batches(keras.utils.PyDataset):
    """Shuffled full batches (a partial last batch would compile a second program), with
    optional mixup of images and their (possibly soft) targets."""

    def __init__(self, x, targets, batch_size: int, mixup: float, seed: int):
        super().__init__()
        self.x, self.targets, self.batch_size, self.mixup = x, targets, batch_size, mixup
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        x, y = self.x[rows], self.targets[rows]
        if self.mixup:
            lam = self.rng.beta(self.mixup, self.mixup)
            partner = self.rng.permutation(len(rows))
            x = lam * x + (1 - lam) * x[partner]
            y = lam * y + (1 - lam) * y[partner]
        return x, y

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))


def training_targets(recipe: Recipe, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-hot labels, or with a teacher: its softened probabilities mixed with them."""
    onehot = np.eye(7, dtype=np.float32)[labels]
    if not recipe.teacher:
        return onehot
    from emotion_server.model import EmotionModel
    from emotion_server.pipeline import apply_temperature

    teacher = EmotionModel(recipe.teacher, threads=os.cpu_count() or 1)
    soft = np.concatenate(
        [
            (teacher.predict(x[i : i + 512]) + teacher.predict(x[i : i + 512, :, ::-1])) / 2
            for i in range(0, len(x), 512)
        ]
    )
    soft = apply_temperature(soft, recipe.distill_temperature)
    return recipe.distill_weight * soft + (1 - recipe.distill_weight) * onehot


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

    if recipe.precision != "float32":
        keras.mixed_precision.set_global_policy(recipe.precision)
    model = architectures.ARCHITECTURES[recipe.architecture](**recipe.arch_args)
    if recipe.init_weights:
        # A warm restart: same architecture, weights from an earlier run, a new schedule.
        model.set_weights(keras.saving.load_model(recipe.init_weights, compile=False).get_weights())
    inputs = keras.Input(model.input_shape[1:])
    trainable = keras.Model(inputs, model(augmentation(recipe)(inputs)), name="training")
    batches = Batches(
        x_train,
        training_targets(recipe, x_train, y_train),
        recipe.batch_size,
        recipe.mixup,
        recipe.seed,
    )

    steps_per_epoch = len(batches)
    warmup = recipe.warmup_epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=recipe.learning_rate / 10,
        decay_steps=max(1, recipe.epochs * steps_per_epoch - warmup),
        warmup_target=recipe.learning_rate,
        warmup_steps=warmup,
    )
    optimizer = keras.optimizers.SGD(
        schedule,
        momentum=recipe.momentum,
        nesterov=True,
        weight_decay=recipe.weight_decay,
        use_ema=recipe.ema,
        ema_momentum=recipe.ema_momentum,
    )
    # Keras's weight decay is decoupled (scaled by the learning rate); not on BN and biases.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    trainable.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )

    class KeepBest(keras.callbacks.Callback):
        """Chosen on PublicTest: save the inference model of the best PublicTest epoch."""

        best, epoch = -1.0, 0

        def on_epoch_end(self, epoch, logs=None):
            if logs and logs.get("val_accuracy", -1) > self.best:
                self.best, self.epoch = logs["val_accuracy"], epoch + 1
                model.save(out / "inference_best.keras")

    keeper = KeepBest()
    # With EMA, the averaged weights are swapped in for validation and for KeepBest.
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if recipe.ema else []
    callbacks += [keeper, keras.callbacks.CSVLogger(out / "history.csv")]
    started = time.time()
    trainable.fit(
        batches,
        epochs=recipe.epochs,
        validation_data=(x_val, keras.utils.to_categorical(y_val, 7)),
        callbacks=callbacks,
        verbose=2,
    )
    wall = time.time() - started
    best = keras.saving.load_model(out / "inference_best.keras")
    if recipe.precision != "float32":
        # Serve in float32: the same architecture under the float32 policy, same weights.
        keras.mixed_precision.set_global_policy("float32")
        weights = best.get_weights()
        best = architectures.ARCHITECTURES[recipe.architecture](**recipe.arch_args)
        best.set_weights(weights)
    best.save(out / "emotion_model.h5")
    best.save(out / "emotion_model.keras")
    info = {
        "recipe": asdict(recipe),
        "best_epoch": keeper.epoch,
        "public_test_accuracy": round(float(keeper.best), 4),
        "train_wall_seconds": round(wall, 1),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "dataset_sha256": data.sha256,
        "parameters": int(best.count_params()),
    }
    (out / "train_info.json").write_text(json.dumps(info, indent=2))
    return info
