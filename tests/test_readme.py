"""The README's promises: the two commands first, and numbers that match what was measured."""

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


def test_readme_quotes_the_measured_accuracy():
    card = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    percent = f"{card['accuracy'] * 100:.2f}%"
    assert percent in README, f"README should state the card's PrivateTest accuracy {percent}"
    assert not re.search(r"MODEL_SECTION|DETECTOR_TABLE", README)
