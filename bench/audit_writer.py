"""What signed checkpoints and encryption at rest cost the access-log writer: records per
second through the real writer (AccessLog, JSONL sink, group commit every 100 ms) with
checkpoints every N records and without, and with each line sealed (`[audit] encrypt`),
in interleaved rounds.

    .venv/bin/python -m bench.audit_writer [--records 20000] [--rounds 3] [--only encrypt]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.log import AccessLog
from gateway.audit.settings import parse_audit

KEY = base64.b64encode(
    Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
).decode()


def record(n: int) -> dict[str, Any]:
    """About the size of a (b) page's record: 10 customers, 4 fields each."""
    customers = [f"cus_{n:08d}{i:08d}" for i in range(10)]
    return {
        "kind": "access",
        "ts": "2026-11-25T09:41:07.512Z",
        "request_id": f"{n:032x}",
        "trace_id": f"{n:032x}",
        "subject": "alice",
        "roles": ["sales"],
        "purpose": "sales",
        "outcome": "ok",
        "status": 200,
        "duration_ms": 3.2,
        "customers": customers,
        "fields": {c: {"email": "allow", "phone": "mask", "nationalId": "deny"} for c in customers},
        "policies": {"email": "customer.email", "phone": "customer.phone"},
        "sources": {"sales": {"calls": 1, "cache_hits": 0, "errors": 0}},
    }


# label -> what [audit] adds to the plain writer; the first is the baseline
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "encrypted (aes-256-gcm)": {"encrypt": True},
    "checkpoint every 10000": {"checkpoint_key": KEY, "checkpoint_every": 10_000},
    "checkpoint every 1000": {"checkpoint_key": KEY, "checkpoint_every": 1_000},
    "checkpoint every 100": {"checkpoint_key": KEY, "checkpoint_every": 100},
}
# --only: the variants run beside the baseline
ONLY: dict[str, list[str]] = {
    "encrypt": ["encrypted (aes-256-gcm)"],
    "checkpoints": ["checkpoint every 10000", "checkpoint every 1000", "checkpoint every 100"],
}


async def run(extra: dict[str, Any], records: int, directory: Path) -> float:
    table: dict[str, Any] = {"path": "access.jsonl", "chain": "bench", **extra}
    settings, sink = parse_audit(table, directory)
    access_log = AccessLog(settings, sink)
    await access_log.start()
    batch = [record(n) for n in range(records)]
    started = time.perf_counter()
    for n, item in enumerate(batch):
        access_log.record(item)
        if n % 100 == 99:  # as requests come: the writer runs between them ...
            await asyncio.sleep(0)
        if n % 1000 == 999:  # ... and keeps up (a backlog past write_timeout_ms spills)
            await access_log.flush()
    await access_log.flush()
    elapsed = time.perf_counter() - started
    await access_log.stop()
    return records / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=sorted(ONLY), help="the baseline and these variants")
    args = parser.parse_args()
    chosen = ["plain", *ONLY[args.only]] if args.only else list(VARIANTS)
    rates: dict[str, list[float]] = {label: [] for label in chosen}
    for _ in range(args.rounds):
        for label in chosen:
            with tempfile.TemporaryDirectory() as directory:
                rates[label].append(await run(VARIANTS[label], args.records, Path(directory)))
    base = statistics.median(rates["plain"])
    print(f"{args.records} records x {args.rounds} rounds (median records/s; each round's)")
    for label, found in rates.items():
        rate = statistics.median(found)
        each = ", ".join(f"{r:,.0f}" for r in found)
        print(f"  {label:<26} {rate:>9,.0f}/s  {100 * (rate / base - 1):+6.1f} %  ({each})")


if __name__ == "__main__":
    asyncio.run(main())
