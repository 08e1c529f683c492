"""Post-hoc logit adjustment for the rare classes, fitted on PublicTest.

FER2013 Training has 436 disgust faces against 7,215 happy ones, so a network trained on it
rarely answers "disgust". Subtracting tau * log(prior) from the logits (Menon et al., 2021,
"Long-tail learning via logit adjustment") moves answers towards the rare classes; tau = 0 is
the network as trained. It costs nothing at inference: the shift goes into the final layer's
bias (`export --balance auto`).

tau is chosen on PublicTest: the best macro-F1 among the values that keep accuracy within
`max_accuracy_drop` of the unadjusted model's, because accuracy is what clients see first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from emotion_server.contract import EMOTIONS

TAUS = tuple(np.round(np.arange(0.0, 1.51, 0.1), 2))


@dataclass(frozen=True)
class Balance:
    tau: float
    bias: list[float]  # added to the final layer's bias
    public_test: dict  # accuracy, macro-F1 and per-class recall at the chosen tau and at 0

    def to_dict(self) -> dict:
        return asdict(self)


def class_prior(labels: np.ndarray, classes: int = len(EMOTIONS)) -> np.ndarray:
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    return counts / counts.sum()


def adjust(views: list[np.ndarray], prior: np.ndarray, tau: float) -> np.ndarray:
    """Mean over views of softmax(logits - tau * log(prior)), from each view's probabilities
    (exactly what the exported model computes with the shifted bias)."""
    weights = prior ** (-tau)
    adjusted = [p * weights for p in views]
    return np.mean([a / a.sum(1, keepdims=True) for a in adjusted], axis=0)


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    predicted = probabilities.argmax(1)
    recall, f1 = [], []
    for c in range(len(EMOTIONS)):
        true_positive = float(np.sum((predicted == c) & (labels == c)))
        support, chosen = float(np.sum(labels == c)), float(np.sum(predicted == c))
        r = true_positive / support if support else 0.0
        p = true_positive / chosen if chosen else 0.0
        recall.append(round(r, 4))
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {
        "accuracy": round(float((predicted == labels).mean()), 4),
        "macro_f1": round(float(np.mean(f1)), 4),
        "recall": dict(zip(EMOTIONS, recall, strict=True)),
    }


def fit_balance(
    views: list[np.ndarray],
    labels: np.ndarray,
    prior: np.ndarray,
    max_accuracy_drop: float = 0.003,
    taus: tuple[float, ...] = TAUS,
) -> Balance:
    """Choose tau on PublicTest (views: each test-time view's probabilities)."""
    table = {tau: scores(adjust(views, prior, tau), labels) for tau in taus}
    floor = table[taus[0]]["accuracy"] - max_accuracy_drop
    allowed = [tau for tau in taus if table[tau]["accuracy"] >= floor]
    tau = max(allowed, key=lambda t: (table[t]["macro_f1"], -t))
    return Balance(
        tau=float(tau),
        bias=[round(float(b), 6) for b in -tau * np.log(prior)],
        public_test={"chosen": table[tau], "unadjusted": table[taus[0]]},
    )
