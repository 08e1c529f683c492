"""Milliseconds per face of candidate architectures as the server would run them: the served
ONNX (views included), float32 and INT8, batch 1, on N ONNX Runtime threads. Untrained weights
(latency does not depend on their values), INT8 calibrated on noise: for sizing a model before
training it, not for accuracy.

    python bench/model_latency.py --arch-args width=24,dense=256 width=32,dense=256 \\
        --views centre flip [--threads 1]

Needs the [train] extra (PyTorch). The bundled model is timed alongside, as the reference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from train_speed import parse_arch_args  # beside this script

from emotion_server import hostinfo
from emotion_server.training.architectures import build_spec
from emotion_server.training.export import export_torch_onnx
from emotion_server.training.quantize import quantize_onnx
from emotion_server.training.torch_nets import build_torch, parameter_count

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "emotion_model.int8.onnx"


def ms_per_face(path: Path, threads: int, repeats: int = 300) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    face = np.random.default_rng(0).random((1, 48, 48, 1), dtype=np.float32)
    for _ in range(20):
        session.run(None, {name: face})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: face})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default="vgg")
    parser.add_argument("--arch-args", nargs="+", default=["width=24,dense=256"])
    parser.add_argument("--views", nargs="+", default=["centre", "flip"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    noise = np.random.default_rng(1).integers(0, 256, (256, 48, 48), dtype=np.uint8)
    print(f"On {hostinfo.describe()}:\n")
    print(f"| model | params | views | float32 ms/face | INT8 ms/face ({args.threads} thread) |")
    print("|---|---|---|---|---|")
    if BUNDLED.exists():
        bundled = ms_per_face(BUNDLED, args.threads)
        print(f"| bundled ({BUNDLED.name}), its views | - | as served | - | {bundled:.2f} |")
    with tempfile.TemporaryDirectory() as scratch:
        for text in args.arch_args:
            spec = build_spec(args.architecture, **parse_arch_args(text))
            net = build_torch(spec).eval()
            for views in args.views:
                float_path = Path(scratch) / f"{spec.name}-{views}.onnx"
                export_torch_onnx([net], views, float_path)
                int8_path = quantize_onnx(float_path, float_path.with_suffix(".int8.onnx"), noise)
                print(
                    f"| {args.architecture} {text} | {parameter_count(net) / 1e6:.2f} M | {views} "
                    f"| {ms_per_face(float_path, args.threads):.2f} "
                    f"| {ms_per_face(int8_path, args.threads):.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
