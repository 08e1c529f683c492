"""The HTTP floor, for benchmarks only: the cheapest Flask view on our gunicorn layout.

It reads the upload and answers a small JSON, with no decoding, no model and no hooks, so its
server CPU per request is what any request costs before our work begins. bench/run.py starts it
as `python -m gunicorn --workers 2 --chdir bench floor_app:app`.
"""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/inference")
def inference():
    return jsonify(prediction="neutral", bytes=len(request.get_data()))
