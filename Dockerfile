# The emotion server: gunicorn + ONNX Runtime on a slim Python, no TensorFlow.
#   docker build -t emotion-classifier .
#   docker run -p 8080:5000 emotion-classifier
# BASE can name a local base image where no registry is reachable.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=5000

WORKDIR /app

# Dependencies first, read from pyproject.toml alone, so a code change reuses this layer. The
# face detectors' weights ship in the package itself. The video decoder (PyAV) is a
# dependency: its wheel carries FFmpeg, so no system package is needed.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY src ./src
# (pip's build folder is left out of the image)
RUN python -m pip install --no-cache-dir --no-deps . && rm -rf build

COPY models ./models
COPY app.py test_client.py ./

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
USER 10001

EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '5000')}/healthz\", timeout=4)"]

# `serve` execs gunicorn, which becomes PID 1 and drains workers on SIGTERM.
CMD ["emotion-server", "serve"]
