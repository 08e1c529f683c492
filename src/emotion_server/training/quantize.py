"""ONNX float32 -> INT8 (static quantization, calibrated on FER2013 Training images).

The served model's convolutions and dense layers run in INT8 (ONNX Runtime's QLinearConv and
QGemm, VNNI where the CPU has it), about three times faster than float32 on one core; the model
contract is unchanged ([N,48,48,1] float32 in [0,1] -> [N,7] probabilities). Recipe, chosen on
PublicTest (docs/model.md, "INT8 model"): QDQ format, uint8 activations, int8 per-channel weights
(7-bit, so CPUs without VNNI do not saturate),
min-max ranges over a class-stratified sample of Training images and their mirror images (the
flip test-time augmentation feeds the model both), and the Softmax with all that follows it (the
averaging of views and members) kept in float32, so probabilities are not rounded to steps of
1/255 and sum to 1. `emotion-server evaluate` then scores the file
it writes, like any other model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from emotion_server.contract import mirror, scale

PRECISION_KEY = "precision"  # ONNX metadata property, read by emotion_server.model
CALIBRATION_IMAGES = 1000
# `method` names -> onnxruntime.quantization.CalibrationMethod members.
METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
CALIBRATION_BATCH = 50


def stratified_sample(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Indices of exactly `count` items (at most all of them), each class in proportion to its
    frequency and at least once; rounding's shortfall is drawn from the rest at random."""
    rng = np.random.default_rng(seed)
    count = min(count, len(labels))
    classes, frequency = np.unique(labels, return_counts=True)
    chosen = []
    for label, size in zip(classes, frequency, strict=True):
        take = min(size, max(1, round(count * size / len(labels))))
        chosen.append(rng.choice(np.flatnonzero(labels == label), take, replace=False))
    indices = np.concatenate(chosen)
    if len(indices) < count:
        rest = np.setdiff1d(np.arange(len(labels)), indices)
        indices = np.concatenate([indices, rng.choice(rest, count - len(indices), replace=False)])
    rng.shuffle(indices)
    return indices[:count]


def calibration_batches(images: np.ndarray, batch: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    """uint8 [N,48,48] crops -> model inputs with their mirror images, in batches."""
    inputs = scale(images)
    inputs = np.concatenate([inputs, mirror(inputs)])
    return [np.ascontiguousarray(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]


def probability_nodes(graph) -> list[str]:
    """The Softmax nodes and every node fed, directly or not, by their outputs: the averaging
    of test-time views and ensemble members. Kept in float32, so the served probabilities are
    not rounded to steps of 1/255 and still sum to 1."""
    tainted: set[str] = set()
    names: list[str] = []
    for node in graph.node:  # ONNX graphs list nodes in topological order
        if node.op_type == "Softmax" or tainted.intersection(node.input):
            names.append(node.name)
            tainted.update(node.output)
    return names


def quantize_onnx(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    calibration: np.ndarray,
    method: str = "minmax",
    operator_format: bool = False,
) -> Path:
    """Write an INT8 copy of the float32 ONNX model `model_path`, calibrated on `calibration`
    (uint8 [N,48,48] greyscale crops). `method` (minmax, percentile, entropy) and
    `operator_format` (QOperator instead of QDQ) are there to compare recipes."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_path, output = Path(model_path), Path(output)
    input_name = onnx.load(model_path, load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration_batches(calibration))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        # Shape inference and graph clean-up first, as ONNX Runtime's quantization guide asks.
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(prepared).graph
        after_softmax = probability_nodes(graph)
        output.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(prepared),
            str(output),
            Reader(),
            quant_format=QuantFormat.QOperator if operator_format else QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights: without VNNI, ONNX Runtime's uint8 x int8 kernels add products in
            # int16 and saturate. Full-range weights cost the bundled model 3.8 PrivateTest
            # points on an AVX2-only CPU (61.38% vs 65.14% with VNNI); 7 bits give the same
            # answers on every x86 CPU.
            reduce_range=True,
            calibrate_method=getattr(CalibrationMethod, METHODS[method]),
            nodes_to_exclude=after_softmax,
        )
    # Said in the file itself, so /summary reports it for a quantized model without a card.
    quantized = onnx.load(output)
    onnx.helper.set_model_props(quantized, {PRECISION_KEY: "int8"})
    onnx.save(quantized, output)
    return output


def quantize_model(
    model_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    data_path: str | None = None,
    images: int = CALIBRATION_IMAGES,
    seed: int = 0,
    **recipe,
) -> Path:
    """`quantize_onnx` calibrated on a stratified sample of FER2013's Training split."""
    from emotion_server.training.data import load_cached

    training = load_cached(data_path)["Training"]
    sample = training.images[stratified_sample(training.labels, images, seed)]
    output = output or Path(model_path).with_suffix(".int8.onnx")
    return quantize_onnx(model_path, output, sample, **recipe)
