"""gunicorn settings for `emotion-server serve`, from the same environment as the app."""

from emotion_server.config import Settings

_settings = Settings.from_env()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
# Each request is CPU-bound work of a few milliseconds: one thread per worker process.
threads = 1
timeout = _settings.timeout
graceful_timeout = 20
accesslog = "-"
# The app is built in each worker (model and detector loaded once per worker), not preloaded.
preload_app = False
