"""The OpenAPI 3.1 document, the /docs page, and schemathesis against the live server."""

import json
import re
import shutil

import pytest
import requests
from conftest import BUNDLED_MODEL
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate

from emotion_server.api import create_app
from emotion_server.contract import EMOTIONS

OPERATIONS = [
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/summary"),
    ("POST", "/inference"),
    ("POST", "/inference/batch"),
    ("POST", "/inference/video"),
]
# Generated bodies cannot make a decodable video, so schemathesis would never see the 200 it
# checks for there; tests/test_video.py covers that operation with real videos.
FUZZED = [operation for operation in OPERATIONS if operation[1] != "/inference/video"]
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture(scope="module")
def spec(app):
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def test_spec_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises on any deviation from the OpenAPI 3.1 schema


def test_every_endpoint_is_described(spec):
    described = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}
    assert described == set(OPERATIONS)
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            assert operation["summary"] and operation["operationId"], path
            # Every operation documents the catch-all 500 with the error schema, and no
            # request-validation 422 that this API never sends.
            assert operation["responses"]["500"]["content"]["application/json"]["schema"]
            assert "422" not in operation["responses"]
    assert "ValidationErrorModel" not in spec["components"]["schemas"]


def test_error_schema(spec):
    schema = spec["components"]["schemas"]["ErrorBody"]
    assert set(schema["required"]) == {"error", "message"}
    assert schema["properties"]["error"]["type"] == "string"
    for path in ("/inference", "/inference/batch", "/inference/video"):
        responses = spec["paths"][path]["post"]["responses"]
        for status in ("400", "408", "413", "415"):
            assert responses[status]["content"]["application/json"]["schema"] == ERROR_REF
        # What any upload can meet before the view reads it (workers.py, api/errors.py).
        assert "read_timeout" in responses["408"]["description"]
        for code in ("malformed_body", "bad_request"):
            assert code in responses["400"]["description"], (path, code)


def test_inference_request_bodies(spec):
    body = spec["paths"]["/inference"]["post"]["requestBody"]
    assert body["required"] is True
    content = body["content"]
    assert content["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    assert content["image/*"]["schema"] == {"type": "string", "format": "binary"}
    form = content["multipart/form-data"]["schema"]
    assert form["required"] == ["image"]
    assert form["properties"]["image"]["format"] == "binary"

    batch = spec["paths"]["/inference/batch"]["post"]["requestBody"]["content"]
    images = batch["multipart/form-data"]["schema"]["properties"]["images"]
    assert images["type"] == "array" and images["items"]["format"] == "binary"


def test_response_schemas(spec):
    schemas = spec["components"]["schemas"]
    ok = spec["paths"]["/inference"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferenceResponse"
    }
    assert schemas["Probabilities"]["required"] == list(EMOTIONS)
    assert schemas["InferenceResponse"]["properties"]["prediction"]["enum"] == list(EMOTIONS)
    batch = spec["paths"]["/inference/batch"]["post"]["responses"]["200"]
    assert batch["content"]["application/json"]["schema"]["$ref"].endswith("/BatchResponse")
    page = spec["paths"]["/"]["get"]["responses"]["200"]
    assert "text/html" in page["content"]


def test_video_operation(spec):
    operation = spec["paths"]["/inference/video"]["post"]
    assert {p["name"] for p in operation["parameters"]} == {"fps", "smoothing"}
    body = operation["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["required"] == ["video"]
    assert body["video/*"]["schema"] == {"type": "string", "format": "binary"}
    ok = operation["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/VideoResponse"}
    lines = [ref["$ref"].split("/")[-1] for ref in ok["application/x-ndjson"]["schema"]["oneOf"]]
    assert lines == ["VideoFrameLine", "VideoSummaryLine", "VideoErrorLine"]
    schemas = spec["components"]["schemas"]
    for name in ("VideoResponse", *lines, "VideoTrack", "TrackFrame", "TrackSummaryModel"):
        assert name in schemas, name
    # Every reference in the document resolves.
    for ref in re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(spec)):
        assert ref in schemas, ref


def test_video_answers_match_their_schemas(spec, client, astronaut):
    """A real answer, in both media types, validates against the documented schemas."""

    import videos  # tests/videos.py, beside this file
    from jsonschema import Draft202012Validator

    frames = videos.scene([videos.actor(astronaut, 240, (0, 100), (300, 100))], 5)
    data = videos.encode_video(frames)
    document = {"components": spec["components"]}

    def validate_as(name: str, instance: dict) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", **document}
        Draft202012Validator(schema).validate(instance)

    body = client.post("/inference/video?fps=5", data=data).get_json()
    validate_as("VideoResponse", body)
    streamed = client.post(
        "/inference/video?fps=5", data=data, headers={"Accept": "application/x-ndjson"}
    ).get_data(as_text=True)
    lines = [json.loads(line) for line in streamed.splitlines()]
    for line in lines:
        validate_as({"frame": "VideoFrameLine", "summary": "VideoSummaryLine"}[line["type"]], line)


def test_docs_page_uses_only_local_assets(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references and not [ref for ref in references if "//" in ref]
    for ref in references:
        asset = client.get("/" + ref)
        assert asset.status_code == 200, ref
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]


@pytest.mark.e2e
@pytest.mark.parametrize(("method", "path"), FUZZED, ids=[f"{m} {p}" for m, p in FUZZED])
def test_schemathesis_live_server(server, method, path):
    """Generated requests (valid and invalid) on gunicorn: no 5xx, every response as documented."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operation = schema[path][method]
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    statuses = []
    # Invalid requests can only be made where there is a body to get wrong.
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if method == "POST" else [])

    for mode in modes:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            response = case.call_and_validate(base_url=server.url, checks=checks)
            statuses.append(response.status_code)

        check()
    assert 200 in statuses and max(statuses) < 500
    if method == "POST":
        assert any(400 <= status < 500 for status in statuses)  # bad input was refused
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200


def test_summary_with_a_model_card_is_served(tmp_path):
    """A card as `emotion-server evaluate` writes it (extra fields too) goes out as documented."""
    model = tmp_path / "carded.onnx"
    shutil.copy(BUNDLED_MODEL, model)
    card = {
        "name": "emotion-classifier",
        "version": "1.0.0",
        "accuracy": 0.7012,
        "dataset": "FER2013",
        "framework": "Keras 3 -> ONNX",
        "precision": "float32",
        "created_at": "2026-01-01T00:00:00+00:00",
        "metrics": {"PrivateTest": {"accuracy": 0.7012}},
        "tta": "flip",
        "temperature": 1.2,
    }
    model.with_suffix(".json").write_text(json.dumps(card))
    response = create_app({"model_path": str(model)}).test_client().get("/summary")
    assert response.status_code == 200
    body = response.get_json()
    assert body["accuracy"] == 0.7012 and body["metrics"] == card["metrics"]
    assert body["test_time_augmentation"] == "flip" and body["name"] == card["name"]
    assert body["model_views"] is None  # the card does not say
