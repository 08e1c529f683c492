"""Keras 3 model builders: plain functions, functional API, input [N,48,48,1] in [0,1], 7 softmax.

Augmentation is kept out of these models (it lives in `train.py`), so the saved inference model
holds only standard layers and loads anywhere without custom objects.
"""

from __future__ import annotations

import keras
from keras import layers

from emotion_server.classes import EMOTIONS, INPUT_SIZE

# Fan-in uniform variance scaling (PyTorch's default): he_normal diverged under SGD (GPU.md).
DENSE_INIT = keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")


def _conv_bn_relu(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def vgg(
    width: int = 64,
    stages: int = 4,
    dense: int = 1024,
    dropout: float = 0.5,
    num_classes: int = len(EMOTIONS),
    name: str | None = None,
) -> keras.Model:
    """VGG-style network: `stages` x ([conv3x3-BN-ReLU] x2 + max-pool), widths doubling.

    width=64 is the GPU.md network (7.8 M parameters); width=16..32 trains on a CPU.
    """
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="image")
    x = inputs
    for stage in range(stages):
        filters = width * 2**stage
        x = _conv_bn_relu(x, filters, f"s{stage + 1}a")
        x = _conv_bn_relu(x, filters, f"s{stage + 1}b")
        x = layers.MaxPooling2D(2, name=f"s{stage + 1}_pool")(x)
    # Global pooling (not Flatten) keeps the head small and the network size-agnostic.
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    for index in range(2 if dense else 0):
        x = layers.Dropout(dropout, name=f"drop{index + 1}")(x)
        x = layers.Dense(dense, kernel_initializer=DENSE_INIT, name=f"fc{index + 1}")(x)
        x = layers.ReLU(name=f"fc{index + 1}_relu")(x)
    x = layers.Dropout(dropout, name="drop_out")(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", kernel_initializer=DENSE_INIT, name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=name or f"vgg{width}")


def _basic_block(x, filters: int, stride: int, name: str):
    shortcut = x
    y = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False, name=f"{name}_c1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_r1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_c2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        # Project the residual when the shape changes.
        shortcut = layers.Conv2D(filters, 1, stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def resnet(
    width: int = 64,
    blocks: tuple[int, ...] = (2, 2, 2, 2),
    dropout: float = 0.2,
    num_classes: int = len(EMOTIONS),
    name: str | None = None,
) -> keras.Model:
    """ResNet with basic blocks; (2, 2, 2, 2) at width 64 is ResNet-18 (11.2 M parameters).

    A 3x3 stem without the initial pooling, as small 48x48 faces need their resolution.
    """
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="image")
    x = _conv_bn_relu(inputs, width, "stem")
    for stage, count in enumerate(blocks):
        for block in range(count):
            stride = 2 if stage and not block else 1
            x = _basic_block(x, width * 2**stage, stride, f"s{stage + 1}b{block + 1}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="drop_out")(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", kernel_initializer=DENSE_INIT, name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{2 * sum(blocks) + 2}w{width}")


def ensemble(members: list[keras.Model], weights: list[float] | None = None) -> keras.Model:
    """One model whose output is the weighted mean of its members' probabilities.

    Exported like any model, so an ensemble keeps the serving contract ([N,48,48,1] -> [N,7]).
    """
    weights = weights or [1.0] * len(members)
    total = float(sum(weights))
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="image")
    # Members are re-wrapped under unique names (two "vgg24" members would clash).
    members = [
        keras.Model(m.input, m.output, name=f"member{i}_{m.name}") for i, m in enumerate(members)
    ]
    outputs = [
        layers.Rescaling(w / total, name=f"weight{i}")(member(inputs))
        for i, (member, w) in enumerate(zip(members, weights, strict=True))
        if w
    ]
    mean = layers.Add(name="probabilities")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, mean, name=f"ensemble{len(outputs)}")


def tiny(num_classes: int = len(EMOTIONS)) -> keras.Model:
    """A few-thousand-parameter network for tests: same contract, trains in seconds."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="image")
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny")


ARCHITECTURES = {"vgg": vgg, "resnet": resnet, "tiny": tiny}
