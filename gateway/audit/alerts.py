"""Alerts on access patterns: a subject reading personal fields of many distinct
customers (bulk access), or collecting many denied fields (probing), within a window.

In memory (`AccessPatterns`), each instance counts the requests it serves. With Redis
(`SharedAccessPatterns`: `[audit.alerts] url`; by default the cache's Redis, else the
rate limiter's, when a secret names the keys: gateway/audit/settings.py), the windows
are shared by every instance that shares it, so 300 customers read through three
instances count as 300, and the alert itself is claimed in Redis too: one per subject
and window, whichever instance saw the request that crossed the line. A Redis that fails
or falls behind never fails or slows a request: the instance counts in its own memory
for a while, says so in its log and in `c360_alert_store_fallbacks_total`.

An alert is an access-log record of its own (kind "alert") and a warning log line with
the trace id (gateway/audit/log.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import NoScriptError, RedisError

log = logging.getLogger("c360.audit")

Alert = dict[str, object]
# Called with the alerts a request raised, once they are counted (perhaps later).
AlertsFound = Callable[[list[Alert]], None]


@dataclass(frozen=True, slots=True)
class AlertSettings:
    bulk_customers: int = 200  # distinct customers with personal fields read ...
    denied_fields: int = 100  # ... or denied field decisions ...
    window_s: float = 600.0  # ... within this many seconds
    url: str = ""  # redis://…: windows shared by the instances that share it ("" memory)
    # Every key is under it (one ACL pattern, `~c360-alerts:*`); not under "c360:", the
    # cache's namespace. Stable: deployments on one Redis differ by key_secret, or by this.
    key_prefix: str = "c360-alerts:"
    # Names a subject's keys by keyed hash (a subject may be an email address, and an
    # unkeyed hash of one is reversed by trying a list of them); required with `url`.
    key_secret: bytes = field(default=b"", repr=False)
    # Why the windows stay in this instance's memory though instances share a Redis (the
    # rate limiter's alone, without a secret): said at start, since alerts across
    # instances are then missed.
    unshared: str | None = None


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

    fallbacks = 0  # never: there is no store to fall back from

    def __init__(self, settings: AlertSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self._subjects: dict[str, _Subject] = {}

    def submit(
        self, subject: str, read_customers: set[str], denied: int, then: AlertsFound
    ) -> None:
        """Count one request now; `then` gets the alerts it raises."""
        then(self.observe(subject, read_customers, denied, self.clock()))

    async def settled(self) -> None:
        """Every request submitted is counted (in memory: at once)."""

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
# request (among every instance's), then the customers read.
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


@dataclass(slots=True)
class _Observation:
    subject: str
    read_customers: set[str]
    denied: int
    then: AlertsFound


class SharedAccessPatterns:
    """The windows in Redis, shared by every instance that uses it. Keys are named by a
    keyed hash of the subject (`key_secret`: a subject may be an email address, which has
    no business in Redis in clear, nor in a hash anyone can recompute), all of one
    subject's under one hash tag (one Redis Cluster slot, as the script needs).

    Requests are counted off their path by one task that drains a bounded queue and sends
    what it took as one pipeline: at most one connection in use however many requests
    arrive (this Redis is often the cache's and the rate limiter's too), and a Redis that
    falls behind fills the queue rather than opening connections; a request that finds
    the queue full is counted in memory."""

    RETRY_AFTER_FAILURE_S = 5.0  # how long to count in memory after Redis failed
    TIMEOUT_S = 0.25  # a slow Redis delays an alert, never a request (off the request path)
    QUEUE_SIZE = 1000  # requests waiting for Redis; beyond: counted in memory
    BATCH = 100  # requests per pipeline
    MAX_CONNECTIONS = 8  # bounds the pool (one consumer uses one; the rest is headroom)

    def __init__(
        self,
        settings: AlertSettings,
        client: aioredis.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.key_secret:
            raise ValueError("shared alert windows need a key secret to name their keys")
        self.settings = settings
        self.client = client or aioredis.Redis.from_url(
            settings.url,
            socket_timeout=self.TIMEOUT_S,
            socket_connect_timeout=self.TIMEOUT_S,
            max_connections=self.MAX_CONNECTIONS,
        )
        self.clock = clock
        self.local = AccessPatterns(settings, clock)
        self.fallbacks = 0  # requests counted in memory because Redis failed or lagged
        secret = settings.key_secret
        # blake2b takes a key of at most 64 bytes: a longer one is hashed down first.
        self._mac_key = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()
        self._sha = hashlib.sha1(WINDOWS.encode()).hexdigest()  # the script's EVALSHA name
        self._window_ms = max(1, math.ceil(settings.window_s * 1000))
        self._redis_down_until = float("-inf")
        self._queue_full_warned = float("-inf")
        # Tokens unique among instances without reading os.urandom per request.
        self._instance = secrets.token_hex(6)
        self._tokens = itertools.count()
        self._queue: asyncio.Queue[_Observation] = asyncio.Queue(self.QUEUE_SIZE)
        self._in_flight: list[_Observation] = []
        self._consumer: asyncio.Task[None] | None = None
        self._closed = False

    def keys(self, subject: str) -> list[str]:
        digest = hashlib.blake2b(
            subject.encode(), key=self._mac_key, digest_size=16, person=b"c360-alerts"
        ).hexdigest()
        base = f"{self.settings.key_prefix}{{{digest}}}"
        return [f"{base}:{part}" for part in ("read", "denials", "denied", "bulk", "burst")]

    def submit(
        self, subject: str, read_customers: set[str], denied: int, then: AlertsFound
    ) -> None:
        """Count one request in the shared windows, off its path; `then` gets the alerts it
        raises (each at most once per window, across every instance sharing the store)."""
        if not read_customers and not denied:
            return
        observation = _Observation(subject, read_customers, denied, then)
        if self._closed or self.clock() < self._redis_down_until:
            self._count_locally([observation])
            return
        try:
            self._queue.put_nowait(observation)
        except asyncio.QueueFull:
            now = self.clock()
            if now - self._queue_full_warned >= self.RETRY_AFTER_FAILURE_S:
                self._queue_full_warned = now
                log.warning(
                    "alert window store falling behind; counting requests in memory meanwhile "
                    "(alerts across instances may be missed)",
                    extra={"queued": self._queue.qsize()},
                )
            self._count_locally([observation])
            return
        if self._consumer is None or self._consumer.done():  # started, or started again
            self._consumer = asyncio.get_running_loop().create_task(
                self._consume(), name="c360-alert-windows"
            )

    async def observe(self, subject: str, read_customers: set[str], denied: int) -> list[Alert]:
        """`submit`, waiting for its alerts."""
        if not read_customers and not denied:
            return []
        found: asyncio.Future[list[Alert]] = asyncio.get_running_loop().create_future()
        self.submit(subject, read_customers, denied, found.set_result)
        return await found

    async def settled(self) -> None:
        """Every request submitted so far is counted and its alerts handed on."""
        await self._queue.join()

    async def _consume(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self.BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            self._in_flight = batch  # cancelled while Redis has it: close() counts it
            try:
                if self.clock() < self._redis_down_until:
                    self._count_locally(batch)
                else:
                    await self._count_shared(batch)
            except Exception:  # never let the consumer die: count what it held in memory
                log.exception("alert windows: counting in memory after an unexpected error")
                self._count_locally(batch)
            finally:
                for _ in batch:
                    queue.task_done()
            self._in_flight = []

    async def _count_shared(self, batch: list[_Observation]) -> None:
        try:
            results = await self._pipeline(batch)
            missing = [i for i, found in enumerate(results) if isinstance(found, NoScriptError)]
            if missing:  # a Redis restarted or flushed since: load the script, send those again
                await self.client.script_load(WINDOWS)
                again = await self._pipeline([batch[i] for i in missing])
                for i, found in zip(missing, again, strict=True):
                    results[i] = found
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
            self._count_locally(batch)
            return
        settings = self.settings
        for observation, found in zip(batch, results, strict=True):
            if isinstance(found, Exception):  # this request's script failed, not the others'
                self._failed(found)
                self._count_locally([observation])
                continue
            distinct, total, bulk, burst = found
            alerts: list[Alert] = []
            if int(bulk):
                alerts.append(bulk_alert(int(distinct), settings))
            if int(burst):
                alerts.append(denied_alert(int(total), settings))
            _hand_on(observation, alerts)

    def _failed(self, error: Exception) -> None:
        if self.clock() >= self._redis_down_until:  # one warning per spell
            log.warning(
                "alert window store unavailable; counting this instance's requests in memory "
                "for now (alerts across instances are missed meanwhile)",
                extra={"error": f"{type(error).__name__}: {error}"},
            )
        self._redis_down_until = self.clock() + self.RETRY_AFTER_FAILURE_S

    async def _pipeline(self, batch: list[_Observation]) -> list[Any]:
        settings = self.settings
        pipe = self.client.pipeline(transaction=False)
        for observation in batch:
            pipe.evalsha(
                self._sha,
                5,
                *self.keys(observation.subject),
                self._window_ms,
                settings.bulk_customers,
                settings.denied_fields,
                observation.denied,
                f"{self._instance}-{next(self._tokens)}",
                *observation.read_customers,
            )
        return list(await pipe.execute(raise_on_error=False))

    def _count_locally(self, batch: list[_Observation]) -> None:
        now = self.clock()
        for observation in batch:
            self.fallbacks += 1
            found = self.local.observe(
                observation.subject, observation.read_customers, observation.denied, now
            )
            _hand_on(observation, found)

    async def close(self) -> None:
        """Stop counting in Redis: what was submitted and not counted there yet is counted
        in memory (its alerts handed on now), then the client closes; later requests are
        counted in memory."""
        self._closed = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        left = self._in_flight
        self._in_flight = []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
            self._queue.task_done()
        self._count_locally(left)
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
        await self.local.close()


def _hand_on(observation: _Observation, alerts: list[Alert]) -> None:
    try:
        observation.then(alerts)
    except Exception:
        log.exception("access pattern alerts not recorded")


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
        family.add_metric([], float(self.tracker.fallbacks))
        yield family
