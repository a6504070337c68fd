"""Bearer tokens for the benchmark's principals, signed with the generated config's dev key."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt

# Used only when the config has no [auth] table (a gateway without auth ignores the header);
# sending a token either way keeps the request bytes comparable across versions.
UNSIGNED_FALLBACK = ("dev", "no-auth-configured-bench-placeholder")


def mint(config: Mapping[str, Any], *, role: str, purpose: str, ttl_s: int = 3600) -> str:
    """An HS256 JWT for `role` acting for `purpose`, valid for `ttl_s` seconds."""
    auth = config.get("auth") or {}
    keys = auth.get("hs256") or {}
    kid, secret = next(iter(keys.items()), UNSIGNED_FALLBACK)
    if "dev_key" in auth and auth["dev_key"] in keys:
        kid, secret = auth["dev_key"], keys[auth["dev_key"]]
    now = int(time.time())
    claims = {
        "sub": f"bench-{role}",
        "roles": [role],
        "purpose": [purpose],
        "iss": auth.get("issuer", "c360-demo"),
        "aud": auth.get("audience", "c360"),
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})
