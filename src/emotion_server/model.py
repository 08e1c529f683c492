"""The emotion model: loaded once from an ONNX file; a batch of 48x48x1 crops -> 7 probabilities.

The model card (`<model>.json`, written by `emotion-server evaluate`) is read here too, so the
rest of the server asks this room for anything about the model.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emotion_server.contract import EMOTIONS, INPUT_SIZE
from emotion_server.errors import ModelLoadError
from emotion_server.runtime import cpu_session, idle_session

KERAS_SUFFIXES = (".h5", ".keras", ".hdf5")
# The card's fields that /summary and the pipeline read, with their JSON types (null allowed).
_TEXT, _NUMBER, _OBJECT = (str,), (int, float), (dict,)
CARD_FIELDS = {
    **dict.fromkeys(
        ("name", "version", "dataset", "framework", "precision", "created_at", "tta"), _TEXT
    ),
    **dict.fromkeys(("accuracy", "temperature"), _NUMBER),
    **dict.fromkeys(("metrics", "training"), _OBJECT),
}
_JSON_NAMES = {_TEXT: "a string", _NUMBER: "a number", _OBJECT: "an object"}


@dataclass(frozen=True)
class ModelInfo:
    """What /summary reports: from the model card where there is one, else derived or None."""

    name: str
    version: str | None
    accuracy: float | None
    classes: list[str]
    dataset: str | None
    framework: str | None
    input_shape: list[int]
    output_shape: list[int]
    precision: str | None
    created_at: str | None
    card: dict[str, Any]


_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
}


class EmotionModel:
    def __init__(
        self,
        path: str | os.PathLike,
        threads: int = 1,
        idle_threads: int = 0,
        idle: Callable[[], bool] | None = None,
    ):
        path = Path(path)
        if path.suffix.lower() in KERAS_SUFFIXES:
            raise ModelLoadError(
                f"{path} is a Keras file: convert it once with "
                f"`emotion-server export {path}` and serve the .onnx file it writes."
            )
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        try:
            self.session = cpu_session(str(path), threads)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelLoadError(f"cannot load model {path}: {exc}") from exc
        # A lone request's call on the idle cores (runtime.idle_session): about 0.55 of one
        # thread's time on 2 cores for the bundled INT8 model; under load it keeps to `threads`.
        self.idle = idle
        self.idle_session = idle_session(str(path), threads, idle_threads, idle)
        self.path = path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(f"{path}: expected one input and one output")
        self.input_name = inputs[0].name
        self.input_type = inputs[0].type
        in_shape, out_shape = inputs[0].shape, outputs[0].shape
        if list(in_shape[1:]) != [INPUT_SIZE, INPUT_SIZE, 1] or out_shape[-1] != len(EMOTIONS):
            raise ModelLoadError(
                f"{path}: the model must map [N,48,48,1] to [N,7]; it has {in_shape} -> {out_shape}"
            )
        # A model exported with a fixed batch of 1 is fed one crop at a time.
        self.fixed_batch = in_shape[0] if isinstance(in_shape[0], int) else None
        self.card = self._read_card(path.with_suffix(".json"))

    @staticmethod
    def _read_card(path: Path) -> dict[str, Any]:
        """The card beside the model, checked where the server reads it: a hand-written card
        with a field of the wrong type stops the start with its name, not /summary later."""
        if not path.is_file():
            return {}
        try:
            card = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"model card {path} is unreadable: {exc}") from exc
        if not isinstance(card, dict):
            raise ModelLoadError(f"model card {path} is not a JSON object")
        wrong = [
            f"{key} (should be {_JSON_NAMES[kinds]})"
            for key, kinds in CARD_FIELDS.items()
            if card.get(key) is not None
            and (not isinstance(card[key], kinds) or isinstance(card[key], bool))
        ]
        views = (card.get("training") or {}).get("views") if not wrong else None
        if views is not None and not isinstance(views, str):
            wrong.append("training.views (should be a string)")
        if wrong:
            raise ModelLoadError(f"model card {path}: wrong type of {', '.join(wrong)}")
        return card

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N,48,48,1] in [0,1] -> float32 [N,7] probabilities (FER2013 order)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not len(batch):
            return np.zeros((0, len(EMOTIONS)), np.float32)
        if self.fixed_batch == 1 and len(batch) > 1:
            return np.concatenate([self.predict(batch[i : i + 1]) for i in range(len(batch))])
        # Imported here, not at the top: gunicorn's master loads a model to check it
        # (ops.startup_problem) and must not import prometheus_client (metrics.py says why).
        from emotion_server import metrics

        idle = self.idle_session is not None and self.idle()
        session = self.idle_session if idle else self.session
        started = time.perf_counter()
        (probabilities,) = session.run(None, {self.input_name: batch})
        metrics.observe_model_call(len(batch), time.perf_counter() - started, idle)
        return probabilities.astype(np.float32, copy=False)

    def info(self) -> ModelInfo:
        card = self.card
        metadata = self.session.get_modelmeta()
        producer = metadata.producer_name or None
        framework = card.get("framework") or (f"ONNX ({producer})" if producer else "ONNX")
        return ModelInfo(
            name=card.get("name") or self.path.stem,
            version=card.get("version"),
            accuracy=card.get("accuracy"),
            classes=list(EMOTIONS),
            dataset=card.get("dataset"),
            framework=framework,
            input_shape=[1, INPUT_SIZE, INPUT_SIZE, 1],
            output_shape=[1, len(EMOTIONS)],
            precision=card.get("precision")
            or metadata.custom_metadata_map.get("precision")  # `emotion-server quantize` sets it
            or _ONNX_TYPES.get(self.input_type),
            created_at=card.get("created_at"),
            card=card,
        )
