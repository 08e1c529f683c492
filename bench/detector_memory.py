"""The face detector's memory against its speed: ONNX Runtime's arena kept or shrunk after each
run, with or without glibc's transparent huge pages for large buffers.

    python bench/detector_memory.py [--runs 10]

Each configuration runs in a fresh process (glibc reads GLIBC_TUNABLES at start): CenterFace on
a 640x480 photo, `--runs` times; prints the resident memory the detections left behind and the
milliseconds per detection (best of the runs), as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CONFIGURATIONS = {
    "arena kept (ONNX Runtime's default)": ("keep", "glibc.malloc.hugetlb=0"),
    "arena shrunk after each run": ("shrink", "glibc.malloc.hugetlb=0"),
    "arena shrunk + huge pages (served)": ("shrink", "glibc.malloc.hugetlb=1"),
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

detector = CenterFaceDetector()
if sys.argv[1] == "keep":
    detector.run_options = ort.RunOptions()
photo = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
detector.detect(photo[:64, :64])
before = rss_mb()
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    detector.detect(photo)
    times.append((time.perf_counter() - started) * 1000)
print(json.dumps({"rss_growth_mb": rss_mb() - before, "ms": min(times)}))
"""


def measure(arena: str, tunables: str, runs: int) -> dict:
    env = {**os.environ, "GLIBC_TUNABLES": tunables}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, arena, str(runs)],
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
    for name, (arena, tunables) in CONFIGURATIONS.items():
        row = measure(arena, tunables, args.runs)
        print(f"| {name} | {row['rss_growth_mb']:.0f} | {row['ms']:.1f} |")


if __name__ == "__main__":
    main()
