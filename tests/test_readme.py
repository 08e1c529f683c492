"""The README's promises: two screens, the two commands first, and figures that match the card."""

import json
import re

from conftest import BUNDLED_MODEL, ROOT

README = (ROOT / "README.md").read_text()


def _first_block() -> list[str]:
    return README.split("```")[1].splitlines()[1:]


def test_first_block_starts_with_serve_then_test_commands():
    serve, test = _first_block()[:2]
    assert serve.startswith("python3 -m venv .venv") and serve.endswith("emotion-server serve")
    assert test.startswith("python3 -m venv .venv") and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci  # .ci/run executes the README's second line itself


def test_readme_is_two_screens():
    assert len(README.splitlines()) <= 150


def test_readme_and_model_page_quote_the_measured_accuracy():
    card = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    percent = f"{card['accuracy'] * 100:.2f}%"
    for page in (README, (ROOT / "docs" / "model.md").read_text()):
        assert percent in page, f"the card's PrivateTest accuracy {percent} should be quoted"
    assert not re.search(r"MODEL_SECTION|DETECTOR_TABLE", README)


def test_curl_example_names_a_sample_that_ships():
    """The curl in the README works as pasted from the repository root: its file is here."""
    uploads = re.findall(r"curl .*?@(\S+)", README)
    assert uploads
    for name in uploads:
        assert (ROOT / name).is_file(), name
    assert (ROOT / "samples" / "astronaut.jpg").stat().st_size < 30_000


def test_every_setting_is_in_the_settings_table():
    """Each field of config.Settings has its environment variable in the README's table."""
    from dataclasses import fields

    from emotion_server.config import Settings, variable_names

    table = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    for field in fields(Settings):
        variable = variable_names(field.name)[0]
        assert f"| `{variable}` |" in table, variable


def test_the_curl_answer_is_what_the_bundled_model_answers(client):
    """The README's example answer (shortened with "...") holds the figures the server gives
    for the sample photo now: it is rewritten when the bundled model changes."""
    block = re.search(r"```json\n(.*?)```", README, re.DOTALL)[1]
    shown = json.loads(block)
    upload = re.findall(r"curl .*?@(\S+)", README)[0]
    with open(ROOT / upload, "rb") as image:
        answer = client.post("/inference", data={"image": image}).get_json()

    def compare(shown, actual):
        if isinstance(shown, dict):
            for key, value in shown.items():
                if key != "...":
                    compare(value, actual[key])
        elif isinstance(shown, list):
            assert len(shown) == len(actual)
            for a, b in zip(shown, actual, strict=True):
                compare(a, b)
        else:
            assert shown == actual

    compare(shown, answer)
