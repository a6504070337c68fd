"""The record cache in front of the department systems (aiocache: memory or Redis).

It holds source records *before* any policy: policies run on every request, so what one
role may see is never served to another from here. Each entry carries the time it was
fetched; freshness (TTL) and stale-if-error (max-stale) are decided by the gateway, the
backend only forgets entries after TTL + max-stale.

In Redis, values are encrypted (Fernet; several keys, the first encrypts, all decrypt,
so keys rotate without a flush) and keys are HMACs, because some systems are keyed by
personal data (an email). A Redis that fails degrades to "miss", with a warning.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import orjson
from aiocache import RedisCache, SimpleMemoryCache
from aiocache.base import BaseCache
from aiocache.serializers import BaseSerializer
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from gateway.errors import ConfigError

log = logging.getLogger("c360.cache")

ABSENT: Any = None  # an entry that says "the system has no such record"


@dataclass(frozen=True, slots=True)
class Entry:
    value: Any
    fetched_at: float

    def age(self, now: float) -> float:
        return max(0.0, now - self.fetched_at)


@dataclass(frozen=True, slots=True)
class Freshness:
    ttl_s: float
    max_stale_s: float


class EncryptedJson(BaseSerializer):  # type: ignore[misc]  # aiocache is untyped
    """orjson, then Fernet. A value that does not decrypt (unknown key, tampering) reads
    as a miss, never as data."""

    DEFAULT_ENCODING = None  # bytes in, bytes out

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__()
        self.use_keys(keys)

    def use_keys(self, keys: Sequence[str]) -> None:
        """New writes with the first key; every key still decrypts (rotation without a
        flush: old entries stay readable until they expire)."""
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])

    def dumps(self, value: Any) -> bytes:
        return self._fernet.encrypt(orjson.dumps(value))

    def loads(self, value: bytes | None) -> Any:
        if value is None:
            return None
        try:
            return orjson.loads(self._fernet.decrypt(value))
        except (InvalidToken, orjson.JSONDecodeError):
            log.warning("a cache entry did not decrypt; treated as a miss")
            return None


class InProcess(BaseSerializer):  # type: ignore[misc]
    """Memory backend: keep the Python objects (records are never mutated)."""

    DEFAULT_ENCODING = None

    def dumps(self, value: Any) -> Any:
        return value

    def loads(self, value: Any) -> Any:
        return value


class KeyMac:
    """HMAC-SHA256 under one secret (RFC 2104), with the two hash states of its padded key
    made once: per message two copies and two updates, the same digest as `hmac.new`
    (tests/test_cache.py) without the OpenSSL set-up `hmac.new` does on every call, which
    a page of 100 customers would pay for each of its 300 keys (bench (c), warm cache)."""

    BLOCK = 64  # SHA-256's block size

    def __init__(self, secret: bytes) -> None:
        if len(secret) > self.BLOCK:
            secret = hashlib.sha256(secret).digest()
        padded = secret.ljust(self.BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))

    def hexdigest(self, message: bytes) -> str:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


@dataclass(frozen=True)
class CacheSettings:
    url: str
    freshness: Freshness
    per_source: Mapping[str, Freshness]
    per_entity: Mapping[tuple[str, str], Freshness]
    encryption_keys: tuple[str, ...]
    key_secret: bytes
    webhook_secrets: Mapping[str, str]
    operation_timeout_s: float = 0.25

    @property
    def shared(self) -> bool:
        return self.url.startswith(("redis://", "rediss://"))

    def freshness_for(self, source: str, entity: str) -> Freshness:
        return (
            self.per_entity.get((source, entity)) or self.per_source.get(source) or self.freshness
        )


def _freshness(table: Mapping[str, Any], path: str, default: Freshness) -> Freshness:
    ttl = table.get("ttl_s", default.ttl_s)
    stale = table.get("max_stale_s", default.max_stale_s)
    for key, value in (("ttl_s", ttl), ("max_stale_s", stale)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{path}.{key}: a number of seconds >= 0")
    return Freshness(float(ttl), float(stale))


def parse_cache_settings(
    data: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]]
) -> CacheSettings | None:
    """`[cache]` plus each source's optional `[sources.X.cache]`; None when disabled."""
    allowed = {
        "enabled",
        "url",
        "ttl_s",
        "max_stale_s",
        "encryption_keys",
        "key_secret",
        "operation_timeout_ms",
        "webhook_secrets",
    }
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"cache.{unknown[0]}: unknown key")
    if not data.get("enabled", True):
        return None
    url = data.get("url", "memory://")
    if not isinstance(url, str) or urlparse(url).scheme not in ("memory", "redis", "rediss"):
        raise ConfigError("cache.url: memory:// or redis://host:port/db")
    base = _freshness(data, "cache", Freshness(60.0, 300.0))
    per_source: dict[str, Freshness] = {}
    per_entity: dict[tuple[str, str], Freshness] = {}
    for name, table in sources.items():
        source_cache = table.get("cache", {})
        if not isinstance(source_cache, Mapping):
            raise ConfigError(f"sources.{name}.cache: expected a table")
        unknown = sorted(set(source_cache) - {"ttl_s", "max_stale_s", "entities"})
        if unknown:
            raise ConfigError(f"sources.{name}.cache.{unknown[0]}: unknown key")
        per_source[name] = _freshness(source_cache, f"sources.{name}.cache", base)
        for entity, entity_table in source_cache.get("entities", {}).items():
            path = f"sources.{name}.cache.entities.{entity}"
            per_entity[(name, entity)] = _freshness(entity_table, path, per_source[name])
    keys = data.get("encryption_keys", [])
    if isinstance(keys, str):
        keys = [part.strip() for part in keys.split(",") if part.strip()]
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise ConfigError("cache.encryption_keys: a list of Fernet keys, newest first")
    for index, key in enumerate(keys):
        try:
            Fernet(key.encode())
        except ValueError as error:
            raise ConfigError(f"cache.encryption_keys[{index}]: not a Fernet key") from error
    shared = url.startswith(("redis://", "rediss://"))
    if shared and not keys:
        raise ConfigError("cache.encryption_keys: required with Redis (values are encrypted)")
    secret = data.get("key_secret", "")
    if shared and (not isinstance(secret, str) or len(secret.encode()) < 16):
        raise ConfigError("cache.key_secret: required with Redis, at least 16 bytes")
    webhook_secrets = data.get("webhook_secrets", {})
    if not isinstance(webhook_secrets, Mapping):
        raise ConfigError("cache.webhook_secrets: a table of secret id = secret")
    for secret_id, value in webhook_secrets.items():
        if not isinstance(value, str) or len(value.encode()) < 32:
            raise ConfigError(f"cache.webhook_secrets.{secret_id}: at least 32 bytes")
    timeout = data.get("operation_timeout_ms", 250)
    if not isinstance(timeout, int) or timeout <= 0:
        raise ConfigError("cache.operation_timeout_ms: a positive integer")
    return CacheSettings(
        url=url,
        freshness=base,
        per_source=per_source,
        per_entity=per_entity,
        encryption_keys=tuple(keys),
        key_secret=(secret or "c360-memory-cache").encode(),
        webhook_secrets=dict(webhook_secrets),
        operation_timeout_s=timeout / 1000,
    )


def build_backend(settings: CacheSettings) -> BaseCache:
    if not settings.shared:
        return SimpleMemoryCache(serializer=InProcess(), timeout=None)
    parsed = urlparse(settings.url)
    db = int(parsed.path.lstrip("/") or 0)
    return RedisCache(
        serializer=EncryptedJson(settings.encryption_keys),
        endpoint=parsed.hostname or "127.0.0.1",
        port=parsed.port or 6379,
        db=db,
        password=parsed.password,
        ssl=parsed.scheme == "rediss",
        create_connection_timeout=settings.operation_timeout_s,
        timeout=settings.operation_timeout_s,
        namespace="c360",
    )


class RecordStore:
    """Entries by (source, entity, key) on an aiocache backend, failing soft."""

    WARN_EVERY_S = 30.0

    def __init__(self, settings: CacheSettings, backend: BaseCache | None = None) -> None:
        self.settings = settings
        self.backend = backend or build_backend(settings)
        self._last_warning = 0.0
        self.degraded = False
        self._mac = KeyMac(settings.key_secret)

    def cache_key(self, source: str, entity: str, key: str) -> str:
        digest = self._mac.hexdigest(f"{source}\x1f{entity}\x1f{key}".encode())[:40]
        return f"r:{source}:{entity}:{digest}"

    def _failed(self, operation: str, error: BaseException) -> None:
        self.degraded = True
        now = time.monotonic()
        if now - self._last_warning >= self.WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "cache unavailable, calling the sources directly",
                extra={"operation": operation, "reason": type(error).__name__},
            )

    def rotate(self, settings: CacheSettings) -> None:
        """New keys (and TTLs) from a reloaded config; the backend stays."""
        if isinstance(self.backend.serializer, EncryptedJson):
            self.backend.serializer.use_keys(settings.encryption_keys)
        if settings.key_secret != self.settings.key_secret:
            log.warning("cache.key_secret changed: existing entries will be missed, not read")
            self._mac = KeyMac(settings.key_secret)
        self.settings = settings

    async def get_many(self, source: str, entity: str, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        try:
            values = await self.backend.multi_get([self.cache_key(source, entity, k) for k in keys])
        except Exception as error:
            self._failed("get", error)
            return {}
        self.degraded = False
        found: dict[str, Entry] = {}
        for key, stored in zip(keys, values, strict=True):
            if isinstance(stored, list) and len(stored) == 2:
                found[key] = Entry(stored[0], float(stored[1]))
        return found

    async def put_many(
        self, source: str, entity: str, values: Mapping[str, Any], fetched_at: float
    ) -> None:
        if not values:
            return
        freshness = self.settings.freshness_for(source, entity)
        ttl = freshness.ttl_s + freshness.max_stale_s
        if ttl <= 0:
            return
        pairs = [
            (self.cache_key(source, entity, key), [value, fetched_at])
            for key, value in values.items()
        ]
        try:
            await self.backend.multi_set(pairs, ttl=ttl)
        except Exception as error:
            self._failed("set", error)

    async def evict(self, source: str, entity: str, keys: Sequence[str]) -> int:
        removed = 0
        for key in keys:
            try:
                removed += int(await self.backend.delete(self.cache_key(source, entity, key)))
            except Exception as error:
                self._failed("delete", error)
                raise
        return removed

    async def claim(self, source: str, entity: str, keys: Sequence[str], hold_s: float) -> set[str]:
        """Keys this instance may fetch now; the others are being fetched by another
        instance sharing Redis. In memory every key is ours."""
        if not self.settings.shared or not keys:
            return set(keys)

        async def one(key: str) -> bool:
            try:
                await self.backend.add("lock:" + self.cache_key(source, entity, key), 1, ttl=hold_s)
            except ValueError:
                return False  # someone else holds it
            except Exception as error:
                self._failed("lock", error)
            return True

        claimed = await asyncio.gather(*(one(key) for key in keys))
        return {key for key, mine in zip(keys, claimed, strict=True) if mine}

    async def release(self, source: str, entity: str, keys: Sequence[str]) -> None:
        if not self.settings.shared:
            return
        for key in keys:
            try:
                await self.backend.delete("lock:" + self.cache_key(source, entity, key))
            except Exception as error:
                self._failed("unlock", error)
                return

    async def close(self) -> None:
        try:
            await self.backend.close()
        except Exception as error:
            self._failed("close", error)
