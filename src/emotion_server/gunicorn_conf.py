"""gunicorn settings for `emotion-server serve`, from the same environment as the app."""

import sys

from emotion_server.config import Settings
from emotion_server.ops import GRACEFUL_TIMEOUT_S, on_exit, startup_problem_in_child

# Refuse bad settings or an unloadable model here, before any worker is forked (checked in a
# child of the master, which must not import ONNX Runtime: ops.py says why): status 2 and the
# message (gunicorn lets a SystemExit from its config module through). The metrics folder
# `serve` made before the exec is removed, as on any other exit.
_problem = startup_problem_in_child()
if _problem is not None:
    print(f"emotion-server: {_problem}", file=sys.stderr)
    on_exit(None)
    sys.exit(2)
_settings = Settings.from_env()

# An IPv6 address (HOST=::) in brackets, as gunicorn reads an address with its port.
_host = _settings.host
_ipv6 = ":" in _host and not _host.startswith(("[", "unix:"))
bind = f"[{_host}]:{_settings.port}" if _ipv6 else f"{_host}:{_settings.port}"
workers = _settings.workers
# gevent: one greenlet per connection, so slow clients cost no thread or process; each
# request must arrive within EMOTION_READ_TIMEOUT_S or gets a 408 (workers.py; why gevent:
# docs/operations.md). With threads > 1, gthread with the same deadline, and the pipeline
# micro-batches the concurrent requests' faces into shared model calls.
threads = _settings.worker_threads
worker_class = (
    "emotion_server.workers.ThreadWorker" if threads > 1 else "emotion_server.workers.GeventWorker"
)
timeout = _settings.timeout
graceful_timeout = GRACEFUL_TIMEOUT_S
# Every request on stdout, less the probes answered 2xx (EMOTION_ACCESS_LOG; accesslog.py).
accesslog = None if _settings.access_log == "off" else "-"
if _settings.access_log == "requests":
    logger_class = "emotion_server.accesslog.AccessLogger"
# The app is built in each worker (model and detector loaded once per worker), not preloaded.
preload_app = False

# gunicorn 27's control socket defaults to one shared path per user; not needed here.
control_socket_disable = True

# Operations hooks: a fresh Prometheus multiprocess folder before the workers fork, dead
# workers marked, the folder removed on exit, stopping sync workers answer queued connections;
# each worker's slot in the shared count of analyses in progress (activity.py).
from emotion_server.ops import (  # noqa: E402, F401
    child_exit,
    on_exit,
    post_fork,
    pre_fork,
    prepare_metrics_dir,
    worker_exit,
)

prepare_metrics_dir()
