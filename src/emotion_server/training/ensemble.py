"""Ensembles chosen on PublicTest: greedy selection with replacement (Caruana et al., 2004).

Members' probabilities on PublicTest (flip test-time augmentation, as served) decide the
weights; the ensemble is built as one Keras model (`architectures.ensemble`) and exported like
any other, so the serving contract does not change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from emotion_server.training.data import load_cached
from emotion_server.training.export import load_keras_model


def greedy_weights(probabilities: list[np.ndarray], labels: np.ndarray, rounds: int = 25):
    """Add, one at a time and with replacement, the member that most improves the accuracy
    (ties: the log-likelihood) of the running mean; return each member's count."""
    counts = np.zeros(len(probabilities), dtype=int)
    total = np.zeros_like(probabilities[0])

    def score(mean: np.ndarray) -> tuple[float, float]:
        picked = np.clip(mean[np.arange(len(labels)), labels], 1e-12, None)
        return float((mean.argmax(1) == labels).mean()), float(np.log(picked).mean())

    best_score = (-1.0, -np.inf)
    for _ in range(rounds):
        trials = [score((total + p) / (counts.sum() + 1)) for p in probabilities]
        choice = int(max(range(len(trials)), key=lambda i: trials[i]))
        if trials[choice] <= best_score and counts.sum():
            break
        best_score = trials[choice]
        counts[choice] += 1
        total += probabilities[choice]
    return counts.tolist(), best_score[0]


def build_ensemble(
    members: list[str | os.PathLike], output: str | os.PathLike, data_path: str | None = None
) -> dict:
    """Fit weights on PublicTest, save the ensemble as .keras, return the report."""
    from emotion_server.training.architectures import ensemble

    data = load_cached(data_path)
    x = (data["PublicTest"].images.astype(np.float32) / 255.0)[..., None]
    labels = data["PublicTest"].labels
    models, probabilities, report = [], [], {"members": []}
    for path in members:
        model = load_keras_model(path)
        probs = (
            np.asarray(model.predict(x, verbose=0))
            + np.asarray(model.predict(x[:, :, ::-1], verbose=0))
        ) / 2
        models.append(model)
        probabilities.append(probs)
        accuracy = float((probs.argmax(1) == labels).mean())
        report["members"].append({"model": str(path), "public_test_accuracy": round(accuracy, 4)})
    weights, accuracy = greedy_weights(probabilities, labels)
    for member, weight in zip(report["members"], weights, strict=True):
        member["weight"] = weight
    report["public_test_accuracy"] = round(accuracy, 4)
    ensemble(models, weights).save(output)
    Path(output).with_suffix(".ensemble.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
