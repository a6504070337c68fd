"""Cache invalidation by the department systems: an HMAC-signed webhook.

`POST /cache/invalidate` with `{"source", "entity", "keys"}`, signed over
`"<timestamp>.<body>"` with a shared secret named by id (so secrets rotate: configure
the new one, move the systems over, remove the old one):

    X-C360-Timestamp: 1767225600
    X-C360-Signature: <secret id>=<hex HMAC-SHA256>

A timestamp more than five minutes away is refused, so a captured request cannot be
replayed later. Evictions happen in the shared Redis, so every instance sees them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping

import orjson

log = logging.getLogger("c360.cache")

MAX_SKEW_S = 300


class InvalidationRefused(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signed_headers(
    secret_id: str, secret: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    return {
        "x-c360-timestamp": timestamp,
        "x-c360-signature": f"{secret_id}={signature(secret, timestamp, body)}",
        "content-type": "application/json",
    }


def verify(
    secrets: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
) -> str:
    """The id of the secret that signed the request; raises InvalidationRefused."""
    timestamp = headers.get("x-c360-timestamp", "")
    secret_id, _, given = headers.get("x-c360-signature", "").partition("=")
    if not timestamp.isdigit() or not given:
        raise InvalidationRefused("missing signature or timestamp", 401)
    if abs((time.time() if now is None else now) - int(timestamp)) > MAX_SKEW_S:
        raise InvalidationRefused("timestamp too far from now", 401)
    secret = secrets.get(secret_id)
    if secret is None or not hmac.compare_digest(signature(secret, timestamp, body), given):
        raise InvalidationRefused("bad signature", 401)
    return secret_id


def parse_request(body: bytes) -> tuple[str, str, list[str]]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidationRefused("body must be JSON", 400) from error
    if not isinstance(payload, dict):
        raise InvalidationRefused("body must be an object", 400)
    source, entity, keys = payload.get("source"), payload.get("entity"), payload.get("keys")
    if not isinstance(source, str) or not isinstance(entity, str):
        raise InvalidationRefused("source and entity are required strings", 400)
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str | int) for k in keys):
        raise InvalidationRefused("keys must be a non-empty list of ids", 400)
    if len(keys) > 10_000:
        raise InvalidationRefused("at most 10000 keys per request", 400)
    return source, entity, [str(key) for key in keys]
