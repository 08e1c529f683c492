"""Keras (.h5 / .keras) -> ONNX, the serving format, checked against Keras on sample inputs.

Uses Keras 3's own exporter on the TensorFlow backend (tf2onnx underneath): it keeps the
batch dimension dynamic, and ONNX Runtime runs the result faster than TensorFlow runs the
original (README, "Why ONNX Runtime").
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

from emotion_server.classes import EMOTIONS, INPUT_SIZE

MAX_ABS_DIFF = 1e-4


def load_keras_model(path: str | os.PathLike):
    """Load a Keras 3 .keras or a Keras 2/3 .h5 file and check it has the server's contract."""
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except (TypeError, ValueError) as exc:
        # Typical for Keras 2 files with SeparableConv2D (the common mini-Xception checkpoints).
        raise ValueError(
            f"Keras {keras.__version__} cannot rebuild {path} from its saved config ({exc}). "
            "Rebuild the architecture in code, call model.load_weights(path), save it as "
            ".keras, and export that file."
        ) from exc
    in_shape, out_shape = tuple(model.input_shape), tuple(model.output_shape)
    if in_shape[1:] != (INPUT_SIZE, INPUT_SIZE, 1) or out_shape[1:] != (len(EMOTIONS),):
        raise ValueError(
            f"{path}: the model must map [N,48,48,1] to [N,7]; it has {in_shape} -> {out_shape}"
        )
    return model


def sample_inputs(count: int = 16, seed: int = 0) -> np.ndarray:
    """Inputs to compare the two runtimes on: noise, flat grey, black, white, gradients."""
    rng = np.random.default_rng(seed)
    batch = rng.random((count, INPUT_SIZE, INPUT_SIZE, 1), dtype=np.float32)
    batch[1] = 0.5
    batch[2] = 0.0
    batch[3] = 1.0
    batch[4, ..., 0] = np.linspace(0, 1, INPUT_SIZE)[None, :]
    return batch


def export_onnx(model_path: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write `model_path` as ONNX (default: same name, .onnx) and verify it matches Keras."""
    import onnxruntime as ort

    model = load_keras_model(model_path)
    output = Path(output) if output else Path(model_path).with_suffix(".onnx")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / "model.onnx"
        inputs = sample_inputs()
        expected = np.asarray(model(inputs, training=False))  # also builds a loaded model
        model.export(str(staged), format="onnx", verbose=False)
        session = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: inputs})
        diff = float(np.max(np.abs(expected - got)))
        if diff > MAX_ABS_DIFF or (expected.argmax(1) != got.argmax(1)).any():
            raise RuntimeError(f"ONNX export differs from Keras (max abs diff {diff:.2e})")
        staged.replace(output)
    return output
