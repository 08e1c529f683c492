"""Compare INT8 quantization recipes on PublicTest (never PrivateTest), as the README reports.

    python scripts/quantization_choice.py [models/emotion_model.onnx]

For the float32 model and each recipe: ms per face on 1 thread (batch 1, no test-time
augmentation, best of 3) and PublicTest accuracy with and without the flip augmentation.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emotion_server.config import Settings
from emotion_server.faces import NoDetector
from emotion_server.model import EmotionModel
from emotion_server.pipeline import Pipeline
from emotion_server.training.data import load_cached
from emotion_server.training.quantize import quantize_model

RECIPES = {
    "INT8 QDQ min-max, 1000 images, seed 0 (default)": {},
    "INT8 QDQ min-max, 2000 images, seed 0": {"images": 2000},
    "INT8 QDQ min-max, 1000 images, seed 1": {"seed": 1},
    "INT8 QDQ min-max, 2000 images, seed 1": {"images": 2000, "seed": 1},
    "INT8 QDQ percentile": {"method": "percentile"},
    "INT8 QOperator min-max": {"operator_format": True},
}
TTA = ("none", "flip")


def ms_per_face(model: EmotionModel) -> float:
    face = np.random.default_rng(0).random((1, 48, 48, 1), dtype=np.float32)
    model.predict(face)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(300):
            model.predict(face)
        best = min(best, (time.perf_counter() - started) / 300 * 1000)
    return best


def public_accuracy(model: EmotionModel, images: np.ndarray, labels: np.ndarray, tta: str):
    pipeline = Pipeline(Settings(tta=tta, detector="none"), model, NoDetector())
    pipeline.temperature = 1.0
    probabilities = np.concatenate(
        [pipeline.classify_crops(list(images[i : i + 512])) for i in range(0, len(images), 512)]
    )
    return float((probabilities.argmax(1) == labels).mean())


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else "models/emotion_model.onnx"
    public = load_cached()["PublicTest"]
    print("| variant | ms/face, 1 thread, batch 1 | PublicTest, no TTA | PublicTest, flip |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        files = {"float32 (the export)": source}
        for index, (name, recipe) in enumerate(RECIPES.items()):
            files[name] = quantize_model(source, Path(folder) / f"{index}.onnx", **recipe)
        for name, path in files.items():
            model = EmotionModel(path)
            accuracy = [public_accuracy(model, public.images, public.labels, t) for t in TTA]
            print(f"| {name} | {ms_per_face(model):.2f} | {accuracy[0]:.2%} | {accuracy[1]:.2%} |")


if __name__ == "__main__":
    main()
