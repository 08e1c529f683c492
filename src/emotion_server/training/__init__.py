"""The training wing (PyTorch loop, Keras builds for shipping); serving never imports it.

Keras runs on its PyTorch backend here: the [train] extra has no TensorFlow.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
