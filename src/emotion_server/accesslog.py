"""gunicorn's access log without the health probes' successful answers.

A Kubernetes kubelet (or Docker's HEALTHCHECK) asks `/healthz` and `/readyz` every few
seconds on every replica: logged, they are most of the access log and hide the requests
that matter. With `EMOTION_ACCESS_LOG=requests` (the default) a probe answered 2xx is not
logged; a failing probe is, as is every other request. `all` logs everything, `off` nothing.
"""

from __future__ import annotations

from gunicorn import glogging

ACCESS_LOG_MODES = ("requests", "all", "off")
PROBES = frozenset({"/healthz", "/readyz"})


class AccessLogger(glogging.Logger):
    """gunicorn's logger, which leaves out the probes that were answered 2xx."""

    def access(self, resp, req, environ, request_time):
        status = getattr(resp, "status_code", None)
        if environ.get("PATH_INFO") in PROBES and status is not None and 200 <= status < 300:
            return
        super().access(resp, req, environ, request_time)
