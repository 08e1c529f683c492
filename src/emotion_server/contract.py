"""The model contract, shared by serving, evaluation, export, quantization and training.

A model maps float32 [N, 48, 48, 1] greyscale faces scaled to [0, 1] to [N, 7] softmax
probabilities in FER2013's label order. Test-time mirroring and temperature scaling are applied
on top of that contract, here, so every caller computes them the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# FER2013 label order 0..6: the model's output order. Never derive it from folder order.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 48
INPUT_SHAPE = (1, INPUT_SIZE, INPUT_SIZE, 1)
OUTPUT_SHAPE = (1, len(EMOTIONS))


def scale(faces: np.ndarray) -> np.ndarray:
    """uint8 [N, 48, 48] faces -> the model's float32 [N, 48, 48, 1] input in [0, 1]."""
    return (np.asarray(faces, dtype=np.float32) / np.float32(255.0))[..., None]


def mirror(batch: np.ndarray) -> np.ndarray:
    """Left-right mirror images of a [N, H, W, C] batch."""
    return batch[:, :, ::-1]


def mirror_average(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> np.ndarray:
    """The flip test-time augmentation: mean probabilities of each face and its mirror image,
    in one call of `predict` on both."""
    both = predict(np.concatenate([batch, mirror(batch)]))
    return (both[: len(batch)] + both[len(batch) :]) / 2


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of softmax outputs: softmax(log(p) / T); T > 1 softens them."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-12, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32)
