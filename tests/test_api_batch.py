"""POST /inference/batch on the real bundled model: Flask's test client, then gunicorn."""

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import requests
from bad_inputs import png_chunk
from conftest import BUNDLED_MODEL, ROOT, encode
from PIL import Image

from emotion_server.api import create_app
from emotion_server.api.state import state_of
from emotion_server.config import Settings

RAW = {"Content-Type": "application/octet-stream"}


class CountingModel:
    """The real model, with a count of its predict() calls and of the rows in each."""

    def __init__(self, model):
        self.model = model
        self.calls: list[int] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return self.model.predict(batch)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.fixture(scope="module")
def counted_app():
    app = create_app({"model_path": str(BUNDLED_MODEL), "max_batch_images": 5})
    pipeline = state_of(app).pipeline
    pipeline.model = CountingModel(pipeline.model)
    return app


@pytest.fixture(scope="module")
def images(astronaut) -> dict[str, bytes]:
    """One face, a 48x48 face crop, two faces, no face, and a text file named .jpg."""
    face = Image.fromarray(astronaut).crop((150, 20, 300, 220))
    two = np.full((600, 900, 3), 120, np.uint8)
    two[50:450, 50:350] = np.asarray(face.resize((300, 400)))
    two[300:400, 600:675] = np.asarray(face.resize((75, 100)))
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    return {
        "astronaut.jpg": encode(astronaut, "JPEG"),
        "crop.png": encode(gray[60:108, 200:248], "PNG"),
        "two_faces.png": encode(two, "PNG"),
        "no_face.png": encode(np.full((300, 300), 90, np.uint8), "PNG"),
        "notes.jpg": b"just some text, not an image\n",
    }


def _form(files: dict[str, bytes]) -> dict:
    return {"images": [(io.BytesIO(data), name) for name, data in files.items()]}


def _assert_close(batch, single, path="body"):
    """Same JSON, numbers within 1e-5."""
    if isinstance(single, dict):
        assert set(batch) == set(single), path
        for key in single:
            _assert_close(batch[key], single[key], f"{path}.{key}")
    elif isinstance(single, list):
        assert len(batch) == len(single), path
        for index, (b, s) in enumerate(zip(batch, single, strict=True)):
            _assert_close(b, s, f"{path}[{index}]")
    elif isinstance(single, float):
        assert batch == pytest.approx(single, abs=1e-5), path
    else:
        assert batch == single, path


def test_batch_equals_single_inference_in_one_model_call(counted_app, images):
    client = counted_app.test_client()
    model = state_of(counted_app).pipeline.model
    singles = {
        name: client.post("/inference", data=data, headers=RAW) for name, data in images.items()
    }
    model.calls.clear()

    response = client.post(
        "/inference/batch", data=_form(images), content_type="multipart/form-data"
    )

    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert [r["filename"] for r in results] == list(images)
    # Every face of every image went through the model in ONE call: 1 + 1 + 2 + 1 crops
    # (and as many mirror images where the model's test-time augmentation is flip).
    copies = 2 if state_of(counted_app).pipeline.tta == "flip" else 1
    assert model.calls == [5 * copies]
    for result, (name, single) in zip(results, singles.items(), strict=True):
        expected = single.get_json()
        if single.status_code == 200:
            _assert_close({k: v for k, v in result.items() if k != "filename"}, expected)
        else:
            assert {k: v for k, v in result.items() if k != "filename"} == expected, name
    assert results[2]["face_detected"] and len(results[2]["faces"]) == 2
    assert results[4]["error"] == "invalid_image" and results[4]["message"]


def test_empty_and_oversized_files_get_their_own_errors(astronaut):
    app = create_app({"model_path": str(BUNDLED_MODEL), "max_upload_bytes": 200_000})
    small = encode(np.full((48, 48), 128, np.uint8), "PNG")
    big = encode(astronaut, "PNG")
    assert len(big) > 200_000
    files = {"empty.jpg": b"", "big.png": big, "small.png": small}
    response = app.test_client().post(
        "/inference/batch", data=_form(files), content_type="multipart/form-data"
    )
    assert response.status_code == 200
    empty, too_big, ok = response.get_json()["results"]
    assert empty == {"filename": "empty.jpg", "error": "empty_body", "message": empty["message"]}
    assert too_big == {
        "filename": "big.png",
        "error": "payload_too_large",
        "message": "The file is over the limit of 200000 bytes.",
    }
    assert ok["filename"] == "small.png" and ok["whole_image_reason"] == "image_is_face_crop"


def _big_png(width: int = 7300, height: int = 5470) -> bytes:
    """A 40-megapixel greyscale PNG of stripes, made by hand (Pillow takes seconds to write one):
    a few hundred kB that take a worker a good part of a second to decode and analyse."""
    row = b"\x00" + bytes((np.arange(width) // 8 % 256).astype(np.uint8))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(row * height, 1)
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        png_chunk(kind, body) for kind, body in ((b"IHDR", header), (b"IDAT", data), (b"IEND", b""))
    )


def test_a_batch_stops_within_the_time_a_request_may_use():
    """EMOTION_TIMEOUT=1: the batch may spend 0.8 s, sixteen 40-megapixel PNGs take several. The
    answer is a 200 with the first file analysed and the last left unread (a worker busy past
    gunicorn's timeout would be killed, with every connection it holds)."""
    app = create_app({"model_path": str(BUNDLED_MODEL), "timeout": 1})
    big = _big_png()
    files = {f"big{index:02}.png": big for index in range(16)}
    response = app.test_client().post(
        "/inference/batch", data=_form(files), content_type="multipart/form-data"
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert [entry["filename"] for entry in results] == list(files)
    assert results[0]["whole_image_reason"] == "no_face_found"
    assert results[0]["image"] == {"width": 7300, "height": 5470}
    assert results[-1]["error"] == "time_budget_exceeded"
    assert "0.8 s" in results[-1]["message"]
    late = [index for index, entry in enumerate(results) if "error" in entry]
    assert late == list(range(late[0], 16))  # once out of time, every later file too


def _assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == code and body["message"]


def test_too_many_images_is_413(counted_app, images):
    files = {f"{index}.png": images["crop.png"] for index in range(6)}
    response = counted_app.test_client().post(
        "/inference/batch", data=_form(files), content_type="multipart/form-data"
    )
    _assert_error(response, 413, "too_many_images")
    assert "limit is 5" in response.get_json()["message"]


def test_batch_request_errors(counted_app, images):
    client = counted_app.test_client()
    _assert_error(
        client.post("/inference/batch", data=images["crop.png"], headers=RAW),
        415,
        "unsupported_media_type",
    )
    _assert_error(
        client.post(
            "/inference/batch",
            data={"image": (io.BytesIO(images["crop.png"]), "a.png")},
            content_type="multipart/form-data",
        ),
        400,
        "missing_file",
    )
    _assert_error(client.get("/inference/batch"), 405, "method_not_allowed")


def test_whole_batch_over_its_limit_is_413(images):
    app = create_app(
        {"model_path": str(BUNDLED_MODEL), "max_upload_bytes": 100_000, "max_batch_bytes": 20_000}
    )
    files = {f"{index}.jpg": images["astronaut.jpg"] for index in range(2)}
    response = app.test_client().post(
        "/inference/batch", data=_form(files), content_type="multipart/form-data"
    )
    _assert_error(response, 413, "payload_too_large")
    assert "20000" in response.get_json()["message"]


def test_batch_limits_come_from_the_environment():
    assert Settings.from_env({}).max_batch_images == 16
    settings = Settings.from_env(
        {"EMOTION_MAX_BATCH_IMAGES": "3", "EMOTION_MAX_BATCH_BYTES": "1000"}
    )
    assert settings.max_batch_images == 3 and settings.max_batch_bytes == 1000


@pytest.mark.e2e
def test_batch_over_http_equals_single_requests(server, images):
    files = [("images", (name, data, "application/octet-stream")) for name, data in images.items()]
    response = requests.post(server.url + "/inference/batch", files=files, timeout=60)
    assert response.status_code == 200
    results = response.json()["results"]
    for result, (name, data) in zip(results, images.items(), strict=True):
        single = requests.post(server.url + "/inference", data=data, headers=RAW, timeout=30)
        assert result.pop("filename") == name
        if single.status_code == 200:
            _assert_close(result, single.json())
        else:
            assert result == single.json()


@pytest.mark.e2e
def test_original_client_batch_mode(server, images, tmp_path):
    paths = []
    for name in ("astronaut.jpg", "notes.jpg", "crop.png"):
        path = tmp_path / name
        path.write_bytes(images[name])
        paths.append(str(path))
    client = [sys.executable, str(ROOT / "test_client.py"), server.url]
    done = subprocess.run([*client, "--batch", *paths], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr  # one image failed: each printed, then status 1
    lines = done.stdout.splitlines()
    expected = requests.post(
        server.url + "/inference", data=images["astronaut.jpg"], headers=RAW, timeout=30
    ).json()
    assert lines[0] == f"{paths[0]}: prediction: {expected['prediction']} " + (
        f"(confidence {expected['confidence']:.2f})"
    )
    assert lines[1].startswith(f"{paths[0]}: face 1: {expected['prediction']}")
    assert lines[2].startswith(f"{paths[1]}: error invalid_image: ")
    assert lines[3].startswith(f"{paths[2]}: prediction: ")
    assert lines[4] == (
        f"{paths[2]}: no face detected (image_is_face_crop): the whole image was classified"
    )
    # The original usages are unchanged.
    single = subprocess.run(
        [*client, paths[0]], capture_output=True, text=True, timeout=60, check=True
    )
    assert single.stdout.startswith(f"prediction: {expected['prediction']} ")
    usage = subprocess.run([*client, "--batch"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "--batch" in usage.stderr
