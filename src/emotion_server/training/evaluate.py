"""Score a served model on FER2013 PrivateTest through the serving code; write its model card.

The probabilities come from `Pipeline.classify_crops` (the ONNX file in ONNX Runtime, with the
server's test-time augmentation), so the accuracy written is what clients of /inference get.
PublicTest is scored too, for reference: it is the split models were chosen on.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from emotion_server import __version__, hostinfo
from emotion_server.contract import EMOTIONS, INPUT_SHAPE, OUTPUT_SHAPE, apply_temperature
from emotion_server.faces import NoDetector
from emotion_server.model import EmotionModel
from emotion_server.pipeline import TTA_MODES, Pipeline, PipelineOptions
from emotion_server.training.data import load_cached

ECE_BINS = 15


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS):
    """ECE with equal-width confidence bins; also returns the per-bin table for the plot."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    ece, table = 0.0, []
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = abs(correct[inside].mean() - confidence[inside].mean())
            ece += inside.mean() * gap
            table.append(
                (
                    float(low),
                    float(high),
                    float(confidence[inside].mean()),
                    float(correct[inside].mean()),
                    int(inside.sum()),
                )
            )
    return float(ece), table


def split_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = probabilities.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(len(EMOTIONS)), zero_division=0
    )
    ece, reliability = expected_calibration_error(probabilities, labels)
    return {
        "images": len(labels),
        "accuracy": round(float((predicted == labels).mean()), 4),
        "macro_f1": round(float(f1.mean()), 4),
        "ece_15_bins": round(ece, 4),
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, name in enumerate(EMOTIONS)
        },
        "confusion_matrix": confusion_matrix(
            labels, predicted, labels=range(len(EMOTIONS))
        ).tolist(),
        "reliability": reliability,
    }


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising negative log-likelihood (a 1-D search, coarse then fine)."""

    def nll(temperature: float) -> float:
        scaled = apply_temperature(probabilities, temperature)
        return float(-np.log(np.clip(scaled[np.arange(len(labels)), labels], 1e-12, None)).mean())

    grid = np.arange(0.5, 3.0001, 0.05)
    best = min(grid, key=nll)
    fine = np.arange(best - 0.05, best + 0.05001, 0.005)
    return round(float(min(fine, key=nll)), 3)


def classify_split(pipeline: Pipeline, images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """uint8 [N,48,48] crops -> [N,7] probabilities through the serving path, in chunks."""
    return np.concatenate(
        [pipeline.classify_crops(list(images[i : i + chunk])) for i in range(0, len(images), chunk)]
    )


# Wall time this much over the CPU time of the thread that ran the model: other processes had
# the CPU, and the figure is not the model's cost on a core of its own.
BUSY_RATIO = 1.25


def ms_per_face(pipeline: Pipeline, repeats: int = 200) -> float:
    """Median milliseconds for one 48x48 crop, batch 1, test-time augmentation included (the
    model on one thread, which is this one). Says so on stderr where the machine was busy."""
    crop = [np.full((48, 48), 128, np.uint8)]
    for _ in range(10):
        pipeline.classify_crops(crop)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        pipeline.classify_crops(crop)
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    wall_ms, cpu_ms = float(np.median(wall)) * 1000, float(np.median(cpu)) * 1000
    note = busy_note(wall_ms, cpu_ms)
    if note:
        print(note, file=sys.stderr)
    return round(wall_ms, 3)


def busy_note(wall_ms: float, cpu_ms: float) -> str | None:
    """A warning where the time per face was measured on a busy machine, else None."""
    if wall_ms <= BUSY_RATIO * cpu_ms:
        return None
    return (
        f"warning: {wall_ms:.2f} ms per face of wall time against {cpu_ms:.2f} ms of the "
        "model's CPU time: other processes had the CPU. Measure again with nothing else "
        "running before this figure ships."
    )


def print_report(split: str, metrics: dict) -> None:
    print(
        f"\n{split}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
        f"ECE {metrics['ece_15_bins']:.4f} ({metrics['images']} images)"
    )
    print(f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, row in metrics["per_class"].items():
        print(
            f"{name:<10}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
            f"{row['support']:>10}"
        )
    print("confusion matrix (rows: true, columns: predicted)")
    print(" " * 10 + "".join(f"{name[:8]:>9}" for name in EMOTIONS))
    for name, row in zip(EMOTIONS, metrics["confusion_matrix"], strict=True):
        print(f"{name:<10}" + "".join(f"{value:>9}" for value in row))


def write_plots(metrics: dict, before: dict, folder: Path, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    matrix = np.array(metrics["confusion_matrix"], dtype=float)
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(7), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(7), EMOTIONS)
    for i in range(7):
        for j in range(7):
            ax.text(
                j,
                i,
                f"{normalised[i, j]:.2f}\n({int(matrix[i, j])})",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if normalised[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"PrivateTest confusion matrix (accuracy {metrics['accuracy']:.1%})")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    paths.append(folder / f"{stem}_confusion_matrix.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(7)
    for offset, key in zip((-0.27, 0, 0.27), ("precision", "recall", "f1"), strict=True):
        ax.bar(x + offset, [metrics["per_class"][n][key] for n in EMOTIONS], 0.27, label=key)
    ax.set_xticks(x, EMOTIONS)
    ax.set_ylim(0, 1)
    ax.legend(ncols=3, loc="upper left")
    ax.set_title("PrivateTest per-class precision, recall and F1")
    fig.tight_layout()
    paths.append(folder / f"{stem}_per_class.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    for label, table, colour in (
        (f"before (ECE {before['ece_15_bins']:.3f})", before["reliability"], "tab:grey"),
        (
            f"after temperature scaling (ECE {metrics['ece_15_bins']:.3f})",
            metrics["reliability"],
            "tab:blue",
        ),
    ):
        ax.plot(
            [row[2] for row in table], [row[3] for row in table], "o-", color=colour, label=label
        )
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence in bin (15 bins)")
    ax.set_ylabel("accuracy in bin")
    ax.set_title("PrivateTest reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    paths.append(folder / f"{stem}_reliability.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return [str(path) for path in paths]


def framework_text(info: dict, precision: str, runtime_version: str) -> str:
    """What trained the model, what ships, what serves it: from the run's export info."""
    served = ("quantized to INT8 and " if precision == "int8" else "") + (
        f"served as ONNX by ONNX Runtime {runtime_version}"
    )
    if info.get("trained_with"):
        return f"trained with {info['trained_with']}, shipped as {info['shipped_as']}, {served}"
    if info.get("keras_version"):  # a model trained by Keras itself
        return f"Keras {info['keras_version']} ({info['backend']} backend), {served}"
    return f"ONNX, {served}"


def evaluate(
    model_path: str | os.PathLike = "models/emotion_model.onnx",
    data_path: str | None = None,
    train_info: str | os.PathLike | None = None,
    tta: str = "auto",
    plots_dir: str | os.PathLike | None = "docs",
    name: str = "emotion-classifier",
    version: str | None = None,
    public_only: bool = False,
) -> dict:
    """Score `model_path` on PrivateTest (and PublicTest), print the report, write the card;
    with `public_only`, score PublicTest alone and write nothing.

    `tta="auto"` adds the server's mirror image where it wins on PublicTest, unless the
    training info records the views built into the model's graph (`views`)."""
    import onnxruntime

    model = EmotionModel(model_path)
    data = load_cached(data_path)
    public = data["PublicTest"]
    info = json.loads(Path(train_info).read_text()) if train_info else {}
    # A model card names its training run under "training": the INT8 model is scored with the
    # card of the float32 model it was quantized from.
    info = info.get("training", info) or {}
    tta_scores = {}
    if tta == "auto" and info.get("views"):
        # Its test-time views were chosen at export (on PublicTest, or for their cost) and are
        # in its graph: the server adds no mirror image of its own (it would double the cost).
        tta = "none"
        print(f"test-time views in the model's graph: {info['views']}; the server adds none")
    elif tta == "auto":
        # Test-time augmentation is a hyper-parameter: chosen on PublicTest, like the rest.
        for mode in TTA_MODES:
            chooser = Pipeline(model, NoDetector(), PipelineOptions(tta=mode))
            chooser.temperature = 1.0
            predicted = classify_split(chooser, public.images).argmax(1)
            tta_scores[mode] = round(float((predicted == public.labels).mean()), 4)
        tta = max(TTA_MODES, key=lambda mode: tta_scores[mode])  # ties: the cheaper "none"
        print(f"test-time augmentation on PublicTest: {tta_scores}; chosen: {tta}")
    pipeline = Pipeline(model, NoDetector(), PipelineOptions(tta=tta))
    pipeline.temperature = 1.0  # score the raw outputs first; calibration is fitted below
    if public_only:
        # For choosing between candidates: PublicTest alone, nothing written, PrivateTest
        # never read (it is scored once, for the model chosen).
        metrics = split_metrics(classify_split(pipeline, public.images), public.labels)
        print_report("PublicTest", metrics)
        speed = ms_per_face(pipeline)
        print(f"\n{speed} ms per face on one thread (test-time augmentation {tta})")
        return {"tta": tta, "ms_per_face_1_thread": speed, "PublicTest": metrics}
    raw = {}
    for split in ("PrivateTest", "PublicTest"):
        raw[split] = classify_split(pipeline, data[split].images)
    # Temperature scaling, fitted on PublicTest only (PrivateTest is never used to choose), and
    # kept only where it lowers PublicTest's calibration error.
    public_labels = data["PublicTest"].labels
    fitted = fit_temperature(raw["PublicTest"], public_labels)
    public_ece = {
        "before": split_metrics(raw["PublicTest"], public_labels)["ece_15_bins"],
        "after": split_metrics(apply_temperature(raw["PublicTest"], fitted), public_labels)[
            "ece_15_bins"
        ],
    }
    temperature = fitted if public_ece["after"] < public_ece["before"] else 1.0
    metrics = {
        split: split_metrics(apply_temperature(probs, temperature), data[split].labels)
        for split, probs in raw.items()
    }
    uncalibrated = split_metrics(raw["PrivateTest"], data["PrivateTest"].labels)
    print_report("PrivateTest", metrics["PrivateTest"])
    print(f"\nPublicTest (model selection split): accuracy {metrics['PublicTest']['accuracy']:.4f}")
    print(
        f"calibration: temperature {fitted} fitted on PublicTest (ECE there "
        f"{public_ece['before']:.4f} before, {public_ece['after']:.4f} after: "
        f"{'kept' if temperature != 1.0 else 'not kept'}); PrivateTest ECE "
        f"{uncalibrated['ece_15_bins']:.4f} before, "
        f"{metrics['PrivateTest']['ece_15_bins']:.4f} after"
    )
    pipeline.temperature = temperature

    model_file = Path(model_path)
    precision = model.info().precision
    card = {
        "name": name,
        "version": version or __version__,
        "accuracy": metrics["PrivateTest"]["accuracy"],
        "classes": list(EMOTIONS),
        "dataset": "FER2013 (trained on Training, chosen on PublicTest, scored on PrivateTest)",
        "framework": framework_text(info, precision, onnxruntime.__version__),
        "input_shape": list(INPUT_SHAPE),
        "output_shape": list(OUTPUT_SHAPE),
        "precision": precision,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tta": tta,
        "tta_public_test_accuracy": tta_scores or None,
        "temperature": temperature,
        "calibration": {
            "method": "temperature scaling fitted on PublicTest (negative log-likelihood), "
            "kept only where it lowers PublicTest's ECE",
            "fitted_temperature": fitted,
            "kept": temperature != 1.0,
            "public_test_ece_before": public_ece["before"],
            "public_test_ece_after": public_ece["after"],
            "private_test_ece_before": uncalibrated["ece_15_bins"],
            "private_test_ece_after": metrics["PrivateTest"]["ece_15_bins"],
        },
        "ms_per_face_1_thread": ms_per_face(pipeline),
        # ...on this CPU: its vector instructions decide the INT8 model's speed (hostinfo.py).
        "cpu": hostinfo.cpu(),
        "parameters": info.get("parameters"),
        "metrics": {
            split: {k: v for k, v in m.items() if k != "reliability"}
            for split, m in metrics.items()
        },
        "training": info or None,
        "dataset_sha256": data.sha256,
        "evaluated_on": (
            f"{hostinfo.describe()}, {platform.machine()}, Python {sys.version.split()[0]}"
        ),
        "evaluation_command": "emotion-server evaluate " + " ".join(sys.argv[2:])
        if len(sys.argv) > 1 and sys.argv[1] == "evaluate"
        else None,
    }
    card_path = model_file.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"\nwrote {card_path}")
    if plots_dir:
        for path in write_plots(
            metrics["PrivateTest"], uncalibrated, Path(plots_dir), model_file.stem
        ):
            print(f"wrote {path}")
    return card
