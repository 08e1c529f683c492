"""What the app's views share, held in one typed object: `app_state()` instead of string keys.

create_app() puts one `AppState` on the app; views, hooks and the docs read it through
`app_state()` (or `state_of(app)` where there is no request), so a typo is an AttributeError
at import time of the attribute, not a KeyError at the first request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

from emotion_server.config import Settings

if TYPE_CHECKING:
    from emotion_server.api.health import Readiness
    from emotion_server.pipeline import Pipeline

_KEY = "emotion_server"


@dataclass(frozen=True)
class AppState:
    settings: Settings
    pipeline: Pipeline
    readiness: Readiness


def attach(app: Flask, state: AppState) -> None:
    app.extensions[_KEY] = state


def state_of(app: Flask) -> AppState:
    return app.extensions[_KEY]


def app_state() -> AppState:
    """The state of the app handling the current request."""
    return state_of(current_app)
