"""End to end: gunicorn on a loopback port, real HTTP, the real bundled model."""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
from conftest import (
    ASTRONAUT_FACE,
    BUNDLED_MODEL,
    ROOT,
    GunicornServer,
    encode,
    metric_value,
    parse_metrics,
    serve_refusal,
)
from test_imaging import _png_header_only

from emotion_server.api.state import state_of
from emotion_server.launcher import serve

pytestmark = pytest.mark.e2e
RAW = {"Content-Type": "application/octet-stream"}


def test_summary_over_http(server):
    body = requests.get(server.url + "/summary", timeout=10).json()
    card = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    assert body["accuracy"] == card["accuracy"] and body["name"] == card["name"]
    assert body["input_shape"] == [1, 48, 48, 1]


def test_astronaut_photo(server, astronaut, app):
    data = encode(astronaut)
    response = requests.post(server.url + "/inference", data=data, headers=RAW, timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["face_detected"] is True and len(body["faces"]) == 1
    box = body["faces"][0]["box"]
    x1, y1, x2, y2 = ASTRONAUT_FACE
    # The box covers the face: inside the by-eye face region and most of it.
    assert x1 <= box["x"] and box["x"] + box["width"] <= x2
    assert y1 <= box["y"] and box["y"] + box["height"] <= y2
    assert box["width"] * box["height"] > 0.5 * (x2 - x1) * (y2 - y1)
    # The served answer is the pipeline's own on the same bytes, and its argmax.
    expected = state_of(app).pipeline.analyze(data).classification
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    probabilities = body["probabilities"]
    assert body["prediction"] == expected.prediction == max(probabilities, key=probabilities.get)


def test_no_room_for_an_image_upload_is_507_and_the_server_serves_on(cramped_server, astronaut):
    """A multipart image over 500 kB is spooled to TMPDIR by Werkzeug: a full one (here a
    1 MiB tmpfs) gets 507 insufficient_storage, not a 500; a raw body (held in memory) is
    served."""
    big = encode(astronaut) + bytes(2_000_000)
    for path, field in (("/inference", "image"), ("/inference/batch", "images")):
        files = {field: ("big.jpg", big, "image/jpeg")}
        answer = requests.post(cramped_server.url + path, files=files, timeout=60)
        assert answer.status_code == 507, (path, answer.text)
        assert answer.json()["error"] == "insufficient_storage", path
        assert "smaller file" in answer.json()["message"]
    served = requests.post(
        cramped_server.url + "/inference", data=encode(astronaut), headers=RAW, timeout=30
    )
    assert served.status_code == 200 and served.json()["faces"], served.text


def _raw_exchange(server, data: bytes) -> tuple[int, str, dict]:
    """Send `data` on a fresh connection; the answer's status, Content-Type and JSON body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (b"POST /inference HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n\r\n", 417, "expectation_failed"),
        (
            b"POST /inference HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo\r\n\r\n",
            501,
            "unsupported_transfer_coding",
        ),
        # A proxy's mount point (trusted from loopback) that the path is outside of.
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nSCRIPT_NAME: /api\r\n\r\n", 404, "not_found"),
    ],
)
def test_requests_the_http_parser_refuses_get_json_errors(server, request_bytes, status, code):
    """gunicorn refuses these before the app sees them; the answer is JSON with a stable code
    (gunicorn's own is an HTML page), and the server serves on."""

    def refused() -> float:
        samples = parse_metrics(requests.get(server.url + "/metrics", timeout=10).text)
        return metric_value(samples, "emotion_http_errors_total", endpoint="unmatched", code=code)

    before = refused()
    got, content_type, body = _raw_exchange(server, request_bytes)
    assert (got, body["error"]) == (status, code), body
    assert content_type == "application/json" and body["message"]
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    assert refused() == before + 1  # counted in /metrics, though the app never saw it


def test_parser_refusals_under_gthread_and_in_the_access_log():
    """The gthread worker (EMOTION_WORKER_THREADS > 1) answers the parser's refusals as JSON
    too; a refused request whose request line was read gets its access-log line."""
    running = GunicornServer(env={"EMOTION_WORKER_THREADS": "2"}, workers=1)
    try:
        bad_length = b"POST /inference HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
        long_line = b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        for request_bytes, status, code in (
            (bad_length, 400, "bad_request"),
            (long_line, 414, "uri_too_long"),
        ):
            answer = _raw_exchange(running, request_bytes)
            assert answer[:2] == (status, "application/json") and answer[2]["error"] == code
        assert requests.get(running.url + "/healthz", timeout=10).status_code == 200
    finally:
        running.stop()
    logged = [line for line in running.output().splitlines() if '"POST /inference' in line]
    assert logged and all('HTTP/1.1" 400 ' in line for line in logged), running.output()[-2000:]


def test_fer_private_test_crops(server, fer_private_jpegs, app):
    """FER2013 48x48 crops are classified whole, exactly as the pipeline does in-process."""
    pipeline = state_of(app).pipeline
    for _label, data in fer_private_jpegs:
        body = requests.post(server.url + "/inference", data=data, headers=RAW, timeout=30).json()
        assert body["face_detected"] is False
        assert body["whole_image_reason"] == "image_is_face_crop"
        expected = pipeline.analyze(data).classification
        assert body["prediction"] == expected.prediction
        assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)


BAD_INPUTS = [
    ("empty", b"", RAW, 400, "empty_body"),
    ("text", b"just some text", RAW, 400, "invalid_image"),
    (
        "random",
        bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8)),
        RAW,
        400,
        "invalid_image",
    ),
    ("bomb", _png_header_only(60_000, 60_000), RAW, 413, "image_too_large"),
    ("json", b'{"image": 1}', {"Content-Type": "application/json"}, 400, "missing_file"),
    ("json text", b"not json", {"Content-Type": "application/json"}, 400, "invalid_json"),
    ("text type", b"hello", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ("oversized", b"\xff\xd8" + b"\x00" * (11 * 1024 * 1024), RAW, 413, "payload_too_large"),
]


@pytest.mark.parametrize(
    ("name", "data", "headers", "status", "code"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_gets_json_error_and_server_keeps_serving(
    server, astronaut, name, data, headers, status, code
):
    response = requests.post(server.url + "/inference", data=data, headers=headers, timeout=30)
    assert response.status_code == status
    assert response.json()["error"] == code and response.json()["message"]
    ok = requests.post(server.url + "/inference", data=encode(astronaut), headers=RAW, timeout=30)
    assert ok.status_code == 200 and ok.json()["face_detected"]


def test_truncated_jpeg_over_http(server, astronaut):
    data = encode(astronaut)
    response = requests.post(server.url + "/inference", data=data[:5000], headers=RAW, timeout=30)
    assert response.status_code == 400 and response.json()["error"] == "corrupt_image"


def test_original_client(server, astronaut, tmp_path):
    image = tmp_path / "astronaut.jpg"
    image.write_bytes(encode(astronaut))
    client = [sys.executable, str(ROOT / "test_client.py"), server.url]
    summary = subprocess.run(client, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(summary.stdout)["input_shape"] == [1, 48, 48, 1]
    predicted = subprocess.run(
        [*client, str(image)], capture_output=True, text=True, timeout=60, check=True
    )
    expected = requests.post(
        server.url + "/inference", data=image.read_bytes(), headers=RAW, timeout=30
    ).json()["prediction"]
    assert predicted.stdout.startswith(f"prediction: {expected}")
    assert "face 1:" in predicted.stdout
    roll = requests.post(
        server.url + "/inference", data=image.read_bytes(), headers=RAW, timeout=30
    ).json()["faces"][0]["roll"]
    assert f", tilted {roll:+.0f} degrees" in predicted.stdout


def test_original_client_says_what_went_wrong(server, tmp_path):
    """No traceback: a refused connection, a URL without its scheme, a missing image, a proxy's
    HTML page where the server's JSON should be."""
    client = [sys.executable, str(ROOT / "test_client.py")]

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([*client, *args], capture_output=True, text=True, timeout=60)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    refused = run(f"http://127.0.0.1:{closed}")
    assert refused.returncode == 1 and "cannot reach http://127.0.0.1:" in refused.stderr
    no_scheme = run(server.url.removeprefix("http://"))
    assert no_scheme.returncode == 2 and f"for example {server.url}" in no_scheme.stderr
    missing = run(server.url, str(tmp_path / "absent.jpg"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    letter_o = run("http://localhost:50OO")  # a port with letters in it
    assert letter_o.returncode == 1 and "not a URL the client can use" in letter_o.stderr
    for unusable in ("http://localhost:99999", "http://"):
        assert run(unusable).returncode == 1  # said, without a traceback (run checks)
    # A batch with an image the server refused: its error printed, and exit status 1.
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    mixed = run(server.url, "--batch", str(text), str(text))
    assert mixed.returncode == 1 and "error invalid_image" in mixed.stdout

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    proxy = http.server.HTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        html = run(f"http://127.0.0.1:{proxy.server_port}")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert html.returncode == 1
    assert "HTTP 502" in html.stderr and "not the server's JSON" in html.stderr
    assert "502 Bad Gateway" in html.stderr


def test_bad_starts_are_refused_with_a_message():
    """`python app.py` and `emotion-server serve`'s own options: status 2, no traceback."""
    app = subprocess.run(
        [sys.executable, "app.py"],
        env={**os.environ, "EMOTION_MODEL_PATH": "/nonexistent/model.onnx", "PORT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert app.returncode == 2 and "model file not found" in app.stderr, app.stderr
    assert "Traceback" not in app.stderr
    for option, value, fragment in [
        ("--port", "0", "not from 1 to 65535"),
        ("--port", "http", "not a whole number"),
        ("--workers", "0", "not from 1 to 256"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "emotion_server.cli", "serve", option, value],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and fragment in done.stderr, done.stderr


def test_python_app_py_serves_on_port():
    with serve(
        command=[sys.executable, "app.py"], workers=None, ready_path="/summary", cwd=ROOT
    ) as server:
        body = requests.get(server.url + "/summary", timeout=10).json()
    assert body["output_shape"] == [1, 7]


def test_serve_listens_on_an_ipv6_host():
    """HOST=:: (every IPv6 and, on Linux, IPv4 address) is a bind gunicorn can read: the
    server answers on the IPv6 loopback, and on 127.0.0.1 too."""
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    server = GunicornServer(env={"HOST": "::"}, workers=1)  # ready: 127.0.0.1 answered /readyz
    try:
        body = requests.get(f"http://[::1]:{server.port}/healthz", timeout=10).json()
        assert body == {"status": "ok"}
    finally:
        server.stop()


def test_serve_fails_fast_on_missing_model(tmp_path):
    result = serve_refusal(EMOTION_MODEL_PATH=str(tmp_path / "absent.onnx"))
    assert result.returncode == 2
    assert "model file not found" in result.stderr


def test_serve_refuses_settings_out_of_range():
    """No workers (a bound socket nobody answers on) and keys meant but none given (an open
    server) are refused before gunicorn starts."""
    for variable, text in (("WEB_CONCURRENCY", "0"), ("EMOTION_API_KEYS", ",")):
        result = serve_refusal(**{variable: text})
        assert result.returncode == 2 and variable in result.stderr, result.stderr


def _log_lines(
    server, marker: str, until: str | tuple[str, ...], timeout: float = 10.0
) -> list[str]:
    """The server's log lines that contain `marker`, once each of `until` is in one of them (a
    worker writes a request's line after sending its answer, so it may come a moment later, and
    two workers' lines in either order)."""
    wanted = (until,) if isinstance(until, str) else until
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.output().splitlines() if marker in line]
        found = all(any(text in line for line in lines) for text in wanted)
        if found or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_the_access_log_leaves_out_the_probes_answered_2xx(server):
    """EMOTION_ACCESS_LOG=requests (the default): a kubelet's /healthz and /readyz every few
    seconds are not logged; every other request is, a failed one too."""
    marker = "access-log-check"
    paths = ("/healthz", "/readyz", "/summary", f"/{marker}")
    for path in paths:
        requests.get(f"{server.url}{path}?{marker}=1", timeout=10)
    lines = _log_lines(server, marker, until=("GET /summary?", f"GET /{marker}?"))
    logged = {path for path in paths if any(f"GET {path}?" in line for line in lines)}
    assert logged == {"/summary", f"/{marker}"}
    assert any('" 404 ' in line for line in lines)  # the refused request, with its status


def test_the_access_log_can_list_every_request_or_none():
    for mode in ("all", "off"):
        running = GunicornServer(env={"EMOTION_ACCESS_LOG": mode}, workers=1)
        try:
            requests.get(running.url + "/healthz?mode-check=1", timeout=10)
            requests.get(running.url + "/summary?mode-check=1", timeout=10)
            requests.get(running.url + "/nowhere?mode-check=last", timeout=10)
            # "off" waits the whole timeout for a line that must never come
            logged = _log_lines(running, "mode-check", until="mode-check=last", timeout=3)
        finally:
            running.stop()
        assert len(logged) == (3 if mode == "all" else 0), (mode, logged)
