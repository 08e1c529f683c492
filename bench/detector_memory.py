"""The face detector's memory against its speed: ONNX Runtime's arena kept or shrunk after each
run, with or without glibc's transparent huge pages and a fixed mmap threshold for large buffers.

    python bench/detector_memory.py [--runs 10]

Each configuration runs in a fresh process (glibc reads GLIBC_TUNABLES at start): CenterFace on
bench/run.py's 640x480 photo with one face, `--runs` times, in one pass at 800 or in the served
two-pass search (which finds the face in its first pass, at half size); prints the resident
memory the detections left behind and the milliseconds per detection (best of the runs), as a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SERVED = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=2097152"  # as `serve` sets them
BEFORE = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=524288"  # the previous setting
# name -> (arena, GLIBC_TUNABLES, EMOTION_DETECT_LARGE_FACE: 0 is one pass at 800,
# EMOTION_DETECT_PRECISION). Arena: "keep" after every pass (ONNX Runtime's default), "shrink"
# after every pass, or "served": kept after an INT8 first pass of at most
# CenterFaceDetector.KEEP_ARENA_PIXELS, shrunk after any other.
CONFIGURATIONS = {
    "one pass, arena kept (ONNX Runtime's default)": (
        "keep",
        "glibc.malloc.hugetlb=0",
        0,
        "float32",
    ),
    "one pass, arena shrunk after each run": ("shrink", "glibc.malloc.hugetlb=0", 0, "float32"),
    "one pass, arena shrunk + huge pages": ("shrink", "glibc.malloc.hugetlb=1", 0, "float32"),
    "two-pass search, arena shrunk + huge pages": (
        "shrink",
        "glibc.malloc.hugetlb=1",
        56,
        "float32",
    ),
    "two-pass search, + mmap threshold 512 KiB": ("shrink", BEFORE, 56, "float32"),
    "two-pass search, INT8 first pass (mixed), as above": ("shrink", BEFORE, 56, "mixed"),
    "mixed, first pass's arena kept": ("served", BEFORE, 56, "mixed"),
    "mixed, first pass's arena kept, mmap threshold 2 MiB (served)": (
        "served",
        SERVED,
        56,
        "mixed",
    ),
}

CHILD = """
import json, sys, time
import numpy as np
import onnxruntime as ort
from emotion_server.faces import CenterFaceDetector

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

detector = CenterFaceDetector(large_face=int(sys.argv[3]), precision=sys.argv[4])
if sys.argv[1] == "keep":
    detector.run_options = ort.RunOptions()
elif sys.argv[1] == "shrink":
    detector.keep_options = detector.run_options
from PIL import Image
from skimage import data

# bench/run.py's photo: one face, which a two-pass search finds in its first pass.
photo = Image.new("RGB", (640, 480), (120, 120, 120))
photo.paste(Image.fromarray(data.astronaut()).resize((480, 480)), (80, 0))
photo = np.asarray(photo)
detector.detect(photo[:64, :64])
before = rss_mb()
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    detector.detect(photo)
    times.append((time.perf_counter() - started) * 1000)
print(json.dumps({"rss_growth_mb": rss_mb() - before, "ms": min(times)}))
"""


def measure(
    arena: str, tunables: str, runs: int, large_face: int = 0, precision: str = "float32"
) -> dict:
    env = {**os.environ, "GLIBC_TUNABLES": tunables}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, arena, str(runs), str(large_face), precision],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    print("| detector memory | RSS left after the detections, MB | ms per 640x480 detection |")
    print("|---|---|---|")
    for name, (arena, tunables, large_face, precision) in CONFIGURATIONS.items():
        row = measure(arena, tunables, args.runs, large_face, precision)
        print(f"| {name} | {row['rss_growth_mb']:.0f} | {row['ms']:.1f} |")


if __name__ == "__main__":
    main()
