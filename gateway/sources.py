"""The gateway's way to the department systems: the cache first, then one batched call
for the missing keys only. Every call is counted, timed and, on failure, logged with its
reason (clients only ever learn the source's name).

Concurrent misses for the same key within an instance share one call (single flight);
with Redis, an instance first claims the keys it will fetch, and waits briefly for keys
another instance is already fetching. When a system fails, entries past their TTL but
within max-stale are served, and the request is told their age.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from connectors.base import Connector, Fetched, Health, SourceUnavailable
from gateway.cache import Entry, RecordStore
from gateway.metrics import Metrics

log = logging.getLogger("c360.sources")

# Told when a request is served stale records: (source, entity, oldest age in seconds).
StaleNote = Callable[[str, str, float], None]
Slot = tuple[str, str, str]


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
    ) -> None:
        self.connectors = dict(connectors)
        self.metrics = metrics
        self.store = store
        self.clock = clock
        self._inflight: dict[Slot, asyncio.Future[Fetched | None]] = {}

    async def fetch(
        self,
        source: str,
        entity: str,
        keys: Sequence[str],
        on_stale: StaleNote | None = None,
    ) -> dict[str, Fetched | SourceUnavailable]:
        """Records by key; absent keys are missing. When the system fails, a key is
        either served stale or maps to the SourceUnavailable error."""
        if self.store is None:
            return dict(await self._call(source, entity, keys))
        now = self.clock()
        freshness = self.store.settings.freshness_for(source, entity)
        cached = await self.store.get_many(source, entity, keys)
        fresh = {k: e for k, e in cached.items() if e.age(now) <= freshness.ttl_s}
        missing = [key for key in keys if key not in fresh]
        self.metrics.cache_hits.labels(source).inc(len(fresh))
        self.metrics.cache_misses.labels(source).inc(len(missing))
        result: dict[str, Fetched | SourceUnavailable] = {
            key: entry.value for key, entry in fresh.items() if entry.value is not None
        }
        if not missing:
            return result
        try:
            fetched = await self._single_flight(source, entity, missing)
        except SourceUnavailable as error:
            limit = freshness.ttl_s + freshness.max_stale_s
            stale = {k: cached[k] for k in missing if k in cached and cached[k].age(now) <= limit}
            if not stale:
                raise
            self.metrics.cache_stale.labels(source).inc(len(stale))
            if on_stale is not None:
                on_stale(source, entity, max(entry.age(now) for entry in stale.values()))
            for key in missing:
                entry = stale.get(key)
                if entry is None:
                    result[key] = error
                elif entry.value is not None:
                    result[key] = entry.value
            return result
        result.update({key: value for key, value in fetched.items() if value is not None})
        return result

    async def _single_flight(
        self, source: str, entity: str, keys: Sequence[str]
    ) -> dict[str, Fetched | None]:
        assert self.store is not None
        waiting = {
            key: future
            for key in keys
            if (future := self._inflight.get((source, entity, key))) is not None
        }
        mine = [key for key in keys if key not in waiting]
        found: dict[str, Fetched | None] = {}
        if mine:
            found.update(await self._lead(source, entity, mine))
        if waiting:
            values = await asyncio.gather(*waiting.values())
            found.update(zip(waiting, values, strict=True))
        return found

    async def _lead(self, source: str, entity: str, keys: list[str]) -> dict[str, Fetched | None]:
        """Fetch keys no other request of this instance is fetching; share the outcome."""
        assert self.store is not None
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[Fetched | None]] = {}
        for key in keys:
            future = self._inflight[(source, entity, key)] = loop.create_future()
            future.add_done_callback(_retrieved)
            futures[key] = future
        try:
            found = await self._from_peers_or_source(source, entity, keys)
        except BaseException as error:
            for future in futures.values():
                future.set_exception(error)
            raise
        else:
            for key, future in futures.items():
                future.set_result(found.get(key))
            return found
        finally:
            for key in keys:
                self._inflight.pop((source, entity, key), None)

    async def _from_peers_or_source(
        self, source: str, entity: str, keys: list[str]
    ) -> dict[str, Fetched | None]:
        assert self.store is not None
        store = self.store
        claimed = await store.claim(source, entity, keys, hold_s=self._hold_s(source))
        found: dict[str, Fetched | None] = {}
        others = [key for key in keys if key not in claimed]
        if others:
            found.update(await self._await_peers(source, entity, others))
        to_call = [key for key in keys if key not in found]
        if to_call:
            try:
                fetched = await self._call(source, entity, to_call)
                values = {key: fetched.get(key) for key in to_call}
                await store.put_many(source, entity, values, self.clock())
                found.update(values)
            finally:
                await store.release(source, entity, [k for k in to_call if k in claimed])
        return found

    async def _await_peers(
        self, source: str, entity: str, keys: list[str]
    ) -> dict[str, Fetched | None]:
        """Entries another instance is fetching, as they appear; whatever has not
        appeared within PEER_WAIT_S is fetched here after all (bounded stampede)."""
        assert self.store is not None
        freshness = self.store.settings.freshness_for(source, entity)
        found: dict[str, Fetched | None] = {}
        deadline = time.monotonic() + self.PEER_WAIT_S
        pending = list(keys)
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(self.PEER_POLL_S)
            now = self.clock()
            entries: dict[str, Entry] = await self.store.get_many(source, entity, pending)
            for key, entry in entries.items():
                if entry.age(now) <= freshness.ttl_s:
                    found[key] = entry.value
            pending = [key for key in pending if key not in found]
        return found

    def _hold_s(self, source: str) -> float:
        timeout = getattr(self.connectors[source], "timeout_s", 2.0)
        return float(timeout) + 1.0

    async def _call(self, source: str, entity: str, keys: Sequence[str]) -> dict[str, Fetched]:
        connector = self.connectors[source]
        self.metrics.source_requests.labels(source).inc()
        started = time.perf_counter()
        try:
            return await connector.fetch(entity, keys)
        except SourceUnavailable as error:
            self.metrics.source_errors.labels(source).inc()
            log.warning(
                "source call failed",
                extra={
                    "source": source,
                    "entity": entity,
                    "keys": len(keys),
                    "reason": error.reason,
                },
            )
            raise
        finally:
            self.metrics.source_duration.labels(source).observe(time.perf_counter() - started)

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
