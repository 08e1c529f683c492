"""Optional API keys. With EMOTION_API_KEYS set (comma-separated), every request needs one of
them in `X-API-Key: <key>` or `Authorization: Bearer <key>`, else 401 `unauthorized`.

Open without a key: the probes (/healthz, /readyz), the demo page and its assets, and the API
documentation (/docs, /openapi.json): none of them reveals data or runs the model. Everything
else needs a key: /inference, /inference/batch, /inference/video, /summary and /metrics.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from typing import Any

from flask import Flask, request

from emotion_server.api.state import state_of
from emotion_server.errors import Unauthorized

OPEN_ENDPOINTS = frozenset(
    {
        "health.healthz",
        "health.readyz",
        "web.page",
        "web.static",
        "docs.openapi_json",
        "docs.docs",
        "docs.static",
    }
)

SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "BearerKey": {"type": "http", "scheme": "bearer", "description": "The same API key"},
}
UNAUTHORIZED = {
    "description": "unauthorized: no API key, or not one of EMOTION_API_KEYS",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def presented_key() -> str | None:
    """The key the client sent: X-API-Key, else the token of `Authorization: Bearer`."""
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def key_is_valid(candidate: str, key_digests: tuple[bytes, ...]) -> bool:
    """Compared in constant time with every key, as SHA-256 digests: all of one length, so
    timing tells neither a key's bytes nor its length (compare_digest returns at once on
    inputs of different lengths)."""
    presented = _digest(candidate)
    found = False
    for digest in key_digests:
        found |= hmac.compare_digest(presented, digest)
    return found


def needs_key(endpoint: str | None) -> bool:
    # No endpoint: the request matched no route and gets its 404/405 (nothing to protect).
    return endpoint is not None and endpoint not in OPEN_ENDPOINTS and request.method != "OPTIONS"


def register(app: Flask) -> None:
    keys = state_of(app).settings.api_key_list
    if not keys:
        return
    digests = tuple(_digest(key) for key in keys)

    @app.before_request
    def _require_key():
        if not needs_key(request.endpoint):
            return None
        candidate = presented_key()
        if candidate is None:
            raise Unauthorized(
                "This server needs an API key: send it as 'X-API-Key: <key>' or "
                "'Authorization: Bearer <key>'."
            )
        if not key_is_valid(candidate, digests):
            raise Unauthorized("The API key is not valid.")
        return None


def document_security(app: Flask, document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the key's security schemes and 401s, where keys are set."""
    if not state_of(app).settings.api_key_list:
        return document
    document = copy.deepcopy(document)
    components = document.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    protected = {
        rule.rule for rule in app.url_map.iter_rules() if rule.endpoint not in OPEN_ENDPOINTS
    }
    for path, operations in document.get("paths", {}).items():
        if path not in protected:
            continue
        for operation in operations.values():
            operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            operation["responses"]["401"] = UNAUTHORIZED
    return document
