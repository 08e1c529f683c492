"""Shared fixtures: real model, real images, a real gunicorn on a loopback port."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from emotion_server import launcher
from emotion_server.api import create_app
from emotion_server.launcher import free_port  # noqa: F401  (imported by tests)
from emotion_server.training.data import find_dataset

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = ROOT / "models" / "emotion_model.int8.onnx"  # what the server serves
FLOAT32_MODEL = ROOT / "models" / "emotion_model.onnx"  # the export it was quantized from


def encode(array: np.ndarray, fmt: str = "JPEG", **params) -> bytes:
    """A numpy image as file bytes in `fmt`."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real photo with one face, shipped inside scikit-image (never committed here)."""
    from skimage import data

    return data.astronaut()


# The astronaut's face in data.astronaut() (512x512), located by eye: brow to chin, ear to ear.
ASTRONAUT_FACE = (170, 40, 280, 200)  # x1, y1, x2, y2

# The security headers every response carries, written out here rather than read from
# api/security.py, so that a weakened policy there fails the tests instead of passing them.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; media-src 'self' blob:; base-uri 'none'; object-src 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
}


@pytest.fixture(scope="session")
def fer_dataset():
    """FER2013 from ../shared/data or $FER2013_PATH; skips with the reason where absent."""
    location = find_dataset()
    if location is None:
        pytest.skip("FER2013 not found in ../shared/data and $FER2013_PATH is unset")
    from emotion_server.training.data import load_cached

    return load_cached(location)


@pytest.fixture(scope="session")
def fer_private_jpegs() -> list[tuple[str, bytes]]:
    """A few PrivateTest JPEG files, as they are in the archive: (class folder, bytes)."""
    import tarfile

    location = find_dataset()
    if location is None or not location.is_file() or ".tar" not in location.name:
        pytest.skip("FER2013 .tar.gz not found in ../shared/data or $FER2013_PATH")
    found = []
    with tarfile.open(location) as archive:
        for member in archive:
            if "PrivateTest_" in member.name and member.isfile():
                found.append((Path(member.name).parent.name, archive.extractfile(member).read()))
                if len(found) == 20:
                    break
    assert len(found) == 20, f"{location} holds {len(found)} PrivateTest_ files, not 20 or more"
    return found


@pytest.fixture(scope="session")
def app():
    app = create_app({"model_path": str(BUNDLED_MODEL)})
    app.config["TESTING"] = True
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


class GunicornServer(launcher.Server):
    """`emotion-server serve` on 127.0.0.1:<free port> (emotion_server.launcher), ready once
    /readyz answers, serving the bundled model unless told otherwise, with its log kept in
    .pytest_cache for failures."""

    def __init__(self, env: dict[str, str | None] | None = None, workers: int = 1, **options):
        env = dict(env or {})
        if "EMOTION_MODEL_PATH" not in env and "EMOTION_MODEL_PATH" not in os.environ:
            env["EMOTION_MODEL_PATH"] = str(BUNDLED_MODEL)
        (ROOT / ".pytest_cache").mkdir(exist_ok=True)
        log_path = ROOT / ".pytest_cache" / f"gunicorn-{os.getpid()}-{id(self)}.log"
        super().__init__(env=env, workers=workers, log_path=log_path, cwd=ROOT, **options)


@pytest.fixture(scope="session")
def server() -> Iterator[GunicornServer]:
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    running = GunicornServer(workers=2)
    yield running
    running.stop()


def serve_refusal(**environ: str) -> subprocess.CompletedProcess:
    """`emotion-server serve` with these variables set, for settings it must refuse before
    starting gunicorn (exit status 2 and a message on stderr); port 1 if it did start."""
    return subprocess.run(
        [sys.executable, "-m", "emotion_server.cli", "serve"],
        env={**os.environ, "PORT": "1", **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )


def softmax_tail(graph) -> tuple[list, set[str]]:
    """The nodes from each Softmax on (the averaging of views and members), and the tensors
    they write, walked here in the graph's topological order rather than by the quantizer's
    own choice of what to leave in float32."""
    nodes, tensors = [], set()
    for node in graph.node:
        if node.op_type == "Softmax" or tensors.intersection(node.input):
            nodes.append(node)
            tensors.update(node.output)
    return nodes, tensors


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="session")
def cramped_server(tmp_path_factory):
    """A server whose temporary folder (TMPDIR) is a 1 MiB tmpfs, as a small in-memory /tmp
    would be (tests of the 507 answer). Mounting one needs root (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 1 MiB tmpfs needs root (CI runs the tests as root)")
    folder = tmp_path_factory.mktemp("cramped")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder / "")],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    metrics = tmp_path_factory.mktemp("metrics")
    running = GunicornServer(env={"TMPDIR": str(folder), "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    yield running
    running.stop()
    subprocess.run(["umount", str(folder)], check=False)
