"""Keyed hashes: match keys are stored and compared only as HMACs, and CUIDs are derived
from the first record that introduced a customer, so they are stable and opaque."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

CUID_PATTERN = re.compile(r"^cus_[a-z2-7]{16}$")


class IdentityKeys:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the identity key must be at least 16 bytes")
        self._secret = secret

    def _mac(self, message: str) -> bytes:
        return hmac.new(self._secret, message.encode(), hashlib.sha256).digest()

    def match_hash(self, kind: str, normalized: str) -> str:
        return self._mac(f"{kind}:{normalized}").hex()[:40]

    def cuid(self, system: str, system_id: str) -> str:
        digest = base64.b32encode(self._mac(f"cuid:{system}:{system_id}")).decode()
        return "cus_" + digest[:16].lower()


def is_cuid(value: str) -> bool:
    return CUID_PATTERN.fullmatch(value) is not None
