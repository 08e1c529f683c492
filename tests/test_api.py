"""The HTTP contract through Flask's test client, on the real bundled model."""

import base64
import io
import json
import math

import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, BUNDLED_MODEL, encode

from emotion_server.api import create_app
from emotion_server.api.state import state_of

SUMMARY_FIELDS = {
    "name",
    "version",
    "accuracy",
    "classes",
    "dataset",
    "framework",
    "input_shape",
    "output_shape",
    "precision",
    "created_at",
}


def _face_crop() -> bytes:
    return encode(np.random.default_rng(3).integers(0, 256, (48, 48), dtype=np.uint8), "JPEG")


def _assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]


def test_summary_has_the_original_fields(client):
    body = client.get("/summary").get_json()
    assert body.keys() >= SUMMARY_FIELDS
    assert body["input_shape"] == [1, 48, 48, 1] and body["output_shape"] == [1, 7]
    assert body["classes"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    card = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    assert body["accuracy"] == card["accuracy"] and 0.6 <= body["accuracy"] <= 1
    assert body["created_at"] == card["created_at"] and body["version"] == card["version"]
    assert body["mode"] == "default"  # the bundled default model serves
    # The views its graph holds, from the card's export info; the server's own mirror on top.
    assert body["model_views"] == card["training"]["views"] in ("centre", "flip", "tencrop")


def test_inference_raw_bytes_keeps_prediction(client):
    response = client.post("/inference", data=_face_crop(), content_type="application/octet-stream")
    assert response.status_code == 200
    body = response.get_json()
    assert body["prediction"] in body["probabilities"]
    assert body["probabilities"][body["prediction"]] == body["confidence"]
    assert max(body["probabilities"].values()) == body["confidence"]
    assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert body["face_detected"] is False and body["faces"] == []
    assert body["whole_image_reason"] == "image_is_face_crop"


def test_inference_multipart_matches_raw(client, astronaut):
    data = encode(astronaut, "JPEG")
    raw = client.post("/inference", data=data, content_type="application/octet-stream").get_json()
    form = client.post(
        "/inference",
        data={"image": (io.BytesIO(data), "astronaut.jpg")},
        content_type="multipart/form-data",
    ).get_json()
    assert raw == form
    assert raw["face_detected"] is True and len(raw["faces"]) == 1
    face = raw["faces"][0]
    assert set(face) == {
        *("box", "score", "landmarks", "roll", "prediction", "confidence", "probabilities")
    }
    assert set(face["box"]) == {"x", "y", "width", "height"}
    assert raw["prediction"] == face["prediction"]
    # The detector's five points, in the photo's pixels, inside the box; the tilt from the eyes.
    box, points = face["box"], face["landmarks"]
    assert set(points) == {"eye_left", "eye_right", "nose", "mouth_left", "mouth_right"}
    for point in points.values():
        assert box["x"] <= point["x"] <= box["x"] + box["width"]
        assert box["y"] <= point["y"] <= box["y"] + box["height"]
    left, right = points["eye_left"], points["eye_right"]
    expected_roll = math.degrees(math.atan2(right["y"] - left["y"], right["x"] - left["x"]))
    assert face["roll"] == pytest.approx(expected_roll, abs=0.15)


def test_image_content_type_and_no_content_type_are_raw(client):
    data = _face_crop()
    expected = client.post(
        "/inference", data=data, content_type="application/octet-stream"
    ).get_json()
    assert client.post("/inference", data=data, content_type="image/jpeg").get_json() == expected
    assert client.post("/inference", data=data).get_json() == expected


def test_empty_body(client):
    _assert_error(
        client.post("/inference", data=b"", content_type="application/octet-stream"),
        400,
        "empty_body",
    )


def test_not_an_image(client):
    _assert_error(
        client.post(
            "/inference", data=b"GIF89a garbage" * 10, content_type="application/octet-stream"
        ),
        400,
        "invalid_image",
    )


def test_truncated_image(client, astronaut):
    data = encode(astronaut, "JPEG")
    _assert_error(
        client.post(
            "/inference", data=data[: len(data) // 3], content_type="application/octet-stream"
        ),
        400,
        "corrupt_image",
    )


def test_inference_base64_json_matches_raw(client, astronaut):
    """{"image": base64} in its usual spellings gives the raw body's answer."""
    data = encode(astronaut, "JPEG")
    raw = client.post("/inference", data=data, content_type="application/octet-stream").get_json()
    plain = base64.b64encode(data).decode()
    spellings = {
        "standard": plain,
        "data URL": "data:image/jpeg;base64," + plain,
        "URL-safe, unpadded": base64.urlsafe_b64encode(data).decode().rstrip("="),
        "MIME lines": base64.encodebytes(data).decode(),  # 76 characters a line
    }
    for name, text in spellings.items():
        response = client.post("/inference", json={"image": text})
        assert response.status_code == 200, (name, response.get_data(as_text=True))
        assert response.get_json() == raw, name
    # The body as Windows tools write it (a byte-order mark, UTF-16), and base64 with a
    # pasted no-break space: JSON's own encodings, and whitespace, as json.loads takes them.
    body = json.dumps({"image": plain[:100] + "\u00a0" + plain[100:]})
    encodings = {
        "UTF-8 with a byte-order mark": b"\xef\xbb\xbf" + body.encode(),
        "UTF-16": body.encode("utf-16"),
        "UTF-16LE": body.encode("utf-16-le"),
    }
    for name, data in encodings.items():
        response = client.post("/inference", data=data, content_type="application/json")
        assert response.status_code == 200, (name, response.get_data(as_text=True))
        assert response.get_json() == raw, name


def test_base64_json_over_the_limit_and_malformed(app):
    small = create_app({"max_upload_bytes": 3000}, pipeline=state_of(app).pipeline)
    client = small.test_client()
    image = encode(np.full((48, 48), 128, np.uint8), "PNG")
    assert (
        len(image) < 3000
        and client.post("/inference", json={"image": base64.b64encode(image).decode()}).status_code
        == 200
    )
    over = client.post("/inference", json={"image": base64.b64encode(b"\xff" * 3500).decode()})
    _assert_error(over, 413, "payload_too_large")  # within the JSON body's limit, not decoded
    assert "3000 bytes" in over.get_json()["message"]
    huge = client.post("/inference", json={"image": base64.b64encode(b"\xff" * 9000).decode()})
    _assert_error(huge, 413, "payload_too_large")  # the body itself
    broken = client.post("/inference", data=b'{"image": ', content_type="application/json")
    _assert_error(broken, 400, "invalid_json")
    text_url = client.post("/inference", json={"image": "data:text/plain,hello"})
    _assert_error(text_url, 400, "invalid_image")
    nested = client.post("/inference", data=b"[" * 5000, content_type="application/json")
    _assert_error(nested, 400, "invalid_json")  # RecursionError inside the parser
    _assert_error(client.post("/inference", json={"image": "  "}), 400, "missing_file")
    empty = client.post("/inference", json={"image": "data:image/png;base64,"})
    _assert_error(empty, 400, "invalid_image")
    shouted = "DATA:image/png;BASE64," + base64.b64encode(image).decode()
    assert client.post("/inference", json={"image": shouted}).status_code == 200


def test_base64_json_in_lines_fits_the_limit(app):
    """An image at the limit, in base64 lines of 76 (each line end escaped in JSON), is held
    to the limit as an image, not refused for the body's size."""
    small = create_app({"max_upload_bytes": 200_000}, pipeline=state_of(app).pipeline)
    junk = bytes(np.random.default_rng(3).integers(0, 256, 200_000, dtype=np.uint8))
    response = small.test_client().post(
        "/inference", json={"image": base64.encodebytes(junk).decode()}
    )
    _assert_error(response, 400, "invalid_image")  # read whole and decoded: not an image


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_unsupported_content_types(client, content_type):
    _assert_error(
        client.post("/inference", data=b'{"image": "x"}', content_type=content_type),
        415,
        "unsupported_media_type",
    )


def test_multipart_without_image_field(client):
    response = client.post(
        "/inference",
        data={"photo": (io.BytesIO(_face_crop()), "a.jpg")},
        content_type="multipart/form-data",
    )
    _assert_error(response, 400, "missing_file")


def test_a_photo_sent_as_a_text_field_is_told_to_come_as_a_file(client):
    """curl -F "image=<photo.jpg" sends the bytes as a text field: over Flask's 500 kB form
    memory limit that was a 413 blaming the body's size, although it was under the limit."""
    photo = b"\xff\xd8" + bytes(600_000)
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"\r\n\r\n'.encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = client.post(
        "/inference", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    _assert_error(response, 400, "missing_file")
    assert "as a file" in response.get_json()["message"]


def test_too_many_multipart_parts_is_413_that_says_so(client):
    boundary = "b0undary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'
    body = (part * 1001 + f"--{boundary}--\r\n").encode()
    response = client.post(
        "/inference/batch", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    _assert_error(response, 413, "payload_too_large")
    assert "parts" in response.get_json()["message"]


def test_a_text_field_is_held_in_memory_only_up_to_one_image(app):
    """A batch's or a video's body may be far larger than an image, but its files are spooled
    to disk; a text field is held in memory whole, so it is held to the one-image limit (at
    least 1 MiB)."""
    mib = 1 << 20
    limits = {"max_upload_bytes": 1000, "max_batch_bytes": 4 * mib, "video_max_bytes": 4 * mib}
    client = create_app(limits, pipeline=state_of(app).pipeline).test_client()
    boundary = "b0undary"
    junk = b"\xff" * (2 * mib)
    for path, name in (("/inference/batch", "images"), ("/inference/video", "video")):
        field = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        body = field.encode() + junk + f"\r\n--{boundary}--\r\n".encode()
        response = client.post(
            path, data=body, content_type=f"multipart/form-data; boundary={boundary}"
        )
        _assert_error(response, 413, "payload_too_large")
        message = response.get_json()["message"]
        assert f"text field over {mib} bytes" in message and "as a file" in message
        # As a file, the same bytes are within the endpoint's body limit.
        form = {name: [(io.BytesIO(junk), "a.jpg" if name == "images" else "a.mp4")]}
        as_file = client.post(path, data=form, content_type="multipart/form-data")
        assert as_file.status_code != 413, as_file.get_data(as_text=True)


def test_multipart_with_two_images(client):
    files = [(io.BytesIO(_face_crop()), "a.jpg"), (io.BytesIO(_face_crop()), "b.jpg")]
    response = client.post("/inference", data={"image": files}, content_type="multipart/form-data")
    _assert_error(response, 400, "missing_file")


def test_body_over_the_limit_is_413(app):
    small = create_app({"max_upload_bytes": 1000}, pipeline=state_of(app).pipeline)
    client = small.test_client()
    _assert_error(
        client.post("/inference", data=b"\xff" * 5000, content_type="application/octet-stream"),
        413,
        "payload_too_large",
    )
    form = {"image": (io.BytesIO(b"\xff" * 5000), "big.jpg")}
    _assert_error(
        client.post("/inference", data=form, content_type="multipart/form-data"),
        413,
        "payload_too_large",
    )


def test_each_endpoint_has_its_own_body_limit(app):
    shared = state_of(app).pipeline
    limits = {"max_upload_bytes": 1000, "max_batch_bytes": 20_000}
    small = create_app(limits, pipeline=shared)
    assert state_of(small).pipeline is shared  # given, not loaded again
    client = small.test_client()
    junk = b"\xff" * 5000
    single = client.post("/inference", data=junk, content_type="application/octet-stream")
    _assert_error(single, 413, "payload_too_large")
    assert "1000 bytes" in single.get_json()["message"]
    # The same 5,000 bytes fit the batch's own limit: only the file is over the per-file one.
    form = {"images": [(io.BytesIO(junk), "big.jpg")]}
    batch = client.post("/inference/batch", data=form, content_type="multipart/form-data")
    assert batch.status_code == 200, batch.get_data(as_text=True)
    assert batch.get_json()["results"][0]["error"] == "payload_too_large"
    form = {"images": [(io.BytesIO(junk), f"{n}.jpg") for n in range(5)]}
    over = client.post("/inference/batch", data=form, content_type="multipart/form-data")
    _assert_error(over, 413, "payload_too_large")
    assert "20000 bytes" in over.get_json()["message"]


def test_too_many_pixels_is_413():
    app = create_app({"model_path": str(BUNDLED_MODEL), "max_pixels": 100 * 100})
    data = encode(np.zeros((200, 200), np.uint8), "PNG")
    _assert_error(
        app.test_client().post("/inference", data=data, content_type="application/octet-stream"),
        413,
        "image_too_large",
    )


def test_a_50_megapixel_phone_photo_is_served(client, astronaut):
    """Over EMOTION_MAX_PIXELS (40 million) in full, but a JPEG that size is decoded at 1/8
    scale (0.8 megapixels): answered, its face found in the full photo's pixels."""
    from PIL import Image

    face = Image.fromarray(astronaut).convert("L").resize((4096, 4096), Image.BILINEAR)
    photo = Image.new("L", (8192, 6144), 128)  # 50.3 megapixels
    photo.paste(face, (2048, 1024))
    data = encode(np.asarray(photo), "JPEG")
    answer = client.post("/inference", data=data, content_type="application/octet-stream")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["image"] == {"width": 8192, "height": 6144}
    box = body["faces"][0]["box"]
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert 2048 + 8 * x1 < box["x"] + box["width"] / 2 < 2048 + 8 * x2
    assert 1024 + 8 * y1 < box["y"] + box["height"] / 2 < 1024 + 8 * y2


_JSON_MEMORY = """
import json, resource, sys
from emotion_server.api import create_app
client = create_app({"model_path": sys.argv[1]}).test_client()
bodies = {
    "arrays": b"[" + b"[]," * 5_000_000 + b"[]]",
    "spaced text": json.dumps({"image": "ab " * 5_000_000}).encode(),
}
for name, body in bodies.items():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answer = client.post("/inference", data=body, content_type="application/json")
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(name, answer.status_code, answer.get_json()["error"], round(grown))
"""


def test_a_json_body_costs_memory_in_proportion_to_its_size():
    """15 MB JSON bodies (the limit at the default upload size): a body of tiny arrays, and an
    image string broken by spaces every two characters, each took about 400 MB to refuse; now
    a few times the body (peak resident memory, in a process of its own)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _JSON_MEMORY, str(BUNDLED_MODEL)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.rsplit(" ", 3) for line in done.stdout.splitlines()]
    assert [row[1:3] for row in rows] == [["400", "invalid_json"], ["400", "invalid_image"]]
    assert all(int(row[3]) < 120 for row in rows), done.stdout  # MB; was about 400


def test_unknown_route_and_wrong_method_are_json(client):
    _assert_error(client.get("/nowhere"), 404, "not_found")
    wrong_method = client.get("/inference")
    _assert_error(wrong_method, 405, "method_not_allowed")
    assert "POST" in wrong_method.headers["Allow"]  # RFC 9110: a 405 names what is allowed


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
