"""Compare face detectors on this machine: recall, false alarms, hard cases and latency.

    pip install "opencv-python-headless<5"     # for the Haar baseline (bench only)
    python bench/detectors.py [--threads 1]

Faces and non-faces: scikit-image's `lfw_subset` (100 face crops, 100 non-face crops, 25x25),
each upscaled to 96x96 and placed in the middle of a 192x192 mid-grey canvas. Hard cases: a
30-pixel face in a 1000x1000 image and the astronaut photo rotated 90 degrees. Latency: the
median of 30 runs on the 512x512 astronaut photo. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image
from skimage import data

from emotion_server.config import Settings
from emotion_server.faces import CenterFaceDetector, FaceBox


class HaarDetector:
    """OpenCV's frontal-face Haar cascade, the classic baseline (opencv-python-headless<5)."""

    name = "opencv-haar"

    def __init__(self):
        import cv2

        self.cv2 = cv2
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(path)

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        gray = self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2GRAY)
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)
        return [FaceBox(int(x), int(y), int(w), int(h), 1.0) for x, y, w, h in found]


def _canvas(crop: np.ndarray) -> np.ndarray:
    face = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((96, 96)))
    padded = np.pad(face, 48, constant_values=128)
    return np.repeat(padded[..., None], 3, axis=2)


def _covers(boxes: list[FaceBox], region: tuple[int, int, int, int]) -> bool:
    x1, y1, x2, y2 = region
    for box in boxes:
        cx, cy = box.x + box.width / 2, box.y + box.height / 2
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            return True
    return False


def measure(detector) -> dict:
    lfw = data.lfw_subset()
    faces, non_faces = lfw[:100], lfw[100:]
    found = sum(_covers(detector.detect(_canvas(c)), (48, 48, 144, 144)) for c in faces)
    alarms = sum(bool(detector.detect(_canvas(c))) for c in non_faces)

    astronaut = data.astronaut()
    canvas = np.full((1000, 1000, 3), 128, np.uint8)
    small = Image.fromarray(astronaut).crop((150, 20, 300, 220)).resize((30, 40))
    canvas[600:640, 300:330] = np.asarray(small)
    small_found = _covers(detector.detect(canvas), (295, 595, 335, 645))
    rotated = np.asarray(Image.fromarray(astronaut).rotate(90, expand=True))
    rotated_found = _covers(detector.detect(rotated), (40, 232, 200, 342))

    for _ in range(3):
        detector.detect(astronaut)
    times = []
    for _ in range(30):
        start = time.perf_counter()
        detector.detect(astronaut)
        times.append(time.perf_counter() - start)
    return {
        "detector": detector.name,
        "faces found (of 100)": found,
        "false alarms (of 100)": alarms,
        "30-px face": small_found,
        "rotated 90°": rotated_found,
        "ms on 512x512": round(statistics.median(times) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    settings = Settings()
    detectors = [
        CenterFaceDetector(
            threshold=settings.detect_threshold,
            max_side=settings.detect_max_side,
            threads=args.threads,
        )
    ]
    try:
        detectors.append(HaarDetector())
    except ImportError:
        print("(opencv-python-headless not installed: Haar baseline skipped)")
    rows = [measure(detector) for detector in detectors]
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in header) + " |")


if __name__ == "__main__":
    main()
