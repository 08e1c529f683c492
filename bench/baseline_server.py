"""The baseline: the original design, for benchmarks only.

Flask's built-in server, and Keras `model.predict` (TensorFlow backend) on every request, on
the same emotion_model.h5 the project ships: bytes -> greyscale 48x48 -> predict -> label.
Needs the [bench] extra (Keras + TensorFlow). Usage: python bench/baseline_server.py PORT [H5]
"""

import io
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]

port = int(sys.argv[1])
model = keras.saving.load_model(sys.argv[2] if len(sys.argv) > 2 else "models/emotion_model.h5")
app = Flask(__name__)


@app.post("/inference")
def inference():
    image = Image.open(io.BytesIO(request.get_data())).convert("L").resize((48, 48))
    batch = (np.asarray(image, dtype=np.float32) / 255.0)[None, :, :, None]
    probabilities = model.predict(batch, verbose=0)[0]
    return jsonify(prediction=EMOTIONS[int(np.argmax(probabilities))])


@app.get("/summary")
def summary():
    return jsonify(name="baseline", input_shape=[1, 48, 48, 1], output_shape=[1, 7])


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=port)
