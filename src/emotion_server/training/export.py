"""Models into the serving format, each step checked against the one before on sample inputs.

- `export_run`: a training run's best PyTorch weights -> the shipped Keras `.h5` (built from
  the same architecture description) and the served ONNX (straight from PyTorch, a plainer and
  faster graph than Keras's); PyTorch, the `.h5` and ONNX must agree.
- `export_onnx`: any Keras `.h5`/`.keras` of the contract's shape (a user's own model) -> ONNX.

Keras runs on its PyTorch backend here (no TensorFlow in any install): Keras's own exporter
hands the model to `torch.onnx`, keeping the batch dimension dynamic.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from emotion_server import hostinfo
from emotion_server.contract import EMOTIONS, INPUT_SIZE, scale

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
    """Inputs to compare runtimes on: noise, flat grey, black, white, gradients."""
    rng = np.random.default_rng(seed)
    batch = rng.random((count, INPUT_SIZE, INPUT_SIZE, 1), dtype=np.float32)
    batch[1] = 0.5
    batch[2] = 0.0
    batch[3] = 1.0
    batch[4, ..., 0] = np.linspace(0, 1, INPUT_SIZE)[None, :]
    return batch


def keras_predict(model, inputs: np.ndarray) -> np.ndarray:
    out = model(inputs, training=False)
    return np.asarray(out.detach().cpu() if hasattr(out, "detach") else out)


def check_parity(name: str, expected: np.ndarray, got: np.ndarray) -> float:
    diff = float(np.max(np.abs(expected - got)))
    if diff > MAX_ABS_DIFF or (expected.argmax(1) != got.argmax(1)).any():
        raise RuntimeError(f"{name} differ (max abs diff {diff:.2e})")
    return diff


@contextlib.contextmanager
def staged(output: Path) -> Iterator[tuple[Path, Path]]:
    """Where to write `output` (.h5) and its .onnx: a scratch folder beside it (one file
    system, so the files can be renamed into place), whose files replace the outputs only when
    the block ends without an error: a failed parity check leaves the files that were there.
    Every file written into the folder is moved beside `output` (an ensemble's parts)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as scratch:
        h5 = Path(scratch) / output.name
        onnx = h5.with_suffix(".onnx")
        yield h5, onnx
        for written in sorted(Path(scratch).iterdir(), key=lambda f: f == h5):  # .h5 last
            written.replace(output.parent / written.name)


def export_onnx(model_path: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write `model_path` as ONNX (default: same name, .onnx) and verify it matches Keras."""
    import onnxruntime as ort

    model = load_keras_model(model_path)
    output = Path(output) if output else Path(model_path).with_suffix(".onnx")
    output.parent.mkdir(parents=True, exist_ok=True)
    # Beside the output: a rename across file systems (a tmpfs /tmp) would fail.
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as scratch:
        staged = Path(scratch) / "model.onnx"
        inputs = sample_inputs()
        expected = keras_predict(model, inputs)  # also builds a loaded model
        with warnings.catch_warnings():
            # torch.onnx's tracer warns about every Python-level shape check in Keras's layers.
            warnings.simplefilter("ignore")
            model.export(str(staged), format="onnx", verbose=False)
        session = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: inputs})
        check_parity("ONNX export and Keras", expected, got)
        staged.replace(output)
    return output


def export_torch_onnx(
    nets: list, views: str, output: Path, weights: list[float] | None = None
) -> Path:
    """The served ONNX file straight from PyTorch (`torch_nets.Served`: the networks, their
    views, their weights), batch dimension dynamic, written to `output` as it is: callers
    write it into `staged()`'s scratch folder and check it against the .h5 there."""
    import torch

    from emotion_server.training.torch_nets import Served

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            Served(nets, views, weights),
            (torch.zeros(1, INPUT_SIZE, INPUT_SIZE, 1),),
            str(output),
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return output


def export_run(
    run: str | os.PathLike,
    output: str | os.PathLike,
    views: str = "flip",
    balance: str = "none",
    data_path: str | None = None,
) -> dict:
    """A run's best weights -> `output` (.h5) and the .onnx beside it, plus `<stem>.train.json`
    (what trained it, for `evaluate --train-info`). PyTorch, Keras and ONNX must agree.

    `balance="auto"` fits a logit adjustment for the rare classes on PublicTest
    (`training.balance`) and builds it into the final layer's bias.
    """
    import keras
    import onnxruntime as ort
    import torch

    from emotion_server.training import keras_nets
    from emotion_server.training.train import (
        predict_views,
        resolve_run,
        runs_summary,
        shipped_weights,
    )

    folder = resolve_run(run)
    net, weights = shipped_weights(folder, views)
    balanced = None
    if balance == "auto":
        from emotion_server.training.balance import class_prior, fit_balance
        from emotion_server.training.data import load_cached

        data = load_cached(data_path)
        public = data["PublicTest"]
        balanced = fit_balance(
            predict_views(net, public.images, views),
            public.labels,
            class_prior(data["Training"].labels),
        )
        with torch.no_grad():
            net.layers["probabilities"].bias += torch.tensor(balanced.bias, dtype=torch.float32)
    elif balance != "none":
        raise ValueError(f"balance must be 'auto' or 'none', got {balance!r}")
    from emotion_server.training.train import predict_proba

    if balanced is not None:  # what ships: these views, the adjusted bias
        shipped_accuracy = balanced.public_test["chosen"]["accuracy"]
    else:  # in float32 (training scored its epochs under bfloat16 autocast)
        from emotion_server.training.data import load_cached

        public = load_cached(data_path)["PublicTest"]
        shipped_accuracy = float(
            (predict_proba(net, public.images, views).argmax(1) == public.labels).mean()
        )
    model = keras_nets.from_torch(net, views, name=Path(output).stem)
    output = Path(output)
    onnx_path = output.with_suffix(".onnx")
    info_path = output.with_suffix(".train.json")
    with staged(output) as (h5_staged, onnx_staged):
        model.save(h5_staged)
        export_torch_onnx([net], views, onnx_staged)

        # Three-way parity on sample inputs: the trained network, the shipped file, the served
        # file; checked before they replace anything.
        inputs = sample_inputs()
        expected = predict_proba(net, np.round(inputs[..., 0] * 255).astype(np.uint8), views)
        as_uint8 = scale(np.round(inputs[..., 0] * 255).astype(np.uint8))
        shipped = keras_predict(keras.saving.load_model(h5_staged, compile=False), as_uint8)
        session = ort.InferenceSession(str(onnx_staged), providers=["CPUExecutionProvider"])
        (served,) = session.run(None, {session.get_inputs()[0].name: as_uint8})
        report = {
            "torch_vs_keras": check_parity("PyTorch and the .h5", expected, shipped),
            "torch_vs_onnx": check_parity("PyTorch and the ONNX file", expected, served),
        }
        summary = runs_summary(folder)
        info = {
            **summary,
            # The exported weights' file, epoch and bf16 PublicTest scores during training,
            # beside the run's best flip epoch.
            **weights,
            "run_best_flip": summary["best"],
            "best_epoch": weights["best"]["epoch"],
            # PublicTest accuracy of the exported model as it answers (its views and bias).
            "public_test_accuracy": round(float(shipped_accuracy), 4),
            "views": views,
            "balance": balanced.to_dict() if balanced else None,
            "parameters": int(sum(p.numel() for p in net.parameters())),
            "trained_with": f"PyTorch {torch.__version__.split('+')[0]}",
            "shipped_as": f"Keras {keras.__version__} .h5",
            "parity_max_abs_diff": report,
            "exported_on": f"{hostinfo.describe()}, {platform.machine()}",
        }
        # In the scratch folder too: it replaces the old one with the model files, never
        # leaving a new model beside an old run's description.
        h5_staged.with_suffix(".train.json").write_text(json.dumps(info, indent=2) + "\n")
    return {"h5": str(output), "onnx": str(onnx_path), "train_info": str(info_path), **report}
