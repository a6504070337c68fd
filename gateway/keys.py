"""Every secret the gateway holds, by id and age, never the secret itself.

Each secret has an id and several can be active at once, so any of them rotates without
a restart: add the new one, `kill -HUP` (or let the next deploy pick it up), retire the
old one later. Ages come from `[keys.created]` ("<key id>" = date), since a key cannot
tell its own age; `max_age_days` makes `c360 keys status` warn.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.encryption import LogKey, LogKeys
from gateway.errors import ConfigError


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    max_age_days: int = 90
    created: Mapping[str, dt.date] = field(default_factory=dict)

    @classmethod
    def parse(cls, table: Mapping[str, Any]) -> KeyPolicy:
        unknown = sorted(set(table) - {"max_age_days", "created"})
        if unknown:
            raise ConfigError(f"keys.{unknown[0]}: unknown key")
        max_age = table.get("max_age_days", 90)
        if not isinstance(max_age, int) or max_age < 1:
            raise ConfigError("keys.max_age_days: a positive integer")
        created: dict[str, dt.date] = {}
        for key_id, value in table.get("created", {}).items():
            if isinstance(value, dt.datetime):
                value = value.date()
            elif isinstance(value, str):
                try:
                    value = dt.date.fromisoformat(value)
                except ValueError as error:
                    raise ConfigError(f"keys.created.{key_id}: a date, e.g. 2026-11-01") from error
            if not isinstance(value, dt.date):
                raise ConfigError(f"keys.created.{key_id}: a date, e.g. 2026-11-01")
            created[key_id] = value
        return cls(max_age, created)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    use: str
    created: dt.date | None
    age_days: int | None
    too_old: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "use": self.use,
            "created": self.created.isoformat() if self.created else None,
            "age_days": self.age_days,
            "too_old": self.too_old,
        }


def fingerprint(secret: str) -> str:
    """A short public name for a key that has no id of its own (a Fernet key)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def inventory(config: Any, policy: KeyPolicy, today: dt.date) -> list[KeyInfo]:
    """The keys of a loaded Config, in a stable order."""
    found: list[tuple[str, str]] = []
    auth = config.auth
    for kid in auth.hs256:
        use = "token verification (HS256)" + (", signs dev tokens" if kid == auth.dev_key else "")
        found.append((f"auth.hs256.{kid}", use))
    for kid in auth.public_keys:
        found.append((f"auth.public_keys.{kid}", "token verification (public key)"))
    if auth.jwks_url:
        found.append(("auth.jwks", f"token verification (JWKS at {auth.jwks_url})"))
    cache = config.cache
    if cache is not None:
        for index, key in enumerate(cache.encryption_keys):
            use = "cache encryption (encrypts and decrypts)" if index == 0 else "cache decryption"
            found.append((f"cache.encryption_keys.{fingerprint(key)}", use))
        for secret_id in cache.webhook_secrets:
            found.append((f"cache.webhook_secrets.{secret_id}", "invalidation webhook signatures"))
    # The alert windows in Redis name their keys with the cache's key secret, or their own.
    alerts = config.audit.alerts
    alert_secret = alerts.key_secret if alerts.url else b""
    if cache is not None and cache.shared:
        use = "cache key names (HMAC)"
        if alert_secret == cache.key_secret:
            use += "; alert window key names (keyed hash)"
        found.append(("cache.key_secret", use))
    if alert_secret and (cache is None or not cache.shared or alert_secret != cache.key_secret):
        found.append(("audit.alerts.key_secret", "alert window key names (keyed hash)"))
    found.append(
        (f"policies.hash_key.{config.policies.hash_key_id}", "hash mask pseudonyms (h1:<id>:…)")
    )
    found.append(("identity.key", "identity match hashes and CUIDs (rotate by re-linking)"))
    checkpoints = getattr(config.audit, "checkpoints", None)
    for index, (key_id, _) in enumerate(checkpoints.keys if checkpoints else ()):
        use = "access-log checkpoints (" + ("signs and verifies)" if index == 0 else "verifies)")
        found.append((f"audit.checkpoint_key.{key_id}", use))
    # Keys c360 makes itself know their age: their files say when they were made.
    made: dict[str, dt.date] = {}
    encryption = getattr(config.audit, "encryption", None)
    if encryption is not None:
        ring = LogKeys(encryption.key_dir).listing()
        for index, key in enumerate(ring):
            newest = index == len(ring) - 1
            use = "access-log encryption at rest (" + (
                "encrypts new lines, decrypts)"
                if newest and encryption.encrypt
                else "decrypts older lines)"
            )
            key_id = f"audit.encryption_key.{key.id}"
            found.append((key_id, use))
            made[key_id] = key.created.date()
    rows = []
    for key_id, use in found:
        created = policy.created.get(key_id, made.get(key_id))
        age = (today - created).days if created else None
        rows.append(
            KeyInfo(key_id, use, created, age, age is not None and age > policy.max_age_days)
        )
    return rows


ROTATABLE = ("audit.encryption_key",)


def rotate(config: Any, which: str) -> LogKey:
    """`c360 keys rotate audit.encryption_key`: the next access-log key. Writers seal new
    lines with it within a second; the older keys stay to read what they sealed."""
    if which != "audit.encryption_key":
        raise ConfigError(f"keys rotate: {which} is rotated in the config (README, Keys)")
    encryption = getattr(config.audit, "encryption", None)
    if encryption is None:
        raise ConfigError("audit.encrypt: the access log is not encrypted (no key to rotate)")
    return LogKeys(encryption.key_dir).rotate()
