"""The floors, for benchmarks only: the cheapest Flask views on our gunicorn layout.

`app` reads the upload and answers a small JSON, with no decoding, no model and no hooks, so its
server CPU per request is what any request costs before our work begins (http-floor).

`model_app` does the least a Flask server of the bundled model must do for a face crop: decode
the upload with Pillow, scale it to the model's 48x48 input, run the INT8 model on one ONNX
Runtime thread and answer the top emotion and the 7 probabilities as JSON; no face search, no
checks of the file, no metrics, no access log, no security headers (model-floor): a reference
for what a Flask app serving this model one request at a time reaches on this machine.

bench/run.py starts them as `python -m gunicorn --workers 2 --worker-class
emotion_server.workers.GeventWorker --chdir bench floor_app:app` (or `floor_app:model_app`):
the worker `emotion-server serve` runs, keep-alive connections balanced over both.
"""

import functools
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request
from PIL import Image

from emotion_server.contract import EMOTIONS
from emotion_server.crops import to_model_input
from emotion_server.runtime import session_options

MODEL = Path(__file__).resolve().parents[1] / "models" / "emotion_model.int8.onnx"

app = Flask(__name__)


@app.post("/inference")
def inference():
    return jsonify(prediction="neutral", bytes=len(request.get_data()))


model_app = Flask(__name__ + ".model")


@functools.cache
def _session() -> ort.InferenceSession:
    """The worker's session, made on its first request (after gunicorn's fork)."""
    return ort.InferenceSession(str(MODEL), session_options(1))


@model_app.post("/inference")
def model_inference():
    session = _session()
    with Image.open(io.BytesIO(request.get_data())) as image:
        gray = np.asarray(image.convert("L"))
    (outputs,) = session.run(None, {session.get_inputs()[0].name: to_model_input([gray])})
    vector = outputs[0].tolist()
    probabilities = dict(zip(EMOTIONS, vector, strict=True))
    return jsonify(prediction=EMOTIONS[int(np.argmax(vector))], probabilities=probabilities)
