"""`python app.py`: the original entry point, Flask's own server on $PORT (default 5000).

For production use `emotion-server serve` (gunicorn), as the README and the Dockerfile do.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a plain checkout

from emotion_server.api import create_app
from emotion_server.config import Settings
from emotion_server.ops import startup_problem

if __name__ == "__main__":
    # A bad setting or model file: its message and status 2, as `emotion-server serve` does.
    problem = startup_problem()
    if problem:
        print(f"app.py: {problem}", file=sys.stderr)
        sys.exit(2)
    settings = Settings.from_env()
    create_app().run(host=settings.host, port=settings.port)
