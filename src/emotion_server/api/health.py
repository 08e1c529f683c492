"""GET /healthz (liveness: the process answers) and GET /readyz (readiness: the model and the
detector are loaded and one warm-up inference went through the pipeline)."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag
from PIL import Image

from emotion_server.api.errors import error_response as error_json
from emotion_server.api.schemas import (
    COMMON_RESPONSES,
    HealthResponse,
    ReadyResponse,
    error_response,
)
from emotion_server.api.state import app_state
from emotion_server.imaging import decode_image
from emotion_server.pipeline import Pipeline

bp = APIBlueprint(
    "health",
    __name__,
    abp_tags=[Tag(name="operations", description="Health, readiness and metrics")],
    abp_responses=COMMON_RESPONSES,
)

# Larger than the face-crop size, so the warm-up runs the detector as well as the model.
WARM_UP_SIDE = 128


@dataclass
class Readiness:
    """What /readyz reports; create_app fills it in as the worker gets ready."""

    model_loaded: bool = False
    detector_loaded: bool = False
    warm_up_seconds: float | None = None

    @property
    def ready(self) -> bool:
        return self.model_loaded and self.detector_loaded and self.warm_up_seconds is not None


def warm_up_image() -> bytes:
    """A small synthetic PNG (a grey gradient): decoding, detection and the model all run."""
    ramp = np.linspace(0, 255, WARM_UP_SIDE, dtype=np.float32)
    pixels = ((ramp[None, :] + ramp[:, None]) / 2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def warm_up(pipeline: Pipeline, readiness: Readiness) -> None:
    """One inference through the pipeline, so the first client does not pay for lazy set-up."""
    readiness.model_loaded = pipeline.model is not None
    readiness.detector_loaded = pipeline.detector is not None
    started = time.perf_counter()
    # Decoded here, not under the operator's pixel limit, which may be below the warm-up image.
    pipeline.analyze_image(decode_image(warm_up_image(), max_pixels=WARM_UP_SIDE**2))
    readiness.warm_up_seconds = time.perf_counter() - started


@bp.get(
    "/healthz",
    operation_id="healthz",
    summary="Liveness: the worker process answers",
    description="Never needs an API key. For a liveness probe: a failure means restart.",
    responses={200: HealthResponse},
)
def healthz():
    return jsonify(status="ok")


@bp.get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness: model and detector loaded, warm-up inference done",
    description="Never needs an API key. For a readiness probe or a load balancer's health "
    "check: 503 `not_ready` means send no traffic here yet.",
    responses={200: ReadyResponse, 503: error_response("not_ready")},
)
def readyz():
    state = app_state()
    readiness = state.readiness
    if not readiness.ready:
        return error_json(
            "not_ready",
            "The model is not loaded and warmed up yet: try again shortly.",
            503,
            {"Retry-After": "1"},  # the warm-up is one inference
        )
    pipeline = state.pipeline
    return jsonify(
        ReadyResponse(
            status="ready",
            model=Path(state.settings.model_path).name,
            detector=pipeline.detector.name,
            warm_up_ms=round(readiness.warm_up_seconds * 1000, 3),
        ).model_dump()
    )
