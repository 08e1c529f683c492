"""gunicorn settings for `emotion-server serve`, from the same environment as the app."""

from emotion_server.config import Settings

_settings = Settings.from_env()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
# With threads > 1 gunicorn uses its gthread worker, and the pipeline micro-batches the
# concurrent requests' faces into shared model calls (EMOTION_WORKER_THREADS).
threads = _settings.worker_threads
timeout = _settings.timeout
graceful_timeout = 20
accesslog = "-"
# The app is built in each worker (model and detector loaded once per worker), not preloaded.
preload_app = False
