"""API keys, the CORS allow-list, security headers, configurable limits, and pip-audit."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import requests
from conftest import BUNDLED_MODEL, ROOT, SECURITY_HEADERS, GunicornServer, encode
from openapi_spec_validator import validate

from emotion_server.api import create_app
from emotion_server.api.state import state_of
from emotion_server.config import Settings

KEYS = "first-key-0123456789,second-key-9876543210"
RAW = {"Content-Type": "application/octet-stream"}
PROTECTED = [("POST", "/inference"), ("POST", "/inference/batch"), ("GET", "/summary")]
PROTECTED += [("POST", "/inference/video")]
PROTECTED += [("GET", "/metrics")]
OPEN = ["/healthz", "/readyz", "/", "/docs", "/openapi.json", "/static/app.js"]


def crop() -> bytes:
    return encode(np.random.default_rng(2).integers(0, 256, (48, 48), dtype=np.uint8), "PNG")


@pytest.fixture(scope="module")
def keyed():
    app = create_app(
        {"model_path": str(BUNDLED_MODEL), "api_keys": KEYS, "cors_origins": "https://a.example"}
    )
    return app.test_client()


def _assert_unauthorized(response):
    assert response.status_code == 401, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == "unauthorized" and body["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_need_a_key(keyed, method, path):
    _assert_unauthorized(keyed.open(path, method=method))
    _assert_unauthorized(keyed.open(path, method=method, headers={"X-API-Key": "wrong"}))
    _assert_unauthorized(
        keyed.open(path, method=method, headers={"Authorization": "Bearer first-key"})
    )
    _assert_unauthorized(  # the key in the wrong scheme
        keyed.open(path, method=method, headers={"Authorization": "Basic first-key-0123456789"})
    )


@pytest.mark.parametrize("path", OPEN)
def test_probes_page_and_docs_stay_open(keyed, path):
    assert keyed.get(path).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "first-key-0123456789"},
        {"X-API-Key": "second-key-9876543210"},
        {"Authorization": "Bearer second-key-9876543210"},
        {"Authorization": "bearer first-key-0123456789"},
    ],
)
def test_a_valid_key_in_either_header_is_accepted(keyed, headers):
    response = keyed.post("/inference", data=crop(), headers={**RAW, **headers})
    assert response.status_code == 200 and response.get_json()["prediction"]
    assert keyed.get("/summary", headers=headers).status_code == 200
    assert keyed.get("/metrics", headers=headers).status_code == 200


def test_unknown_paths_are_404_not_401(keyed):
    assert keyed.get("/nowhere").status_code == 404


def test_an_app_made_with_keys_that_hold_none_is_refused(app):
    """gunicorn pointed at the factory itself (not `serve`) gets the same check: API keys
    that hold no key would otherwise leave every route open."""
    for value in (",", " "):
        with pytest.raises(ValueError, match="EMOTION_API_KEYS is set but holds no key"):
            create_app({"api_keys": value}, pipeline=state_of(app).pipeline)


def test_doubled_slashes_get_a_json_404_not_an_html_redirect(client):
    """Werkzeug merges repeated slashes with a 308 to a Location built from the client's Host
    header, as an HTML page out of reach of the JSON error handlers: here such a path is a
    path like any other, and matches no route."""
    for method, path in (("POST", "/inference//batch"), ("GET", "/summary//")):
        # The path as sent (the test client would read "//..." as a host name).
        response = client.open(
            "/",
            method=method,
            headers={"Host": "evil.example"},
            environ_overrides={"PATH_INFO": path},
        )
        assert response.status_code == 404, path
        assert response.get_json()["error"] == "not_found" and "Location" not in response.headers


def test_no_keys_means_no_check(client):
    assert client.post("/inference", data=crop(), headers=RAW).status_code == 200


def test_keys_come_from_the_environment_and_stay_out_of_repr():
    settings = Settings.from_env({"EMOTION_API_KEYS": " a1 , b2,, "})
    assert settings.api_key_list == ("a1", "b2")
    assert "a1" not in repr(settings)
    assert Settings.from_env({}).api_key_list == ()


def test_openapi_documents_the_keys_where_they_are_set(keyed, client):
    spec = keyed.get("/openapi.json").get_json()
    validate(spec)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerKey"]["scheme"] == "bearer"
    for method, path in PROTECTED:
        operation = spec["paths"][path][method.lower()]
        assert operation["security"] and "401" in operation["responses"]
    for path in ("/healthz", "/readyz", "/"):
        assert "security" not in spec["paths"][path]["get"]
    plain = client.get("/openapi.json").get_json()
    assert "securitySchemes" not in plain.get("components", {})
    assert "401" not in plain["paths"]["/inference"]["post"]["responses"]


# --- CORS --------------------------------------------------------------------------------------

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type, x-api-key",
}


def test_preflight_from_an_allowed_origin(keyed):
    response = keyed.options("/inference", headers={"Origin": "https://a.example", **PREFLIGHT})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "x-api-key" in allowed and "authorization" in allowed and "content-type" in allowed
    assert "Origin" in response.headers["Vary"]


def test_preflight_from_another_origin_is_refused(keyed):
    response = keyed.options("/inference", headers={"Origin": "https://evil.example", **PREFLIGHT})
    assert response.status_code == 403
    assert response.get_json()["error"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in response.headers


def test_only_listed_origins_get_the_allow_origin_header(keyed):
    key = {"X-API-Key": "first-key-0123456789"}
    ok = keyed.get("/summary", headers={"Origin": "https://a.example", **key})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://a.example"
    other = keyed.get("/summary", headers={"Origin": "https://evil.example", **key})
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers
    # A 401 to an allowed origin carries the header, so the page can read the error.
    refused = keyed.get("/summary", headers={"Origin": "https://a.example"})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "https://a.example"
    # ...and may read why: WWW-Authenticate, not among the headers scripts see by default.
    exposed = refused.headers["Access-Control-Expose-Headers"].split(", ")
    assert "WWW-Authenticate" in exposed and refused.headers["WWW-Authenticate"]


def test_no_origins_configured_allows_none(client):
    response = client.options("/inference", headers={"Origin": "https://a.example", **PREFLIGHT})
    assert response.status_code == 403
    plain = client.get("/healthz", headers={"Origin": "https://a.example"})
    assert "Access-Control-Allow-Origin" not in plain.headers


def test_wildcard_origin():
    app = create_app({"model_path": str(BUNDLED_MODEL), "cors_origins": "*"})
    response = app.test_client().get("/healthz", headers={"Origin": "https://any.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# --- headers and limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/summary", 200),
        ("GET", "/nowhere", 404),
        ("GET", "/metrics", 200),
        ("GET", "/inference", 405),
        ("POST", "/inference", 400),  # empty body
    ],
)
def test_security_headers_on_every_response(client, method, path, status):
    response = client.open(path, method=method)
    assert response.status_code == status
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


def test_security_headers_on_refusals(keyed):
    """401 without a key, 403 for a preflight from another origin, 413 over the size limit."""
    assert keyed.get("/summary").status_code == 401
    refused = keyed.options(
        "/inference",
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    big = keyed.post(
        "/inference",
        data=b"x" * (11 * 1024 * 1024),
        headers={"Content-Type": "application/octet-stream", "X-API-Key": "first-key-0123456789"},
    )
    for response, status in ((keyed.get("/summary"), 401), (refused, 403), (big, 413)):
        assert response.status_code == status
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value


def test_cors_origins_are_compared_as_browsers_send_them():
    settings = Settings.from_env({"EMOTION_CORS_ORIGINS": "HTTPS://App.Example, http://b:8080"})
    assert settings.out_of_range() is None
    assert settings.cors_origin_list == ("https://app.example", "http://b:8080")
    for origins in ("https://app.example/", "app.example", "https://app.example/path", "null"):
        problem = Settings.from_env({"EMOTION_CORS_ORIGINS": origins}).out_of_range()
        assert problem and problem.startswith("EMOTION_CORS_ORIGINS")
        assert repr(origins) in problem


LIMITS = {
    "EMOTION_MAX_UPLOAD_BYTES": ("max_upload_bytes", "1234"),
    "EMOTION_MAX_PIXELS": ("max_pixels", "5678"),
    "EMOTION_MAX_FACES": ("max_faces", "3"),
    "EMOTION_MAX_BATCH_IMAGES": ("max_batch_images", "4"),
    "EMOTION_MAX_BATCH_BYTES": ("max_batch_bytes", "99999"),
    "EMOTION_TIMEOUT": ("timeout", "7"),
    "EMOTION_API_KEYS": ("api_keys", "k"),
    "EMOTION_CORS_ORIGINS": ("cors_origins", "https://a.example"),
}


@pytest.mark.parametrize("variable", list(LIMITS))
def test_every_limit_is_an_environment_variable(variable):
    field, text = LIMITS[variable]
    setting = getattr(Settings.from_env({variable: text}), field)
    assert str(setting) == text


def test_max_faces_limits_the_faces_classified(astronaut):
    """Four copies of the astronaut's face; with EMOTION_MAX_FACES=2 only the two largest."""
    from PIL import Image

    face = Image.fromarray(astronaut).crop((150, 20, 300, 220))
    canvas = np.full((500, 1200, 3), 128, np.uint8)
    for index, width in enumerate((270, 240, 210, 180)):
        resized = np.asarray(face.resize((width, int(width * 4 / 3))))
        x = 20 + index * 290
        canvas[20 : 20 + resized.shape[0], x : x + width] = resized
    data = encode(canvas)
    all_faces = create_app({"model_path": str(BUNDLED_MODEL)}).test_client()
    every = all_faces.post("/inference", data=data, headers=RAW).get_json()["faces"]
    assert len(every) >= 3
    two = create_app({"model_path": str(BUNDLED_MODEL), "max_faces": 2}).test_client()
    body = two.post("/inference", data=data, headers=RAW).get_json()
    assert [face["box"] for face in body["faces"]] == [face["box"] for face in every[:2]]
    kept = min(face["box"]["width"] * face["box"]["height"] for face in body["faces"])
    assert all(face["box"]["width"] * face["box"]["height"] <= kept for face in every[2:])


@pytest.mark.e2e
def test_api_keys_on_gunicorn():
    server = GunicornServer(env={"EMOTION_API_KEYS": KEYS})
    try:
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
        refused = requests.post(server.url + "/inference", data=crop(), headers=RAW, timeout=30)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        headers = {**RAW, "Authorization": "Bearer first-key-0123456789"}
        ok = requests.post(server.url + "/inference", data=crop(), headers=headers, timeout=30)
        assert ok.status_code == 200
    finally:
        server.stop()


# --- dependency audit ----------------------------------------------------------------------------


@pytest.mark.e2e
def test_audit_script_of_the_serving_dependencies():
    if shutil.which("pip-audit") is None and not (ROOT / ".venv" / "bin" / "pip-audit").exists():
        pytest.skip("pip-audit is not installed (it is in the [dev] extra)")
    try:
        requests.head("https://pypi.org/simple/", timeout=10)
    except requests.RequestException as exc:
        pytest.skip(f"PyPI's vulnerability service cannot be reached: {exc}")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ops" / "audit.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0 and "ConnectionError" in output:
        pytest.skip(f"pip-audit could not reach its vulnerability service: {output[-500:]}")
    assert result.returncode == 0, output
    assert "flask" in output.lower() and "onnxruntime" in output.lower()  # what was audited
