"""Alerts on access patterns: a subject reading personal fields of many distinct
customers (bulk access), or collecting many denied fields (probing), within a window.

In memory (`AccessPatterns`), each instance watches the requests it serves. With Redis
(`SharedAccessPatterns`: `[audit.alerts] url`, by default the rate limiter's or the
cache's Redis), the windows are shared by every instance that shares it, so 300
customers read through three instances count as 300, and the alert itself is claimed in
Redis too: one per subject and window, whichever instance saw the request that crossed
the line. A Redis that fails never fails a request: the instance counts in its own memory
for a while, says so in its log and in `c360_alert_store_fallbacks_total`.

An alert is an access-log record of its own (kind "alert") and a warning log line with
the trace id (gateway/audit/log.py)."""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

log = logging.getLogger("c360.audit")

Alert = dict[str, object]


@dataclass(frozen=True, slots=True)
class AlertSettings:
    bulk_customers: int = 200  # distinct customers with personal fields read ...
    denied_fields: int = 100  # ... or denied field decisions ...
    window_s: float = 600.0  # ... within this many seconds
    url: str = ""  # redis://…: windows shared by the instances that share it ("" memory)
    key_prefix: str = "c360-alerts:"  # not under "c360:", the cache's namespace


def bulk_alert(distinct: int, settings: AlertSettings) -> Alert:
    return {
        "alert": "bulk_access",
        "distinct_customers": distinct,
        "threshold": settings.bulk_customers,
        "window_s": settings.window_s,
    }


def denied_alert(denied: int, settings: AlertSettings) -> Alert:
    return {
        "alert": "denied_burst",
        "denied_fields": denied,
        "threshold": settings.denied_fields,
        "window_s": settings.window_s,
    }


@dataclass
class _Subject:
    # customer -> when last read, oldest first: what the window needs is the distinct
    # customers, so it holds one entry per customer, not one per read (a page of 100 at
    # 200 requests/s made millions of entries in a 10-minute window).
    last_read: dict[str, float] = field(default_factory=dict)
    denials: deque[tuple[float, int]] = field(default_factory=deque)
    denied_total: int = 0
    last_bulk_alert: float = float("-inf")
    last_denied_alert: float = float("-inf")


class AccessPatterns:
    """The windows of one instance, in its memory."""

    MAX_SUBJECTS = 100_000  # bound the memory a flood of distinct subjects can take

    def __init__(self, settings: AlertSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self._subjects: dict[str, _Subject] = {}

    def observe(
        self, subject: str, read_customers: set[str], denied: int, now: float
    ) -> list[Alert]:
        """Add one request; return the alerts it raises (each at most once per window)."""
        if not read_customers and not denied:
            return []
        state = self._subjects.get(subject)
        if state is None:
            if len(self._subjects) >= self.MAX_SUBJECTS:
                self._subjects.pop(next(iter(self._subjects)))
            state = self._subjects[subject] = _Subject()
        window = self.settings.window_s
        last_read = state.last_read
        for customer in read_customers:
            last_read.pop(customer, None)  # re-inserted: the newest read goes last
            last_read[customer] = now
        while last_read:
            oldest = next(iter(last_read))
            if last_read[oldest] >= now - window:
                break
            del last_read[oldest]
        if denied:
            state.denials.append((now, denied))
            state.denied_total += denied
        while state.denials and state.denials[0][0] < now - window:
            state.denied_total -= state.denials.popleft()[1]
        alerts: list[Alert] = []
        distinct = len(last_read)
        if distinct > self.settings.bulk_customers and now - state.last_bulk_alert >= window:
            state.last_bulk_alert = now
            alerts.append(bulk_alert(distinct, self.settings))
        if (
            state.denied_total > self.settings.denied_fields
            and now - state.last_denied_alert >= window
        ):
            state.last_denied_alert = now
            alerts.append(denied_alert(state.denied_total, self.settings))
        return alerts

    async def close(self) -> None:
        self._subjects.clear()


# One subject's windows, atomically, timed by Redis's clock (instances' clocks differ).
# KEYS: 1 customers read (sorted set: customer -> when last read, ms), 2 denials (sorted
# set: "<token>:<count>" -> when), 3 the denials' running total, 4 and 5 the bulk and
# denied alerts already raised in this window (SET NX PX window: one alert per window,
# whichever instance crosses the line first).
# ARGV: window ms, bulk threshold, denied threshold, denied count, a token unique to this
# request, then the customers read.
# Returns {distinct customers, denied total, bulk alert raised (0/1), denied alert (0/1)}.
WINDOWS = """
local window = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local oldest = '(' .. (now - window)
local ttl = window + 1000
if #ARGV > 5 then
  for first = 6, #ARGV, 500 do
    local members = {}
    for i = first, math.min(first + 499, #ARGV) do
      members[#members + 1] = now
      members[#members + 1] = ARGV[i]
    end
    redis.call('ZADD', KEYS[1], unpack(members))
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', oldest)
local distinct = redis.call('ZCARD', KEYS[1])
local denied = tonumber(ARGV[4])
if denied > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[5] .. ':' .. denied)
  redis.call('INCRBY', KEYS[3], denied)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', oldest)
if #expired > 0 then
  local gone = 0
  for _, member in ipairs(expired) do
    gone = gone + tonumber(string.match(member, ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', oldest)
  redis.call('DECRBY', KEYS[3], gone)
end
local total = 0
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[3])
else
  total = math.max(0, tonumber(redis.call('GET', KEYS[3]) or '0'))
end
local bulk = 0
if distinct > tonumber(ARGV[2]) and redis.call('SET', KEYS[4], now, 'NX', 'PX', window) then
  bulk = 1
end
local burst = 0
if total > tonumber(ARGV[3]) and redis.call('SET', KEYS[5], now, 'NX', 'PX', window) then
  burst = 1
end
return {distinct, total, bulk, burst}
"""


class SharedAccessPatterns:
    """The windows in Redis, shared by every instance that uses it. Keys are named by a
    hash of the subject (a subject may be an email address, which has no business in
    Redis in clear), all of one subject's under one hash tag (one Redis Cluster slot, as
    the script needs)."""

    RETRY_AFTER_FAILURE_S = 5.0  # how long to count in memory after Redis failed
    TIMEOUT_S = 0.25  # a slow Redis delays an alert, never a request (off the request path)

    def __init__(
        self,
        settings: AlertSettings,
        client: aioredis.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client or aioredis.Redis.from_url(
            settings.url, socket_timeout=self.TIMEOUT_S, socket_connect_timeout=self.TIMEOUT_S
        )
        self.clock = clock
        self.local = AccessPatterns(settings, clock)
        self.fallbacks = 0  # requests counted in memory because Redis failed
        self._script = self.client.register_script(WINDOWS)
        self._window_ms = max(1, math.ceil(settings.window_s * 1000))
        self._redis_down_until = float("-inf")

    def keys(self, subject: str) -> list[str]:
        digest = hashlib.blake2b(subject.encode(), digest_size=16).hexdigest()
        base = f"{self.settings.key_prefix}{{{digest}}}"
        return [f"{base}:{part}" for part in ("read", "denials", "denied", "bulk", "burst")]

    async def observe(self, subject: str, read_customers: set[str], denied: int) -> list[Alert]:
        """Add one request; return the alerts it raises (each at most once per window,
        across every instance sharing the store)."""
        if not read_customers and not denied:
            return []
        if self.clock() < self._redis_down_until:
            return self._locally(subject, read_customers, denied)
        settings = self.settings
        try:
            distinct, total, bulk, burst = await self._script(
                keys=self.keys(subject),
                args=[
                    self._window_ms,
                    settings.bulk_customers,
                    settings.denied_fields,
                    denied,
                    secrets.token_hex(8),
                    *sorted(read_customers),
                ],
            )
        except (RedisError, OSError, TimeoutError) as error:
            self._redis_down_until = self.clock() + self.RETRY_AFTER_FAILURE_S
            log.warning(
                "alert window store unavailable; counting this instance's requests in memory "
                "for now (alerts across instances are missed meanwhile)",
                extra={"error": f"{type(error).__name__}: {error}"},
            )
            return self._locally(subject, read_customers, denied)
        alerts: list[Alert] = []
        if int(bulk):
            alerts.append(bulk_alert(int(distinct), settings))
        if int(burst):
            alerts.append(denied_alert(int(total), settings))
        return alerts

    def _locally(self, subject: str, read_customers: set[str], denied: int) -> list[Alert]:
        self.fallbacks += 1
        return self.local.observe(subject, read_customers, denied, self.clock())

    async def close(self) -> None:
        await self.client.aclose()
        await self.local.close()


AlertTracker = AccessPatterns | SharedAccessPatterns


def build_alert_tracker(settings: AlertSettings) -> AlertTracker:
    if settings.url:
        return SharedAccessPatterns(settings)
    return AccessPatterns(settings)


class AlertStoreMetrics(Collector):
    """`c360_alert_store_fallbacks_total`: requests whose alert windows were counted in
    this instance's memory because the shared store (Redis) failed; read when scraped."""

    def __init__(self, tracker: AlertTracker) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "c360_alert_store_fallbacks",
            "Requests whose alert windows were counted in memory because Redis failed",
        )
        family.add_metric([], float(getattr(self.tracker, "fallbacks", 0)))
        yield family
