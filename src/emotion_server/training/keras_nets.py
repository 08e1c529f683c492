"""Keras builds of `training.architectures`: what ships (`models/emotion_model.h5`).

`build_body` reads the same `Architecture` as `torch_nets.build_torch` and names its layers
the same way, so `from_torch` copies a trained PyTorch network's weights over by name. The
shipped model wraps the body in the contract ([N, 48, 48, 1] in [0, 1] -> 7 softmax
probabilities) and in its test-time views (`architectures.view_offsets`: the centre crop the
network was trained to see, or with its mirror, or ten crops), all with standard layers only,
so the `.h5` loads anywhere without custom objects.

Mirroring is a fixed Dense layer (an anti-identity matrix on the width axis): exact, and
standard, where a custom flip layer would need registering wherever the file is loaded.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from emotion_server.contract import EMOTIONS, INPUT_SIZE
from emotion_server.training.architectures import Architecture, view_offsets
from emotion_server.training.torch_nets import conv_names

BN_EPSILON = 1e-5  # PyTorch's default (Keras's is 1e-3): the copied statistics assume it


def _conv_bn(x, name: str, filters: int, kernel: int, stride: int, relu: bool = True):
    if stride == 1:
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    else:
        # PyTorch pads a strided conv symmetrically; Keras's "same" would pad bottom/right only.
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        x = layers.Conv2D(filters, kernel, stride, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def build_body(arch: Architecture) -> keras.Model:
    """The network on [N, crop, crop, 1] inputs -> 7 softmax probabilities."""
    inputs = keras.Input((arch.crop, arch.crop, 1), name="crop")
    x = inputs
    if arch.family == "resnet":
        x = _conv_bn(x, "stem", arch.widths[0], 3, 1)
    channels = arch.widths[0] if arch.family == "resnet" else 1
    for stage, (width, names) in enumerate(zip(arch.widths, conv_names(arch), strict=True)):
        for index, name in enumerate(names):
            if arch.family == "vgg":
                x = _conv_bn(x, name, width, 3, 1)
            else:
                stride = 2 if stage and not index else 1
                y = _conv_bn(x, f"{name}_1", width, 3, stride)
                y = _conv_bn(y, f"{name}_2", width, 3, 1, relu=False)
                if stride != 1 or channels != width:
                    x = _conv_bn(x, f"{name}_proj", width, 1, stride, relu=False)
                x = layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, y]))
            channels = width
        if arch.family == "vgg":
            x = layers.MaxPooling2D(2, name=f"s{stage + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    for index, units in enumerate(arch.dense):
        x = layers.Dropout(arch.dropout, name=f"drop{index + 1}")(x)
        x = layers.Dense(units, activation="relu", name=f"fc{index + 1}")(x)
    x = layers.Dropout(arch.dropout, name="drop_out")(x)
    outputs = layers.Dense(arch.classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=arch.name)


def _mirror(x, size: int, name: str):
    """Left-right mirror of an [N, size, size, 1] tensor with standard layers only."""
    x = layers.Reshape((size, size), name=f"{name}_rows")(x)
    dense = layers.Dense(size, use_bias=False, trainable=False, name=name)
    x = dense(x)
    dense.set_weights([np.eye(size, dtype=np.float32)[::-1]])
    return layers.Reshape((size, size, 1), name=f"{name}_image")(x)


def wrap(body: keras.Model, crop: int, views: str = "centre", name: str | None = None):
    """The contract's model around `body`: 48x48 input, the chosen views
    (`architectures.view_offsets`), their probabilities averaged."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="image")
    margin = INPUT_SIZE - crop
    outputs, crops = [], {}
    for top, left, mirrored in view_offsets(crop, views):
        if (top, left) not in crops:
            index = len(crops)
            crops[top, left] = layers.Cropping2D(
                ((top, margin - top), (left, margin - left)), name=f"crop{index}"
            )(inputs)
        view = crops[top, left]
        if mirrored:
            view = _mirror(view, crop, f"mirror{len(outputs)}")
        outputs.append(body(view))
    mean = layers.Average(name="mean_of_views")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, mean, name=name or f"{body.name}_{views}")


def copy_weights(torch_model, body: keras.Model) -> None:
    """Copy a `torch_nets.Net`'s weights into `build_body(same arch)`, layer by name."""
    from torch import nn

    for name, module in torch_model.layers.items():
        layer = body.get_layer(name)
        if isinstance(module, nn.Conv2d):
            weights = [module.weight.detach().permute(2, 3, 1, 0).numpy()]
        elif isinstance(module, nn.BatchNorm2d):
            weights = [
                t.detach().numpy()
                for t in (module.weight, module.bias, module.running_mean, module.running_var)
            ]
        elif isinstance(module, nn.Linear):
            weights = [module.weight.detach().T.numpy(), module.bias.detach().numpy()]
        else:  # pragma: no cover - every layer of Net is one of the above
            raise TypeError(f"cannot copy {type(module).__name__} {name}")
        layer.set_weights([np.ascontiguousarray(w, dtype=np.float32) for w in weights])


def copy_weights_to_torch(body: keras.Model, torch_model) -> None:
    """The reverse of `copy_weights`: a trained Keras body's weights into a `torch_nets.Net`
    of the same arch, layer by name (`training.recover`)."""
    import torch
    from torch import nn

    for name, module in torch_model.layers.items():
        weights = [np.asarray(w, dtype=np.float32) for w in body.get_layer(name).get_weights()]
        if isinstance(module, nn.Conv2d):
            tensors = {"weight": weights[0].transpose(3, 2, 0, 1)}
        elif isinstance(module, nn.BatchNorm2d):
            keys = ("weight", "bias", "running_mean", "running_var")
            tensors = dict(zip(keys, weights, strict=True))
        elif isinstance(module, nn.Linear):
            tensors = {"weight": weights[0].T, "bias": weights[1]}
        else:  # pragma: no cover - every layer of Net is one of the above
            raise TypeError(f"cannot copy {type(module).__name__} {name}")
        with torch.no_grad():
            for key, value in tensors.items():
                target = getattr(module, key)
                if tuple(target.shape) != value.shape:
                    raise ValueError(f"{name}.{key}: {value.shape} does not fit {target.shape}")
                target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def from_torch(torch_model, views: str = "centre", name: str | None = None) -> keras.Model:
    """The shipped Keras model of a trained PyTorch network."""
    arch = torch_model.arch
    body = build_body(arch)
    copy_weights(torch_model, body)
    return wrap(body, arch.crop, views, name=name)


def ensemble(members: list[keras.Model], weights: list[float] | None = None) -> keras.Model:
    """One model whose output is the weighted mean of its members' probabilities, so an
    ensemble keeps the serving contract ([N, 48, 48, 1] -> [N, 7])."""
    weights = weights or [1.0] * len(members)
    total = float(sum(weights))
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="image")
    # Members are re-wrapped under unique names (two "vgg48" members would clash).
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


def tiny_keras(num_classes: int = len(EMOTIONS)) -> keras.Model:
    """A hand-made Keras model of the contract's shape: stands in for a user's own `.h5`."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="image")
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny_keras")
