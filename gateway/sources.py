"""The gateway's way to the department systems: every call is counted, timed and, on
failure, logged with its reason (clients only ever learn the source's name)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from connectors.base import Connector, Fetched, Health, SourceUnavailable
from gateway.metrics import Metrics

log = logging.getLogger("c360.sources")


class SourceHub:
    def __init__(self, connectors: Mapping[str, Connector], metrics: Metrics) -> None:
        self.connectors = dict(connectors)
        self.metrics = metrics

    async def fetch(self, source: str, entity: str, keys: Sequence[str]) -> dict[str, Fetched]:
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
