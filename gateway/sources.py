"""The gateway's way to the department systems: the cache first, then one batched call
for the missing keys only. Every call is counted, timed and, on failure, logged with its
reason (clients only ever learn the source's name).

Concurrent misses for the same key within an instance share one call (single flight);
with Redis, an instance first claims the keys it will fetch, and waits briefly for keys
another instance is already fetching. When a system fails, entries past their TTL but
within max-stale are served, and the request is told their age.

Writes (`SourceHub.write`) go straight to the system that owns the data: counted, timed
and traced like a fetch, through the source's circuit breaker, but asked once (never
retried: a write that timed out may have happened) and never read from or put in the
cache (what a write changed is the caller's to invalidate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, StatusCode

from connectors.base import (
    Connector,
    Fetched,
    Health,
    NoSuchWrite,
    SourceUnavailable,
    Writable,
    WriteConflict,
    WriteRefused,
    WriteResult,
    WriteSpec,
    write_spec,
)
from gateway.cache import Entry, RecordStore
from gateway.metrics import Metrics
from gateway.resilience import (
    STATE_VALUES,
    CircuitBreaker,
    ResilienceSettings,
    State,
    call_with_resilience,
)
from gateway.telemetry import GatewayMeters, tracing_on

log = logging.getLogger("c360.sources")
tracer = trace.get_tracer("c360.sources")
# Without a tracer provider a span is still a context to enter and leave, for nothing.
_NO_SPAN = contextlib.nullcontext(INVALID_SPAN)


class FetchObserver(Protocol):
    """What one request learns of its source lookups (for the access log and the
    `stale` extension)."""

    def fetched(self, source: str, hits: int, calls: int, errors: int) -> None: ...

    def stale(self, source: str, entity: str, age_s: float) -> None: ...


@dataclass
class _FetchStats:
    hits: int = 0
    calls: int = 0
    errors: int = 0
    span: Span = INVALID_SPAN  # the lookup's CLIENT span, when spans are recorded


# The stats of the lookup running in this task (a single-flight leader's calls count
# for the request that led; the others count as cache hits).
_current: ContextVar[_FetchStats | None] = ContextVar("c360_fetch_stats", default=None)
Slot = tuple[str, str, str]
# What one key's lookup came to: its record(s), None (absent) or the source's error, and
# the age of a stale record served in place of a fresh one.
Outcome = tuple[Any, float | None]


def client_span(name: str, attributes: Mapping[str, Any]) -> AbstractContextManager[Span]:
    """The CLIENT span of one call to a department system, when spans are recorded."""
    if not tracing_on():
        return _NO_SPAN
    return tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes)


def _retrieved(future: asyncio.Future[Any]) -> None:
    # A shared fetch may fail with nobody else waiting; mark its exception as seen.
    if not future.cancelled():
        future.exception()


class SourceHub:
    PEER_WAIT_S = 0.5  # how long to wait for another instance's fetch of a claimed key
    PEER_POLL_S = 0.02

    def __init__(
        self,
        connectors: Mapping[str, Connector],
        metrics: Metrics,
        store: RecordStore | None = None,
        clock: Callable[[], float] = time.time,
        resilience: Mapping[str, ResilienceSettings] | None = None,
        meters: GatewayMeters | None = None,
    ) -> None:
        self.connectors = dict(connectors)
        self.metrics = metrics
        self.store = store
        self.clock = clock
        self.meters = meters or GatewayMeters()
        self.resilience = {
            name: (resilience or {}).get(name, ResilienceSettings()) for name in self.connectors
        }
        self.breakers = {
            name: CircuitBreaker.from_settings(name, settings, on_change=self._breaker_changed)
            for name, settings in self.resilience.items()
        }
        for name in self.connectors:
            metrics.breaker_state.labels(name).set(STATE_VALUES["closed"])
        # (source, entity, key) -> the outcomes of the lookup that has the key in flight
        self._inflight: dict[Slot, asyncio.Future[dict[str, Outcome]]] = {}
        self._latency_s: dict[str, float] = {}

    def expected_latency_s(self, source: str) -> float:
        """How long the system's calls have been taking: a moving average over its
        successful calls (0 before the first). Resolvers start the slowest system's call
        first, since each call's set-up runs before the next one's."""
        return self._latency_s.get(source, 0.0)

    def _took(self, source: str, seconds: float) -> None:
        last = self._latency_s.get(source)
        self._latency_s[source] = seconds if last is None else last + 0.2 * (seconds - last)

    def _breaker_changed(self, source: str, state: State) -> None:
        self.metrics.breaker_state.labels(source).set(STATE_VALUES[state])

    async def fetch(
        self,
        source: str,
        entity: str,
        keys: Sequence[str],
        observer: FetchObserver | None = None,
    ) -> dict[str, Fetched | SourceUnavailable]:
        """Records by key; absent keys are missing. When the system fails, a key is
        either served stale or maps to the SourceUnavailable error.

        Single flight covers the whole lookup of a key (cache, then system): a request
        asking for a key another request of this instance is already looking up waits for
        that outcome, so no window remains between reading the cache and fetching."""
        stats = _FetchStats()
        token = _current.set(stats)
        try:
            outcomes = await self._traced(source, entity, keys, stats)
        finally:
            _current.reset(token)
            if observer is not None:
                observer.fetched(source, stats.hits, stats.calls, stats.errors)
        result: dict[str, Fetched | SourceUnavailable] = {}
        oldest: float | None = None
        for key, (value, stale_age) in outcomes.items():
            if value is not None:
                result[key] = value
            if stale_age is not None:
                oldest = stale_age if oldest is None else max(oldest, stale_age)
        if oldest is not None and observer is not None:
            observer.stale(source, entity, oldest)
        return result

    async def _traced(
        self, source: str, entity: str, keys: Sequence[str], stats: _FetchStats
    ) -> dict[str, Outcome]:
        with client_span(
            f"source {source}.{entity}",
            {"c360.source": source, "c360.entity": entity, "c360.batch_size": len(keys)},
        ) as span:
            stats.span = span
            if self.store is None:
                fetched = await self._call(source, entity, keys)
                return {key: (fetched.get(key), None) for key in keys}
            waiting = {
                key: future
                for key in keys
                if (future := self._inflight.get((source, entity, key))) is not None
            }
            mine = [key for key in keys if key not in waiting]
            outcomes: dict[str, Outcome] = {}
            if mine:
                outcomes.update(await self._lead(source, entity, mine))
            if waiting:
                self.metrics.cache_hits.labels(source).inc(len(waiting))  # coalesced
                stats.hits += len(waiting)
                await asyncio.gather(*dict.fromkeys(waiting.values()))
                outcomes.update({key: shared.result()[key] for key, shared in waiting.items()})
            span.set_attribute("c360.cache.coalesced", len(waiting))
            return outcomes

    async def _lead(self, source: str, entity: str, keys: list[str]) -> dict[str, Outcome]:
        """Look up keys no other request of this instance is looking up; share the
        outcomes. One future for the whole lookup (not one per key: a page names 300),
        registered under each key before the first await."""
        shared: asyncio.Future[dict[str, Outcome]] = asyncio.get_running_loop().create_future()
        shared.add_done_callback(_retrieved)
        inflight = self._inflight
        for key in keys:
            inflight[(source, entity, key)] = shared
        try:
            outcomes = await self._lookup(source, entity, keys)
        except BaseException as error:
            shared.set_exception(error)
            raise
        else:
            shared.set_result(outcomes)
            return outcomes
        finally:
            for key in keys:
                inflight.pop((source, entity, key), None)

    async def _lookup(self, source: str, entity: str, keys: list[str]) -> dict[str, Outcome]:
        assert self.store is not None
        now = self.clock()
        freshness = self.store.settings.freshness_for(source, entity)
        cached = await self.store.get_many(source, entity, keys)
        outcomes: dict[str, Outcome] = {
            key: (entry.value, None)
            for key, entry in cached.items()
            if entry.age(now) <= freshness.ttl_s
        }
        missing = [key for key in keys if key not in outcomes]
        self.metrics.cache_hits.labels(source).inc(len(outcomes))
        self.metrics.cache_misses.labels(source).inc(len(missing))
        stats = _current.get()
        if stats is not None:
            stats.hits += len(outcomes)
        span = stats.span if stats is not None else INVALID_SPAN
        span.set_attribute("c360.cache.hits", len(outcomes))
        span.set_attribute("c360.cache.misses", len(missing))
        if not missing:
            return outcomes
        try:
            fetched = await self._from_peers_or_source(source, entity, missing)
        except SourceUnavailable as error:
            limit = freshness.ttl_s + freshness.max_stale_s
            served = 0
            for key in missing:
                entry = cached.get(key)
                if entry is not None and entry.age(now) <= limit:
                    outcomes[key] = (entry.value, entry.age(now))
                    served += 1
                else:
                    outcomes[key] = (error, None)
            if not served:
                raise
            self.metrics.cache_stale.labels(source).inc(served)
            return outcomes
        outcomes.update({key: (value, None) for key, value in fetched.items()})
        return outcomes

    async def _from_peers_or_source(
        self, source: str, entity: str, keys: list[str]
    ) -> dict[str, Fetched | None]:
        """Fetch the keys this instance claims while waiting for the keys other instances
        claimed (concurrently: two instances that split a batch must not wait on each
        other). Keys a peer did not deliver in time are fetched here after all."""
        assert self.store is not None
        store = self.store
        ours = await store.claim(source, entity, keys, self._hold_s(source))
        claimed = [key for key in keys if key in ours]
        others = [key for key in keys if key not in set(claimed)]
        peers = asyncio.ensure_future(self._await_peers(source, entity, others))
        try:
            mine = await self._fetch_claimed(source, entity, claimed)
        except BaseException:
            peers.cancel()
            raise
        theirs = await peers
        found = {**mine, **theirs}
        late = [key for key in others if key not in theirs]
        if late:
            found.update(await self._fetch_and_store(source, entity, late))
        return found

    async def _fetch_claimed(
        self, source: str, entity: str, claimed: list[str]
    ) -> dict[str, Fetched | None]:
        assert self.store is not None
        if not claimed:
            return {}
        try:
            found: dict[str, Fetched | None] = {}
            if self.store.settings.shared:
                # Another instance may have stored these and released its claim between
                # our cache read and our claim (it stores before releasing): read again.
                found.update(await self._fresh(source, entity, claimed))
            to_call = [key for key in claimed if key not in found]
            if to_call:
                found.update(await self._fetch_and_store(source, entity, to_call))
            return found
        finally:
            await self.store.release(source, entity, claimed)

    async def _fetch_and_store(
        self, source: str, entity: str, keys: list[str]
    ) -> dict[str, Fetched | None]:
        assert self.store is not None
        fetched = await self._call(source, entity, keys)
        values = {key: fetched.get(key) for key in keys}
        await self.store.put_many(source, entity, values, self.clock())
        return values

    async def _await_peers(
        self, source: str, entity: str, keys: list[str]
    ) -> dict[str, Fetched | None]:
        """Entries another instance is fetching, as they appear; whatever has not
        appeared within PEER_WAIT_S is fetched here after all (bounded stampede)."""
        found: dict[str, Fetched | None] = {}
        deadline = time.monotonic() + self.PEER_WAIT_S
        pending = list(keys)
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(self.PEER_POLL_S)
            found.update(await self._fresh(source, entity, pending))
            pending = [key for key in pending if key not in found]
        return found

    async def _fresh(self, source: str, entity: str, keys: list[str]) -> dict[str, Fetched | None]:
        assert self.store is not None
        ttl = self.store.settings.freshness_for(source, entity).ttl_s
        now = self.clock()
        entries: dict[str, Entry] = await self.store.get_many(source, entity, keys)
        return {key: entry.value for key, entry in entries.items() if entry.age(now) <= ttl}

    def _hold_s(self, source: str) -> float:
        """How long a Redis claim lasts: the whole fetch, retries and pauses included."""
        timeout = float(getattr(self.connectors[source], "timeout_s", 2.0))
        settings = self.resilience[source]
        return timeout * (1 + settings.retries) + settings.backoff_cap_s * settings.retries + 1.0

    async def _call(self, source: str, entity: str, keys: Sequence[str]) -> dict[str, Fetched]:
        """One logical fetch: through the source's circuit breaker, retried with jittered
        backoff (reads are idempotent). Each attempt counts as one call to the system."""
        connector = self.connectors[source]
        stats = _current.get()
        span = stats.span if stats is not None else INVALID_SPAN
        span.set_attribute("c360.source_called", True)
        attempts = 0

        async def attempt() -> dict[str, Fetched]:
            nonlocal attempts
            attempts += 1
            self.metrics.source_requests.labels(source).inc()
            if stats is not None:
                stats.calls += 1
            started = time.perf_counter()
            try:
                found = await connector.fetch(entity, keys)
            except SourceUnavailable as error:
                if stats is not None:
                    stats.errors += 1
                self.metrics.source_errors.labels(source).inc()
                self.meters.source_call(source, "error", time.perf_counter() - started)
                log.warning(
                    "source call failed",
                    extra={
                        "source": source,
                        "entity": entity,
                        "keys": len(keys),
                        "attempt": attempts,
                        "reason": error.reason,
                    },
                )
                raise
            finally:
                self.metrics.source_duration.labels(source).observe(time.perf_counter() - started)
            took = time.perf_counter() - started
            self.meters.source_call(source, "ok", took)
            self._took(source, took)
            return found

        try:
            found = await call_with_resilience(
                self.breakers[source],
                self.resilience[source],
                attempt,
                idempotent=True,
                source=source,
            )
        except SourceUnavailable:
            span.set_attribute("c360.outcome", "error")
            span.set_status(StatusCode.ERROR, "source unavailable")
            raise
        finally:
            span.set_attribute("c360.attempts", attempts)
        span.set_attribute("c360.outcome", "ok")
        return found

    def actions(self, source: str) -> Mapping[str, WriteSpec]:
        """The writes a source configures (name -> what each takes); empty for
        a source that cannot write. For checking a declaration's writes at start."""
        connector = self.connectors.get(source)
        if connector is None:
            raise NoSuchWrite(f"sources.{source}: no such source")
        return connector.actions() if isinstance(connector, Writable) else {}

    async def write(self, source: str, action: str, values: Mapping[str, Any]) -> WriteResult:
        """Ask the source to do one configured write, once.

        Raises NoSuchWrite (no such source or action) or WriteValueError (the values do
        not fit the action) before anything is sent; then WriteRefused or WriteConflict
        (the system answered no: for its circuit breaker, an answer like any other), or
        SourceUnavailable (down, timed out, 5xx, circuit open, out of request time)."""
        spec = write_spec(source, self.actions(source), action)
        connector = self.connectors[source]
        assert isinstance(connector, Writable)
        spec.check(source, values)
        # The names of the values, never the values themselves.
        with client_span(
            f"source {source} write {action}",
            {
                "c360.source": source,
                "c360.write.action": action,
                "c360.write.fields": sorted(values),
            },
        ) as span:
            try:
                outcome = await call_with_resilience(
                    self.breakers[source],
                    self.resilience[source],
                    lambda: self._write_once(connector, source, action, values),
                    idempotent=False,  # never retried
                    source=source,
                )
            except SourceUnavailable:
                span.set_attribute("c360.outcome", "error")
                span.set_status(StatusCode.ERROR, "source unavailable")
                raise
            if isinstance(outcome, WriteResult):
                span.set_attribute("c360.outcome", "ok")
                span.set_attribute("c360.write.affected", outcome.affected)
                return outcome
            kind = "conflict" if isinstance(outcome, WriteConflict) else "refused"
            span.set_attribute("c360.outcome", kind)
            if isinstance(outcome, WriteRefused) and outcome.status is not None:
                span.set_attribute("http.response.status_code", outcome.status)
            raise outcome

    async def _write_once(
        self, connector: Writable, source: str, action: str, values: Mapping[str, Any]
    ) -> WriteResult | WriteRefused | WriteConflict:
        """One call to the system. A refusal is returned, not raised: the system
        answered, so for its breaker the call succeeded."""
        self.metrics.source_requests.labels(source).inc()
        started = time.perf_counter()
        try:
            result = await connector.write(action, values)
        except SourceUnavailable as error:
            self.metrics.source_errors.labels(source).inc()
            self.meters.source_call(source, "error", time.perf_counter() - started)
            log.warning(
                "source write failed",
                extra={"source": source, "action": action, "reason": error.reason},
            )
            raise
        except (WriteRefused, WriteConflict) as answer:
            kind = "conflict" if isinstance(answer, WriteConflict) else "refused"
            self.meters.source_call(source, kind, time.perf_counter() - started)
            log.info(
                f"source write {kind}",
                extra={"source": source, "action": action, "reason": answer.reason},
            )
            return answer
        finally:
            self.metrics.source_duration.labels(source).observe(time.perf_counter() - started)
        self.meters.source_call(source, "ok", time.perf_counter() - started)
        return result

    async def invalidate(self, source: str, entity: str, keys: Sequence[str]) -> int:
        if self.store is None:
            return 0
        return await self.store.evict(source, entity, keys)

    async def health(self, timeout_s: float = 2.0) -> dict[str, Health]:
        async def one(connector: Connector) -> Health:
            try:
                async with asyncio.timeout(timeout_s):
                    return await connector.health()
            except TimeoutError:
                return Health(False, f"no answer within {timeout_s:.1f}s")

        names = list(self.connectors)
        results = await asyncio.gather(*(one(self.connectors[name]) for name in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        await asyncio.gather(*(connector.close() for connector in self.connectors.values()))
        if self.store is not None:
            await self.store.close()
