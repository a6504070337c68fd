"""The lower bound: a plain asyncio client that fetches what scenarios (a) and (b) ask for
straight from the three systems, all at once and batched, with no GraphQL and no HTTP server
of its own: sales through SQLAlchemy on the same SQLite file after the same simulated latency,
the helpdesk's batch endpoint, marketing's `_entities`. Gateway latency minus this is the
gateway's overhead.

Runs as its own process (`python -m bench.direct SPEC.json`, one JSON line out: a list with
one result per concurrency), so that it has an event loop to itself, as the gateway does.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.procs import cpu_seconds

ENTITIES_QUERY = (
    "query($representations: [_Any!]!) { _entities(representations: $representations) "
    "{ ... on Contact { %s } } }"
)


@dataclass(frozen=True)
class DirectSpec:
    """What to fetch and how hard; written as JSON by the harness."""

    query: str  # "a" (one customer per request, cycling through `cuids`) or "b" (the page)
    cuids: list[str]
    links: dict[str, dict[str, str]]  # cuid -> system -> that system's key
    sales_dsn: str
    sales_query: str  # the gateway's own SQL for sales.customer, with :keys
    sales_latency_ms: int
    helpdesk_url: str  # the batch endpoint, without the query string
    helpdesk_param: str
    marketing_url: str
    marketing_selection: str
    concurrencies: list[int]  # one run each, in this order, in this one process
    duration_s: float
    warmup_s: float

    @classmethod
    def load(cls, path: Path) -> DirectSpec:
        return cls(**orjson.loads(path.read_bytes()))


class DirectClient:
    def __init__(self, spec: DirectSpec, http: aiohttp.ClientSession, engine: AsyncEngine):
        self.spec = spec
        self.http = http
        self.engine = engine
        self.sql = text(spec.sales_query).bindparams(bindparam("keys", expanding=True))
        self.entities = ENTITIES_QUERY % spec.marketing_selection
        self.calls = {"sales": 0, "service": 0, "marketing": 0}

    async def sales(self, keys: list[str]) -> dict[str, Any]:
        self.calls["sales"] += 1
        await asyncio.sleep(self.spec.sales_latency_ms / 1000)
        async with self.engine.connect() as connection:
            result = await connection.execute(self.sql, {"keys": [int(k) for k in keys]})
            return {str(row["id"]): dict(row) for row in result.mappings()}

    async def service(self, keys: list[str]) -> dict[str, list[Any]]:
        self.calls["service"] += 1
        params = {self.spec.helpdesk_param: ",".join(keys)}
        async with self.http.get(self.spec.helpdesk_url, params=params) as response:
            response.raise_for_status()
            body = orjson.loads(await response.read())
        tickets: dict[str, list[Any]] = {key: [] for key in keys}
        for ticket in body["tickets"]:
            tickets.setdefault(ticket["requester_id"], []).append(ticket)
        return tickets

    async def marketing(self, keys: list[str]) -> dict[str, Any]:
        self.calls["marketing"] += 1
        representations = [{"__typename": "Contact", "id": key} for key in keys]
        payload = {"query": self.entities, "variables": {"representations": representations}}
        async with self.http.post(
            self.spec.marketing_url,
            data=orjson.dumps(payload),
            headers={"content-type": "application/json"},
        ) as response:
            response.raise_for_status()
            body = orjson.loads(await response.read())
        return {c["id"]: c for c in body["data"]["_entities"] if c}

    async def customers(self, cuids: Sequence[str]) -> bytes:
        """The joined records of `cuids`, serialised: what a client would receive."""
        keyed = {
            system: [k for c in cuids if (k := self.spec.links.get(c, {}).get(system))]
            for system in ("sales", "service", "marketing")
        }
        fetchers: dict[str, Callable[[list[str]], Coroutine[Any, Any, Any]]] = {
            "sales": self.sales,
            "service": self.service,
            "marketing": self.marketing,
        }
        systems = [s for s in fetchers if keyed[s]]
        found = await asyncio.gather(*(fetchers[s](keyed[s]) for s in systems))
        by_system: Mapping[str, Any] = dict(zip(systems, found, strict=True))
        joined = []
        for cuid in cuids:
            links = self.spec.links.get(cuid, {})
            joined.append(
                {"id": cuid}
                | {s: by_system.get(s, {}).get(links.get(s, ""), None) for s in fetchers}
            )
        return orjson.dumps(joined, default=str)


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


async def drive(spec: DirectSpec) -> list[dict[str, Any]]:
    """One run per concurrency, sharing the engine and the HTTP connection pool."""
    engine = create_async_engine(spec.sales_dsn)
    connector = aiohttp.TCPConnector(limit=0)
    results = []
    async with aiohttp.ClientSession(connector=connector) as http:
        client = DirectClient(spec, http, engine)
        for concurrency in spec.concurrencies:
            results.append(await run_once(spec, client, concurrency))
    await engine.dispose()
    return results


async def run_once(spec: DirectSpec, client: DirectClient, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    counter = 0
    measuring = False
    stop_at = time.monotonic() + spec.warmup_s + spec.duration_s

    def next_cuids() -> Sequence[str]:
        nonlocal counter
        counter += 1
        if spec.query == "a":
            return [spec.cuids[counter % len(spec.cuids)]]
        return spec.cuids

    async def worker() -> None:
        while time.monotonic() < stop_at:
            # Only operations that start in the measured part count, so that latencies
            # and calls cover the same operations.
            counted = measuring
            cuids = next_cuids()
            started = time.perf_counter()
            await client.customers(cuids)
            if counted:
                latencies.append((time.perf_counter() - started) * 1000)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(spec.warmup_s)
    measuring = True
    calls_before = dict(client.calls)
    cpu_before = cpu_seconds(os.getpid())
    started = time.monotonic()
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(os.getpid()) - cpu_before
    ordered = sorted(latencies)
    served = len(ordered)
    return {
        "concurrency": concurrency,
        "requests": served,
        "sent": served,
        "duration_s": elapsed,
        "rps": served / elapsed if elapsed else 0.0,
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        "p999_ms": percentile(ordered, 99.9),
        "mean_ms": sum(ordered) / served if served else 0.0,
        "max_ms": ordered[-1] if ordered else 0.0,
        "non_2xx": 0,
        "socket_errors": 0,
        "client_cpu_s": cpu,
        "calls_per_query": {
            name: round((client.calls[name] - calls_before[name]) / served, 3) if served else None
            for name in client.calls
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m bench.direct SPEC.json\n")
        return 2
    spec = DirectSpec.load(Path(args[0]))
    run: Callable[[Coroutine[Any, Any, list[dict[str, Any]]]], list[dict[str, Any]]] = asyncio.run
    try:
        import uvloop  # as the gateway's uvicorn uses it

        run = uvloop.run
    except ImportError:
        pass
    result = run(drive(spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
