"""ONNX Runtime settings shared by the emotion model and the face detector."""

from __future__ import annotations

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
