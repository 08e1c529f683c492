"""The docs pages: figures as their sources say (scripts/docs.py), and links that lead somewhere."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import BUNDLED_MODEL, ROOT

SCRIPT = ROOT / "scripts" / "docs.py"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def _docs_script() -> ModuleType:
    """scripts/docs.py, imported by its path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("docs_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def docs() -> ModuleType:
    return _docs_script()


def test_every_page_is_what_scripts_docs_generates(docs):
    diffs = docs.stale()
    assert not diffs, "run python scripts/docs.py:\n" + "\n".join(diffs.values())


def test_the_generated_regions_are_where_the_figures_are(docs):
    """The model tables, the benchmark tables and the README's accuracy line are generated."""
    expected = {
        "README.md": {"accuracy", "modes"},
        "docs/model.md": {"model-card", "float32-card", "accurate-card"},
        "docs/operations.md": {"frontends"},
        "docs/performance.md": {
            "bench-results",
            "bench-results-avx2",
            "bench-results-zen5",
            "video-bench",
            "detector-bench",
            "photo-path-bench",
            "alignment-bench",
            "face-size-bench",
        },
    }
    for page, names in expected.items():
        found = {m["name"] for m in docs.REGION.finditer((ROOT / page).read_text())}
        assert found == names, page


def test_a_figure_edited_by_hand_is_put_back(docs):
    """A changed figure inside a region is a difference, and regenerating restores the page."""
    page = (ROOT / "docs" / "model.md").read_text()
    card = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    quoted = f"**{card['accuracy'] * 100:.2f}%**"
    assert quoted in page
    edited = page.replace(quoted, "**99.99%**")
    assert docs.regenerate(edited) == page


def test_check_fails_with_a_diff_on_a_stale_page(tmp_path):
    stale_page = tmp_path / "performance.md"
    text = (ROOT / "docs" / "performance.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ours | face crop"))
    stale_page.write_text(text.replace(row, row.replace("| ours |", "| ours (edited) |")))
    run = [sys.executable, str(SCRIPT), "--check"]
    stale = subprocess.run([*run, str(stale_page)], capture_output=True, text=True, timeout=120)
    assert stale.returncode == 1
    assert "-| ours (edited) | face crop" in stale.stdout and "+" + row in stale.stdout
    fresh = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr


def test_a_region_without_its_end_marker_is_an_error(docs):
    with pytest.raises(ValueError):
        docs.regenerate("<!-- generated: model-card begin -->\n| stale |\n")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m[1]) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


def _relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    links = _relative_links(page)
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link} points at a missing file"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page.name}: {link} names no heading"


def test_the_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[gone](missing.md) [here](#top) [web](https://example.org)\n")
    assert _relative_links(page) == ["missing.md", "#top"]
    assert not (tmp_path / "missing.md").exists() and "top" in _anchors(page)


def test_the_models_table_quotes_each_bundled_card(docs):
    """README's EMOTION_MODE table: the default's figures from its card; the accurate row from
    its own card where one ships, else says it does not."""
    table = docs.modes()
    card = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    default = next(line for line in table.splitlines() if line.startswith("| `default` |"))
    assert f"{card['accuracy'] * 100:.2f}%" in default
    assert str(card["ms_per_face_1_thread"]) in default
    assert f"| {card.get('cpu', 'not recorded')} |" in default  # the CPU beside the speed
    accurate = next(line for line in table.splitlines() if line.startswith("| `accurate` |"))
    shipped = [path for path in docs.ACCURATE_CARDS if path.exists()]
    if shipped:
        other = json.loads(shipped[0].read_text())
        assert f"{other['accuracy'] * 100:.2f}%" in accurate
    else:
        assert "not shipped yet" in accurate


def test_an_ensemble_card_lists_every_member_and_their_summed_training_time():
    """The model-card table names each member of an ensemble, with its weight and recipe, and
    adds the members' training time; a single run's card has its own recipe line."""
    spec = importlib.util.spec_from_file_location(
        "model_card_md", ROOT / "scripts" / "model" / "model_card_md.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    card = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())

    def member(run: str, seed: int, epochs: int, seconds: float, weight: int) -> dict:
        recipe = {"name": "vgg48", "architecture": "vgg", "epochs": epochs, "seed": seed}
        return {
            "run": run,
            "recipe": recipe,
            "best": {"epoch": epochs - 1},
            "train_wall_seconds": seconds,
            "public_test_accuracy": 0.66,
            "weight": weight,
        }

    card["training"] = {
        "members": [member("a-s1", 1, 50, 3600.0, 2), member("a-s2", 2, 40, 1800.0, 1)],
        "views": "centre",
        "balance": {"tau": 0.3},
        "trained_with": "PyTorch 2.13.0",
    }
    table = module.render(card)
    members = next(line for line in table.splitlines() if line.startswith("| members |"))
    assert "`a-s1` (weight 2" in members and "`a-s2` (weight 1" in members
    assert "40 epochs, best epoch 39, seed 2" in members
    training = next(line for line in table.splitlines() if line.startswith("| training |"))
    assert "5400 s (1.5 h) over 2 runs" in training
    assert "views in the graph: centre" in training and "tau 0.3" in training

    card["training"] = member("b-s1", 7, 30, 720.0, 1)
    table = module.render(card)
    assert "| recipe | `vgg48`: vgg None, 30 epochs, best epoch 29, seed 7 |" in table
    assert "| training | 720 s (0.2 h) |" in table


def _server_error_codes() -> set[str]:
    """The codes an HTTP answer can carry: our exception types' (less the CLI's own), the
    HTTP layer's (api/errors.py) and gunicorn's parser's refusals (workers.py)."""
    from emotion_server import errors
    from emotion_server.api.errors import HTTP_CODES
    from emotion_server.workers import PARSE_REFUSALS

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    ours = {cls.code for cls in subclasses(errors.EmotionServerError)}
    ours -= {errors.UnreadableFile.code}  # `emotion-server classify` only: a file it cannot read
    unused = {"forbidden", "service_unavailable"}  # kept in the map; nothing raises them
    parser = {code for _, _, code in PARSE_REFUSALS}
    return ours | (set(HTTP_CODES.values()) - unused) | parser | {"internal_error", "not_ready"}


def test_every_error_code_is_documented_in_the_api_page_and_the_openapi_schema():
    from emotion_server.api.schemas import ErrorBody

    table = set(
        re.findall(r"^\| \d{3} \| `([a-z_]+)` \|", (ROOT / "docs/api.md").read_text(), re.M)
    )
    described = set(re.findall(r"[a-z_]+", ErrorBody.model_fields["error"].description))
    codes = _server_error_codes()
    assert "malformed_body" in codes and "read_timeout" in codes
    assert codes - table == set(), "codes missing from docs/api.md's error table"
    assert table - codes == set(), "docs/api.md lists codes the server never sends"
    assert codes - described == set(), "codes missing from ErrorBody's description"
