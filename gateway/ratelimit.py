"""Rate limiting per principal: a token bucket per subject, in memory or in Redis.

A bucket holds up to `burst` tokens and refills at `rate_per_s`; a request takes one.
`take(subject)` answers None (go ahead) or the seconds until a token is there, which the
view sends as `Retry-After` with a 429.

With Redis, the bucket is read and updated by one Lua script, atomically, so every
instance draws from the same bucket, timed by Redis's own clock (instances' clocks may
differ). A Redis that fails never refuses a request: the instance falls back to its own
memory buckets, says so in its log, and tries Redis again after a pause.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import ConfigError

log = logging.getLogger("c360.ratelimit")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """`[rate_limit]`: `url` empty for memory, `redis://…` (or `rediss://…`) to share."""

    rate_per_s: float = 10.0
    burst: int = 20
    url: str = ""
    key_prefix: str = "c360:rl:"

    @classmethod
    def parse(cls, table: Mapping[str, Any]) -> RateLimitSettings | None:
        """None when the table is absent or says `enabled = false`."""
        if not table or table.get("enabled", True) is False:
            return None
        known = {"enabled", "rate_per_s", "burst", "url", "key_prefix"}
        for key in table:
            if key not in known:
                raise ConfigError(f"rate_limit.{key}: unknown key")
        defaults = cls()
        if not isinstance(table.get("enabled", True), bool):
            raise ConfigError("rate_limit.enabled: expected true or false")
        rate = table.get("rate_per_s", defaults.rate_per_s)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            raise ConfigError("rate_limit.rate_per_s: expected a number > 0")
        burst = table.get("burst", defaults.burst)
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError("rate_limit.burst: expected an integer >= 1")
        url = table.get("url", "")
        if not isinstance(url, str) or (url and not url.startswith(("redis://", "rediss://"))):
            raise ConfigError("rate_limit.url: expected empty (memory) or a redis:// URL")
        prefix = table.get("key_prefix", defaults.key_prefix)
        if not isinstance(prefix, str):
            raise ConfigError("rate_limit.key_prefix: expected a string")
        return cls(float(rate), burst, url, prefix)

    @property
    def refill_s(self) -> float:
        """How long an empty bucket takes to fill: after that, an idle bucket is the
        same as no bucket."""
        return self.burst / self.rate_per_s


class RateLimiter(Protocol):
    async def take(self, subject: str) -> float | None:
        """None when the subject may go ahead, else the seconds until it may."""
        ...

    async def close(self) -> None: ...


def retry_after(seconds: float) -> str:
    """The `Retry-After` header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


class MemoryRateLimiter:
    """Buckets in this process. Memory stays bounded: a bucket idle long enough to be full
    again is forgotten (it would behave exactly as a new one), and beyond `max_buckets`
    the least recently used go first."""

    def __init__(
        self, settings: RateLimitSettings, clock: Clock = time.monotonic, max_buckets: int = 100_000
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.max_buckets = max_buckets
        # subject -> (tokens, when they were counted); least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take_now(self, subject: str) -> float | None:
        now = self.clock()
        rate, burst = self.settings.rate_per_s, float(self.settings.burst)
        tokens, counted = self._buckets.pop(subject, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - counted) * rate)
        wait: float | None = None
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / rate
        self._buckets[subject] = (tokens, now)  # most recently used: the end
        self._evict(now)
        return wait

    async def take(self, subject: str) -> float | None:
        return self.take_now(subject)

    def _evict(self, now: float) -> None:
        # The oldest entries come first, so the sweep stops at the first one still in use:
        # amortised O(1) per request.
        refill = self.settings.refill_s
        while self._buckets:
            subject, (_, counted) = next(iter(self._buckets.items()))
            if now - counted < refill and len(self._buckets) <= self.max_buckets:
                break
            del self._buckets[subject]

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] the bucket; ARGV rate per second, burst, key TTL in ms.
# Returns the wait in seconds as a string ("0" = allowed): Redis truncates Lua numbers
# to integers on the way out.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return tostring(wait)
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every instance. Keys are hashes of the subject: a
    subject may be an email address, which has no business in Redis in clear."""

    RETRY_AFTER_FAILURE_S = 5.0  # how long to stay on memory buckets after Redis failed
    TIMEOUT_S = 0.25  # a slow Redis must not make every request slow

    def __init__(
        self,
        settings: RateLimitSettings,
        client: aioredis.Redis | None = None,
        fallback: MemoryRateLimiter | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client or aioredis.Redis.from_url(
            settings.url, socket_timeout=self.TIMEOUT_S, socket_connect_timeout=self.TIMEOUT_S
        )
        self.fallback = fallback or MemoryRateLimiter(settings, clock)
        self.clock = clock
        self._script = self.client.register_script(TOKEN_BUCKET)
        # Empty buckets refill in refill_s; a second more of TTL keeps clock jitter harmless.
        self._ttl_ms = math.ceil(settings.refill_s * 1000) + 1000
        self._redis_down_until = 0.0

    def key(self, subject: str) -> str:
        digest = hashlib.blake2b(subject.encode(), digest_size=16).hexdigest()
        return self.settings.key_prefix + digest

    async def take(self, subject: str) -> float | None:
        if self.clock() < self._redis_down_until:
            return self.fallback.take_now(subject)
        try:
            answer = await self._script(
                keys=[self.key(subject)],
                args=[self.settings.rate_per_s, self.settings.burst, self._ttl_ms],
            )
        except (RedisError, OSError, TimeoutError) as error:
            self._redis_down_until = self.clock() + self.RETRY_AFTER_FAILURE_S
            log.warning(
                "rate limit store unavailable; limiting in memory for now",
                extra={"error": f"{type(error).__name__}: {error}"},
            )
            return self.fallback.take_now(subject)
        wait = float(answer.decode() if isinstance(answer, bytes) else answer)
        return wait if wait > 0 else None

    async def close(self) -> None:
        await self.client.aclose()
        await self.fallback.close()


def build_rate_limiter(settings: RateLimitSettings) -> RateLimiter:
    if settings.url:
        return RedisRateLimiter(settings)
    return MemoryRateLimiter(settings)
