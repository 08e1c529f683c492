"""Small faces: from what size on are faces in a photo found, and read as well as FER2013's own
48x48 pictures? Measured on PublicTest, as every choice about the model is.

    python bench/face_size.py [--data PATH] [--limit N] [--out bench/results]

A group photo, a room seen by a camera, a crowd: faces there are often a few dozen pixels
wide. Each PublicTest face (its 48x48 picture) is shown at each size in the table (resized,
bicubic), a margin of half its size around it continued from its edges, at a random place
(seeded) in a 640x480 photo of its own median grey. The served pipeline finds it (the
largest face found) and the served model classifies its crop; "direct" is the model on the
same faces' 48x48 pictures (what `evaluate` scores), the ceiling here. "Read right" counts a
face that was not found as not read right: what a client sees. The last column is a real
face for comparison: the sample photo scaled so its face is that wide, found or not.

Writes bench/results/face_size.md (and .json) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from emotion_server import hostinfo
from emotion_server.config import Settings
from emotion_server.pipeline import Pipeline
from emotion_server.training.data import load_cached

ROOT = Path(__file__).resolve().parents[1]
SIZES = (16, 24, 32, 48, 72, 144)
WIDTH, HEIGHT = 640, 480


def in_photo(face: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 face shown `size` pixels wide, its edges continued for half its size around
    it, at a random place in a WIDTH x HEIGHT photo of its median grey."""
    shown = np.asarray(Image.fromarray(face).resize((size, size), Image.Resampling.BICUBIC))
    framed = np.pad(shown, size // 2, mode="edge")
    photo = np.full((HEIGHT, WIDTH), int(np.median(face)), np.uint8)
    side = framed.shape[0]
    top = int(rng.integers(0, HEIGHT - side + 1))
    left = int(rng.integers(0, WIDTH - side + 1))
    photo[top : top + side, left : left + side] = framed
    return photo


# The sample photo's face (samples/astronaut.jpg, 256x256): about 46 pixels wide.
SAMPLE_FACE_WIDTH = 46


def sample_found(pipeline: Pipeline, size: int) -> bool:
    """Whether the sample photo's face, a real one, is found when the photo is scaled so the
    face is `size` pixels wide, in the corner of a WIDTH x HEIGHT grey photo."""
    photo = Image.open(ROOT / "samples" / "astronaut.jpg").convert("RGB")
    side = max(1, round(photo.width * size / SAMPLE_FACE_WIDTH))
    canvas = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128))
    canvas.paste(photo.resize((side, side), Image.Resampling.BICUBIC), (10, 10))
    return bool(pipeline.detector.detect(np.asarray(canvas)))


def run(data: str | None, limit: int | None, seed: int = 0) -> dict:
    split = load_cached(data)["PublicTest"]
    images, labels = split.images, split.labels
    if limit:
        images, labels = images[:limit], labels[:limit]
    pipeline = Pipeline.from_settings(Settings.from_env(threads=1, idle_threads=1))
    direct = pipeline.classify_crops(list(images)).argmax(1) == labels
    rng = np.random.default_rng(seed)
    rows = []
    for size in SIZES:
        start = time.perf_counter()
        found, crops = [], []
        for index, face in enumerate(images):
            gray = in_photo(face, size, rng)
            faces = pipeline.detector.detect(np.repeat(gray[..., None], 3, axis=2))
            if not faces:
                continue
            box = max(faces, key=lambda f: f.area)
            found.append(index)
            crops.append(pipeline.face_crop(gray, box)[1])
        found_at = np.array(found, dtype=int)
        right = pipeline.classify_crops(crops).argmax(1) == labels[found_at] if crops else []
        rows.append(
            {
                "size": size,
                "faces": len(images),
                "found": len(found),
                "direct": float(direct[found_at].mean()) if found else 0.0,
                "accuracy_found": float(np.mean(right)) if found else 0.0,
                "read_right": float(np.sum(right)) / len(images),
                "sample_found": sample_found(pipeline, size),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "host": hostinfo.describe(),
        "model": str(pipeline.model.path),
        "seed": seed,
        "direct_all": float(direct.mean()),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    """The table scripts/docs.py puts into docs/performance.md."""
    head = ["face shown at", "found", "read right, of all", "accuracy, of those found",
            "direct 48x48, same faces", "the sample photo's face found"]  # fmt: skip
    lines = [
        f"Face-size benchmark of {result['date']} on {result['host']} (`{result['command']}`; "
        f"{result['model']}): PublicTest faces shown at each size in a 640x480 photo; the "
        f"model on all of their 48x48 pictures: {result['direct_all']:.2%}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in result["rows"]:
        cells = [
            f"{row['size']} px",
            f"{row['found'] / row['faces']:.1%}",
            f"{row['read_right']:.2%}",
            f"{row['accuracy_found']:.2%}",
            f"{row['direct']:.2%}",
            {True: "yes", False: "no", None: ""}[row.get("sample_found")],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="FER2013 (default: FER2013_PATH or ../shared/data)")
    parser.add_argument("--limit", type=int, help="only the first N PublicTest faces")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    result = run(args.data, args.limit)
    result["command"] = "python bench/face_size.py" + (
        f" --limit {args.limit}" if args.limit else ""
    )
    text = markdown(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "face_size.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "face_size.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
