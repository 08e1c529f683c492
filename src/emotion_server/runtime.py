"""ONNX Runtime settings shared by the emotion model and the face detector."""

from __future__ import annotations

from collections.abc import Callable

import onnxruntime as ort


def session_options(threads: int) -> ort.SessionOptions:
    """ONNX Runtime options for one worker's session: `threads` intra-op threads, and no
    spin-waiting between calls, so idle pool threads do not burn the cores that the other
    workers and the HTTP handling need."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def cpu_session(model: str | bytes, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime session of `model` (a file's path or its bytes) on `threads` threads."""
    return ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])


def idle_session(
    model: str | bytes, threads: int, idle_threads: int, idle: Callable[[], bool] | None
) -> ort.InferenceSession | None:
    """The same model again on `idle_threads` threads, for the calls made while `idle()` says
    nothing else is being analysed on the server (activity.py), so that a lone request uses
    the cores the other workers leave idle; None where nobody asks `idle()` or it would add no
    threads to the worker's `threads`."""
    if idle is None or idle_threads <= threads:
        return None
    return cpu_session(model, idle_threads)
