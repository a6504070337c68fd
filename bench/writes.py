"""`python -m bench.writes [--requests 200] [--latency-ms 5]`: what a write through the
gateway costs over the system's own write.

The sales CRM (SQLite, the demo's, with `--latency-ms` of simulated latency per statement,
as the load bench gives the systems) is written two ways, in alternating blocks so that the
machine's drift lands on both: `updateCustomer` through the gateway's ASGI app (token
check, input check, the edit policy with the owner's record fetched, the fresh read for
`ifVersion`-less before-hashes, the write, the cache eviction, the re-read of the answer,
the access record), and the same configured write through the SQL connector alone (the
statement and its read-back). Prints the medians and the difference: the gateway's
overhead per write. The gateway's write makes two reads besides the write (the record it
replaces, for the before-hashes; and the answer's customer), so with latency its overhead
includes two of the system's round trips by design.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.inprocess import _lifespan, call
from connectors.registry import build_connector
from demo.systems import DemoSystems
from gateway.app import Gateway, build_app, connector_settings
from gateway.auth import mint_token
from gateway.config import parse_config
from gateway.demo import demo_config

MUTATION = """mutation($id: ID!, $phone: String!) {
  updateCustomer(id: $id, input: {phone: $phone}) { id phone }
}"""


async def measure(requests: int, latency_ms: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="c360-writes-") as work:
        state = Path(work)
        async with DemoSystems(state / "demo", customers=200) as systems:
            data = demo_config(
                dict(systems.endpoints),
                port=0,
                overrides={
                    "identity.dsn": f"sqlite+aiosqlite:///{state}/identity.db",
                    "audit.path": str(state / "audit.jsonl"),
                    "sources.sales.simulated_latency_ms": latency_ms,
                },
            )
            data.pop("rate_limit", None)
            config = parse_config(data, base_dir=state)
            gateway = Gateway(config)
            app = build_app(config, gateway)
            direct = build_connector("sales", connector_settings(config.sources["sales"]))
            token = mint_token(config.auth, "bench", ["sales_manager"], ["sales"], amr=["mfa"])
            headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
            async with _lifespan(app):
                sales_ids = [c.id for c in systems.world.sales.customers[:50]]
                cuids = [gateway.identity.by_record[("sales", str(i))] for i in sales_ids]
                through: list[float] = []
                alone: list[float] = []
                for block in range(max(1, requests // 20)):
                    for i in range(20):
                        n = block * 20 + i
                        phone = f"1390000{n % 10000:04d}"
                        body = orjson.dumps(
                            {"query": MUTATION, "variables": {"id": cuids[n % 50], "phone": phone}}
                        )
                        started = time.perf_counter()
                        status, answer = await call(app, body, headers)
                        through.append(time.perf_counter() - started)
                        if status != 200 or b'"errors"' in answer:
                            raise RuntimeError(f"HTTP {status}: {answer[:300]!r}")
                    for i in range(20):
                        n = block * 20 + i
                        values: dict[str, Any] = {
                            "key": str(sales_ids[n % 50]),
                            "phone": f"+86139{n % 100000000:08d}",
                        }
                        started = time.perf_counter()
                        await direct.write("update_customer", values)  # type: ignore[attr-defined]
                        alone.append(time.perf_counter() - started)
            await direct.close()
    p50_gateway = statistics.median(through) * 1000
    p50_system = statistics.median(alone) * 1000
    return {
        "gateway_p50_ms": round(p50_gateway, 2),
        "system_p50_ms": round(p50_system, 2),
        "overhead_ms": round(p50_gateway - p50_system, 2),
        "writes": len(through),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writes", description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.latency_ms))
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
