"""`python -m bench.inprocess [--scenarios a,b,d] [--requests 300] [--cold] [--calls]`: the
gateway's own CPU per request, in one process, without HTTP or load: each scenario's request
sent straight to the ASGI app again and again, on uvloop as `c360 serve` runs.

By default every record is cached (the demo systems run in this process, without latency,
and are asked only while warming up). `--cold` runs the gateway as the load bench does,
the record cache off, with the demo systems in a process of their own: each request then
includes the client side of its source calls. CPU time is a median of seven blocks;
`--calls` counts the Python function calls per request instead (cProfile, on while the
request is awaited, so whatever else the loop runs meanwhile counts too), which varies
by well under 1% from run to run for the same code, where this machine's CPU times vary
by ±20% between identical runs: the way to compare two versions of the executor or the
policy path.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import orjson

from bench.scenarios import SCENARIOS
from demo.systems import DemoSystems
from gateway.app import Gateway, build_app
from gateway.auth import mint_token
from gateway.config import parse_config
from gateway.demo import DemoOptions, demo_config, start_demo_systems

Asgi = Any


async def call(app: Asgi, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
    """One POST /graphql through the ASGI app: its status and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # a disconnect never comes
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def measure(
    keys: list[str], requests: int, *, cold: bool = False, calls: bool = False
) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="c360-inprocess-") as work:
        state = Path(work)
        if cold:
            running = await start_demo_systems(DemoOptions(data_dir=state / "demo"))
            try:
                return await _measure(state, running.endpoints, keys, requests, cold, calls)
            finally:
                await running.stop()
        async with DemoSystems(state / "demo") as systems:
            return await _measure(state, systems.endpoints, keys, requests, cold, calls)


async def _measure(
    state: Path,
    endpoints: Mapping[str, Any],
    keys: list[str],
    requests: int,
    cold: bool,
    calls: bool,
) -> dict[str, dict[str, float]]:
    overrides: dict[str, Any] = {
        "identity.dsn": f"sqlite+aiosqlite:///{state}/identity.db",
        "limits.max_cost": 1_000_000,
        "audit.path": str(state / "audit.jsonl"),
        "cache.enabled": not cold,
    }
    if not cold:
        overrides["cache.ttl_s"] = 3600
        overrides.update({f"sources.{name}.cache.ttl_s": 3600 for name in endpoints})
    data = demo_config(dict(endpoints), port=0, overrides=overrides)
    data.pop("rate_limit", None)  # one principal sending thousands of requests is the point
    config = parse_config(data, base_dir=state)
    gateway = Gateway(config)
    app = build_app(config, gateway)
    results: dict[str, dict[str, float]] = {}
    async with _lifespan(app):
        cuids = await _cuids(app, config)
        for key in keys:
            scenario = SCENARIOS[key]
            token = mint_token(config.auth, "bench", [scenario.role], [scenario.purpose])
            headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
            for query in scenario.queries:
                bodies = query.bodies(query.c360, cuids)
                for body in bodies:  # warm: cache, plans, documents
                    status, answer = await call(app, body, headers)
                    if status != 200:
                        raise RuntimeError(f"{key}: HTTP {status}: {answer[:300]!r}")
                label = scenario.label(query)
                if calls:
                    profile = cProfile.Profile()
                    for i in range(requests):
                        profile.enable()
                        await call(app, bodies[i % len(bodies)], headers)
                        profile.disable()
                    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
                    counted = sum(entry[1] for entry in stats.values())
                    results[label] = {"calls": round(counted / requests)}
                    continue
                blocks = []
                for _ in range(7):
                    started = time.process_time()
                    for i in range(requests // 7):
                        await call(app, bodies[i % len(bodies)], headers)
                    blocks.append((time.process_time() - started) * 1000 / (requests // 7))
                results[label] = {
                    "cpu_ms": round(statistics.median(blocks), 3),
                    "spread_ms": round(max(blocks) - min(blocks), 3),
                }
    return results


class _lifespan:
    """The app's startup and shutdown around the measurement."""

    def __init__(self, app: Asgi) -> None:
        self.app = app
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        self.task = asyncio.create_task(self.app(scope, self.to_app.get, self.from_app.put))
        await self.to_app.put({"type": "lifespan.startup"})
        message = await self.from_app.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"startup: {message}")

    async def __aexit__(self, *_: object) -> None:
        await self.to_app.put({"type": "lifespan.shutdown"})
        await self.from_app.get()
        if self.task is not None:
            await self.task


async def _cuids(app: Asgi, config: Any) -> list[str]:
    token = mint_token(config.auth, "bench", ["sales"], ["sales"])
    body = orjson.dumps({"query": "{ customers(first: 100) { edges { node { id } } } }"})
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    _, answer = await call(app, body, headers)
    edges = orjson.loads(answer)["data"]["customers"]["edges"]
    return [edge["node"]["id"] for edge in edges]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess")
    parser.add_argument("--scenarios", default="a,b,d")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--cold", action="store_true", help="record cache off, as the load bench")
    parser.add_argument("--calls", action="store_true", help="Python calls per request")
    args = parser.parse_args()
    if args.requests < 7:
        parser.error("--requests: at least 7 (the CPU time is a median of seven blocks)")
    keys = [key for key in args.scenarios.split(",") if key]
    unknown = [key for key in keys if key not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    results = run(measure(keys, args.requests, cold=args.cold, calls=args.calls))
    for label, result in results.items():
        if "calls" in result:
            print(f"{label}: {result['calls']:.0f} Python calls per request")
        else:
            print(f"{label}: {result['cpu_ms']} ms CPU per request (spread {result['spread_ms']})")
    return 0


def run(main: Coroutine[Any, Any, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """On uvloop, as `c360 serve` runs (asyncio's own loop where it is not installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


if __name__ == "__main__":
    sys.exit(main())
