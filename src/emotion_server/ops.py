"""Process-level operations for gunicorn: the Prometheus multiprocess folder and server hooks.

`startup_problem_in_child()` and `prepare_metrics_dir()` run in gunicorn's master before it
forks the workers (the latter also in `emotion-server serve` before it execs gunicorn);
`pre_fork`, `post_fork`, `child_exit`, `worker_exit` and `on_exit` are gunicorn server hooks,
picked up by name from the gunicorn config module. Nothing here imports prometheus_client,
nor does the model check: it picks its in-memory or multiprocess mode when first imported, and
that must happen in the workers, after $PROMETHEUS_MULTIPROC_DIR is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Set to the pid of the process that made a temporary metrics folder: `serve` execs gunicorn in
# the same process, so gunicorn's master (same pid) knows the folder is its own to remove.
CREATED_BY_VARIABLE = "EMOTION_METRICS_DIR_CREATED_BY"
# gunicorn's graceful_timeout: how long a stopping worker may take before it is killed.
GRACEFUL_TIMEOUT_S = 20


def startup_problem_in_child() -> str | None:
    """`startup_problem()` run in a forked child, for gunicorn's master.

    The master must not import ONNX Runtime: a worker forked from a process that had imported
    it hangs as it exits, in the library's exit handlers (pthread_cond_destroy), until
    gunicorn's graceful timeout kills it, so every stop took 20 s instead of 1-3. The child
    makes and drops the sessions and answers through a pipe.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe and leave without any exit handler
        status = 1
        try:
            os.close(read_end)
            problem = startup_problem()
            os.write(write_end, (problem or "").encode())
            status = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    # While the child checks, the master imports what the workers will inherit (flask and
    # flask_openapi3 with pydantic are most of a worker's imports): ONNX Runtime must not be
    # among them.
    import flask  # noqa: F401
    import flask_openapi3  # noqa: F401
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401

    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        message = answer.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return message or "the start-up check failed unexpectedly (the error is above)"
    return message or None


def startup_problem() -> str | None:
    """What stops the server from starting with the environment's settings, as a message for
    the operator (the setting to change); None where it can start. gunicorn's master runs it
    in a child (`startup_problem_in_child`) as it reads its config (gunicorn_conf.py), before
    forking workers that would each fail."""
    from emotion_server.accesslog import ACCESS_LOG_MODES
    from emotion_server.config import Settings, bundled_model
    from emotion_server.errors import InvalidParameter, ModelLoadError
    from emotion_server.faces import check_detector_settings
    from emotion_server.model import EmotionModel
    from emotion_server.pipeline import TTA_MODES
    from emotion_server.timeline import check_sampling

    try:
        settings = Settings.from_env()
    except ValueError as exc:  # an unknown EMOTION_MODE, a number that is not one
        return str(exc)
    problem = settings.out_of_range()
    if problem:
        return problem
    if settings.access_log not in ACCESS_LOG_MODES:
        return (
            f"EMOTION_ACCESS_LOG must be one of {', '.join(ACCESS_LOG_MODES)}, "
            f"not {settings.access_log!r}"
        )
    if settings.tta not in ("auto", *TTA_MODES):
        return f"EMOTION_TTA must be one of auto, {', '.join(TTA_MODES)}, not {settings.tta!r}"
    try:  # the default of every video request that does not give its own fps
        check_sampling(settings.video_fps, 0.0, settings.video_max_fps)
    except InvalidParameter:
        return (
            f"EMOTION_VIDEO_FPS ({settings.video_fps:g}) must be above 0 and at most "
            f"EMOTION_VIDEO_MAX_FPS ({settings.video_max_fps:g})"
        )
    bundled = settings.model_path == bundled_model(settings.mode)
    if bundled and settings.mode != "default" and not os.path.exists(settings.model_path):
        return (
            f"EMOTION_MODE={settings.mode}: this install has no such model "
            f"({settings.model_path} is missing)"
        )
    try:
        EmotionModel(settings.model_path)
        check_detector_settings(
            settings.detector,
            settings.detect_large_face,
            settings.detect_max_side,
            settings.detect_threshold,
            settings.detect_precision,
        )
    except ModelLoadError as exc:
        return str(exc)
    return None


def prepare_metrics_dir(environ: MutableMapping[str, str] | None = None) -> Path:
    """$PROMETHEUS_MULTIPROC_DIR as a folder with no values from an earlier run.

    The operator's folder is used where set; otherwise a fresh private one is made in the
    temporary directory (and removed by `on_exit`). Either way its `*.db` files are deleted:
    prometheus_client's documentation asks for the folder to be wiped between runs.
    """
    env = os.environ if environ is None else environ
    path = env.get(METRICS_DIR_VARIABLE)
    if not path:
        path = tempfile.mkdtemp(prefix="emotion-server-metrics-")
        env[METRICS_DIR_VARIABLE] = path
        env[CREATED_BY_VARIABLE] = str(os.getpid())
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    return folder


def pre_fork(server, worker) -> None:
    """gunicorn hook, in the master before it forks a worker: the worker's slot in the shared
    count of analyses in progress (activity.py), one no live worker holds."""
    from emotion_server import activity

    activity.share()  # mapped here, before the fork, so that every worker shares it
    taken = {getattr(w, "activity_slot", -1) for w in server.WORKERS.values()}
    worker.activity_slot = activity.free_slot(taken)


def post_fork(server, worker) -> None:
    """gunicorn hook, in a worker just forked: it counts its analyses in its own slot."""
    from emotion_server import activity

    activity.attach(getattr(worker, "activity_slot", 0))


def child_exit(server, worker) -> None:
    """gunicorn hook, in the master after a worker exited (or was killed): its live gauges
    (requests in progress) stop counting; its counters and histograms stay in the totals; its
    slot of analyses in progress is zeroed (activity.py)."""
    from emotion_server import activity

    activity.share().clear(getattr(worker, "activity_slot", 0))
    path = os.environ.get(METRICS_DIR_VARIABLE)
    if path and os.path.isdir(path):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)


def on_exit(server) -> None:
    """gunicorn hook, in the master as it exits: remove the metrics folder if we made it."""
    path = os.environ.get(METRICS_DIR_VARIABLE)
    if path and os.environ.get(CREATED_BY_VARIABLE) == str(os.getpid()):
        with contextlib.suppress(OSError):
            shutil.rmtree(path)


# How long a stopping sync worker goes on answering connections that were already queued for it.
DRAIN_SECONDS = 5.0


def worker_exit(server, worker) -> None:
    """gunicorn hook, in a sync worker that has stopped (SIGTERM, max_requests): answer the
    connections already waiting in the listening socket's queue before the process exits.

    gunicorn's sync worker leaves its accept loop as soon as it is told to stop; when the last
    worker exits, connections the kernel had accepted but no worker had taken yet are reset, so
    clients that sent a request before the shutdown would lose it. This serves them (until the
    queue is empty, or for DRAIN_SECONDS at most under continuing load). Other worker classes
    (gthread) keep their own queue of accepted connections and finish it themselves.
    """
    from gunicorn.workers.sync import SyncWorker

    if worker.pid != os.getpid():
        # The master calls this hook too, for a worker already gone when it signalled it
        # (ESRCH), and then not child_exit: its slot and live gauges are released here.
        child_exit(server, worker)
        return
    if not isinstance(worker, SyncWorker):
        return
    deadline = time.monotonic() + DRAIN_SECONDS
    for listener in worker.sockets:
        listener.setblocking(False)
        while time.monotonic() < deadline:
            try:
                client, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                break  # the queue is empty
            except OSError:
                break  # the socket was closed
            client.setblocking(True)
            worker.handle(listener, client, address)
