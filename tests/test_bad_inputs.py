"""The bad-input corpus (tests/bad_inputs.py) against gunicorn: each case gets its stable 4xx
JSON error, or a correct 200 where the input is a valid image; never a 5xx; and the server
answers a normal request right after every one."""

from __future__ import annotations

import pytest
import requests
from bad_inputs import RAW, Case, corpus
from conftest import encode

pytestmark = pytest.mark.e2e

CASES = corpus()


def _params():
    for case in CASES:
        yield pytest.param(case, id=case.name)


def test_the_corpus_is_large_and_varied():
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)
    codes = {case.code for case in CASES if case.code}
    assert codes >= {
        "empty_body",
        "invalid_image",
        "corrupt_image",
        "image_too_large",
        "payload_too_large",
        "unsupported_image_format",
        "unsupported_media_type",
        "missing_file",
    }


def send(url: str, case: Case) -> requests.Response:
    if case.files is not None:
        return requests.post(url + case.path, files=case.files, headers=case.headers, timeout=60)
    return requests.post(url + case.path, data=case.data, headers=case.headers, timeout=60)


@pytest.fixture(scope="module")
def normal_photo(astronaut) -> bytes:
    return encode(astronaut)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(server, normal_photo, case: Case):
    response = send(server.url, case)
    assert response.status_code < 500, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert response.status_code == case.status, body
    if case.code is not None:
        assert body["error"] == case.code and body["message"], body
    else:
        assert "error" not in body
        if case.path == "/inference":
            assert body["prediction"] in body["probabilities"]
            assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    if case.check is not None:
        assert case.check(body), body
    after = requests.post(server.url + "/inference", data=normal_photo, headers=RAW, timeout=60)
    assert after.status_code == 200 and after.json()["face_detected"] is True
