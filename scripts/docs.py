"""Regenerate the figures in README.md and docs/*.md from their sources, in place.

    python scripts/docs.py           # rewrite every generated region
    python scripts/docs.py --check   # exit 1 and print a diff where a page is out of date

A generated region sits between `<!-- generated: NAME begin -->` and
`<!-- generated: NAME end -->`; everything outside the markers is written by hand and left
alone. Each NAME has one renderer below, fed from a file the project already writes:
the served model's card (`emotion-server evaluate`) and `bench/results/` (`bench/run.py`,
`bench/video.py`, `bench/detectors.py`, `bench/alignment.py`, `bench/face_size.py`;
`photo-path/` holds a `bench/run.py` run of its own).
So a figure on a page is the figure in its source, never a copy that drifts.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
SERVED_CARD = ROOT / "models" / "emotion_model.int8.json"
FLOAT32_CARD = ROOT / "models" / "emotion_model.json"
# The accurate mode's served file is accurate_model.int8.onnx, else accurate_model.onnx.
ACCURATE_CARDS = [ROOT / "models" / f"accurate_model{s}" for s in (".int8.json", ".json")]
BENCH_RESULTS = ROOT / "bench" / "results" / "results.json"
# The same benchmark on a CPU with AVX2 only, where the model costs several times more per face.
AVX2_RESULTS = ROOT / "bench" / "results" / "avx2" / "results.json"
# And on an AMD Zen 5 with AVX-512 (VNNI, BF16) but no AMX.
ZEN5_RESULTS = ROOT / "bench" / "results" / "zen5" / "results.json"
VIDEO_RESULTS = ROOT / "bench" / "results" / "video.md"
FRONTEND_RESULTS = ROOT / "bench" / "results" / "frontends.json"
DETECTOR_RESULTS = ROOT / "bench" / "results" / "detectors.json"
PHOTO_RESULTS = ROOT / "bench" / "results" / "photo-path" / "results.json"
ALIGNMENT_RESULTS = ROOT / "bench" / "results" / "alignment.json"
FACE_SIZE_RESULTS = ROOT / "bench" / "results" / "face_size.json"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REGION = re.compile(
    r"(?P<begin><!-- generated: (?P<name>[\w-]+) begin -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- generated: (?P=name) end -->)",
    re.DOTALL,
)


def _load(path: Path) -> ModuleType:
    """Import a script by its path (scripts/ and bench/ are not packages)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _card(path: Path) -> dict:
    return json.loads(path.read_text())


def model_card() -> str:
    """The served model's card as tables (scripts/model/model_card_md.py renders it)."""
    return _load(ROOT / "scripts" / "model" / "model_card_md.py").render(_card(SERVED_CARD))


def float32_card() -> str:
    """One sentence on the float32 model the served one was quantized from."""
    card = _card(FLOAT32_CARD)
    public = card["metrics"]["PublicTest"]["accuracy"]
    f1 = card["metrics"]["PrivateTest"]["macro_f1"]
    return (
        f"The float32 model it was quantized from scores {card['accuracy'] * 100:.2f}% on "
        f"PrivateTest ({public * 100:.2f}% on PublicTest, macro-F1 {f1:.4f}; "
        f"`models/{FLOAT32_CARD.name}`).\n"
    )


def _accurate_card() -> tuple[Path, dict] | None:
    path = next((path for path in ACCURATE_CARDS if path.exists()), None)
    return (path, _card(path)) if path else None


def modes() -> str:
    """The README's table of the bundled models (EMOTION_MODE), from their cards."""
    rows = [("default", SERVED_CARD, _card(SERVED_CARD))]
    if accurate := _accurate_card():
        rows.append(("accurate", *accurate))
    lines = [
        "| `EMOTION_MODE` | served file | PrivateTest accuracy | macro-F1 "
        "| ms per face, 1 thread | measured on |",
        "|---|---|---|---|---|---|",
    ]
    for mode, path, card in rows:
        f1 = card["metrics"]["PrivateTest"]["macro_f1"]
        lines.append(
            f"| `{mode}` | `models/{path.with_suffix('.onnx').name}` | "
            f"{card['accuracy'] * 100:.2f}% | {f1:.3f} | {card.get('ms_per_face_1_thread')} | "
            f"{card.get('cpu', 'not recorded')} |"
        )
    if len(rows) == 1:
        lines.append("| `accurate` | not shipped yet | | | | |")
    return "\n".join(lines) + "\n"


def accurate_card() -> str:
    """docs/model.md's card of the accurate mode's model, or a line saying none ships."""
    accurate = _accurate_card()
    if accurate is None:
        return "No accurate model ships yet: `EMOTION_MODE=accurate` is refused at start-up.\n"
    path, card = accurate
    table = _load(ROOT / "scripts" / "model" / "model_card_md.py").render(card)
    return f"From `models/{path.name}`:\n\n{table}"


def accuracy() -> str:
    """The README's one line of measured accuracy, from the served model's card."""
    card = _card(SERVED_CARD)
    return (
        f"The served model classifies FER2013's PrivateTest faces with "
        f"**{card['accuracy'] * 100:.2f}%** accuracy (its card: [docs/model.md](docs/model.md)).\n"
    )


def bench_results(path: Path = BENCH_RESULTS) -> str:
    """The server benchmark's tables, as bench/run.py writes them from results.json."""
    return _load(ROOT / "bench" / "run.py").to_markdown(json.loads(path.read_text()))


def frontends() -> str:
    """The front-end benchmark's tables, as bench/frontends.py writes them from its JSON."""
    return _load(ROOT / "bench" / "frontends.py").to_markdown(
        json.loads(FRONTEND_RESULTS.read_text())
    )


def video_bench() -> str:
    """The video benchmark's opening line and table (its notes stay in bench/results/video.md)."""
    lines = VIDEO_RESULTS.read_text().splitlines()
    table_start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table_end = next(
        (i for i in range(table_start, len(lines)) if not lines[i].startswith("|")), len(lines)
    )
    return "\n".join(lines[:table_end]) + "\n"


def detector_bench() -> str:
    """The face detectors side by side, as bench/detectors.py writes them from detectors.json."""
    results = json.loads(DETECTOR_RESULTS.read_text())
    return _load(ROOT / "bench" / "detectors.py").to_markdown(results)


def photo_path_bench() -> str:
    """bench/run.py's photo rows from the photo-path run, with the issue's two photo goals."""
    result = json.loads(PHOTO_RESULTS.read_text())
    lines = _load(ROOT / "bench" / "run.py").to_markdown(result).splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("| ceiling of"))
    kept = [line for line in lines[: end - 1] if "| face crop 48x48 |" not in line]

    def photo(name: str, connections: int) -> dict:
        rows = result["contenders"][name]["workloads"]["photo 640x480"]
        return next(row for row in rows if row["connections"] == connections)

    ours, base = photo("ours", 8), photo("baseline", 8)
    ratio = ours["throughput_rps"] / base["throughput_rps"]
    p50 = photo("ours", 1)["p50_ms"]
    kept += [
        "",
        "| photo goal | measured | goal | met |",
        "|---|---|---|---|",
        f"| ours / baseline, photo throughput at 8 connections | {ratio:.1f} | >= 3 | "
        f"{'yes' if ratio >= 3 else 'no'} |",
        f"| ours, photo p50 at 1 connection, ms | {p50} | <= 12 | {'yes' if p50 <= 12 else 'no'} |",
    ]
    return "\n".join(kept) + "\n"


def alignment_bench() -> str:
    """Tilted faces read as they are and turned upright, as bench/alignment.py writes them."""
    result = json.loads(ALIGNMENT_RESULTS.read_text())
    return _load(ROOT / "bench" / "alignment.py").markdown(result)


def face_size_bench() -> str:
    """Faces found and read at each size in a photo, as bench/face_size.py writes them."""
    result = json.loads(FACE_SIZE_RESULTS.read_text())
    return _load(ROOT / "bench" / "face_size.py").markdown(result)


RENDERERS: dict[str, Callable[[], str]] = {
    "model-card": model_card,
    "float32-card": float32_card,
    "accuracy": accuracy,
    "modes": modes,
    "accurate-card": accurate_card,
    "bench-results": bench_results,
    "bench-results-avx2": lambda: bench_results(AVX2_RESULTS),
    "bench-results-zen5": lambda: bench_results(ZEN5_RESULTS),
    "video-bench": video_bench,
    "frontends": frontends,
    "detector-bench": detector_bench,
    "photo-path-bench": photo_path_bench,
    "alignment-bench": alignment_bench,
    "face-size-bench": face_size_bench,
}


def regenerate(text: str, renderers: dict[str, Callable[[], str]] = RENDERERS) -> str:
    """`text` with every generated region's body replaced by what its renderer writes now."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in renderers:
            raise KeyError(f"no renderer for generated region {name!r}")
        return match["begin"] + renderers[name]() + match["end"]

    result, regions = REGION.subn(replace, text)
    if text.count("<!-- generated:") != 2 * regions:
        raise ValueError("a generated region's begin or end marker is missing or misspelt")
    return result


def stale(pages: list[Path] = PAGES) -> dict[Path, str]:
    """Pages whose text differs from what they would be regenerated to, with a unified diff."""
    diffs = {}
    for page in pages:
        current = page.read_text()
        wanted = regenerate(current)
        if wanted != current:
            name = str(page.relative_to(ROOT) if page.is_relative_to(ROOT) else page)
            diffs[page] = "".join(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    wanted.splitlines(keepends=True),
                    fromfile=f"{name} (on disk)",
                    tofile=f"{name} (generated)",
                )
            )
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 with a diff if out of date"
    )
    parser.add_argument(
        "pages", nargs="*", type=Path, help="pages to look at (default: README.md, docs/*.md)"
    )
    args = parser.parse_args()
    diffs = stale([page.resolve() for page in args.pages] or PAGES)
    if args.check:
        for diff in diffs.values():
            sys.stdout.write(diff)
        if diffs:
            print(f"{len(diffs)} page(s) out of date: run python scripts/docs.py", file=sys.stderr)
        return 1 if diffs else 0
    for page in diffs:
        page.write_text(regenerate(page.read_text()))
        print(f"rewrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
