"""Shared fixtures: real model, real images, a real gunicorn on a loopback port."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from emotion_server.api import create_app
from emotion_server.training.data import find_dataset

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = ROOT / "models" / "emotion_model.onnx"


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
    return found


@pytest.fixture(scope="session")
def app():
    app = create_app({"model_path": str(BUNDLED_MODEL)})
    app.config["TESTING"] = True
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GunicornServer:
    """gunicorn with the app factory on 127.0.0.1:<free port>, as production runs it."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        workers: int = 1,
        config: str = "python:emotion_server.gunicorn_conf",
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "WEB_CONCURRENCY": str(workers),
            **(env or {}),
        }
        environment.setdefault("EMOTION_MODEL_PATH", str(BUNDLED_MODEL))
        self.log = open(ROOT / ".pytest_cache" / f"gunicorn-{self.port}.log", "w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                config,
                "emotion_server.api:create_app()",
            ],
            cwd=ROOT,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.output()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn did not become healthy: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server() -> Iterator[GunicornServer]:
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    running = GunicornServer(workers=2)
    yield running
    running.stop()
