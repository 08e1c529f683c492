"""Compare INT8 quantization recipes on PublicTest (never PrivateTest), as docs/model.md reports.

    python scripts/model/quantization_choice.py [models/emotion_model.onnx]

For the float32 model and each recipe: ms per face on 1 thread through the serving path
(evaluate's measure: median, batch 1, here without test-time augmentation) and PublicTest
accuracy with and without the flip augmentation.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from emotion_server.faces import NoDetector
from emotion_server.model import EmotionModel
from emotion_server.pipeline import Pipeline, PipelineOptions
from emotion_server.training.data import load_cached
from emotion_server.training.evaluate import classify_split, ms_per_face
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


def scores(model: EmotionModel, public) -> list[float]:
    """ms per face (batch 1, no test-time augmentation), then PublicTest accuracy per TTA."""
    row = []
    for tta in TTA:
        pipeline = Pipeline(model, NoDetector(), PipelineOptions(tta=tta))
        pipeline.temperature = 1.0
        if tta == "none":
            row.append(ms_per_face(pipeline))
        predicted = classify_split(pipeline, public.images).argmax(1)
        row.append(float((predicted == public.labels).mean()))
    return row


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
            ms, plain, flip = scores(EmotionModel(path), public)
            print(f"| {name} | {ms:.2f} | {plain:.2%} | {flip:.2%} |")


if __name__ == "__main__":
    main()
