"""The floors, for benchmarks only: the cheapest Flask views on our gunicorn layout.

`app` reads the upload and answers a small JSON, with no decoding, no model and no hooks, so its
server CPU per request is what any request costs before our work begins (http-floor).

`model_app` does the least a Flask server of the bundled model must do for a face crop: decode
the upload with Pillow, scale it to the model's 48x48 input, run the INT8 model on one ONNX
Runtime thread and answer the top emotion and the 7 probabilities as JSON; no face search, no
checks of the file, no metrics, no access log, no security headers (model-floor). What it
reaches is the most any Flask app serving this model reaches on this machine.

bench/run.py starts them as `python -m gunicorn --workers 2 --worker-class
emotion_server.workers.GeventWorker --chdir bench floor_app:app` (or `floor_app:model_app`):
the worker `emotion-server serve` runs, keep-alive connections balanced over both.
"""

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
_sessions: list[ort.InferenceSession] = []  # one per worker, made after gunicorn's fork


@model_app.post("/inference")
def model_inference():
    if not _sessions:
        _sessions.append(ort.InferenceSession(str(MODEL), session_options(1)))
    (session,) = _sessions
    with Image.open(io.BytesIO(request.get_data())) as image:
        gray = np.asarray(image.convert("L"))
    (probabilities,) = session.run(None, {session.get_inputs()[0].name: to_model_input([gray])})
    vector = probabilities[0].tolist()
    probabilities = dict(zip(EMOTIONS, vector, strict=True))
    return jsonify(prediction=EMOTIONS[int(np.argmax(vector))], probabilities=probabilities)
