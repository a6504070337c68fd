"""`c360 audit seed`: generated access records, to try and measure the console on a large
log. They form a chain of their own (`seed-…`), sealed like real ones so `verify` passes,
and go only into a log named on the command line that is not the configured one and holds
no other chain, so generated records never mix with real ones, not even in a new, still
empty production log."""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.audit.chain import ChainHead
from gateway.audit.sinks import AccessSink, JsonlSink, PostgresSink, SinkUnavailable

PREFIX = "seed-"
LOOPBACK = {"", "localhost", "127.0.0.1", "::1"}  # one database server, however it is named

# (subject prefix, how many, role, purpose, client, share of requests)
STAFF = (
    ("rep", 40, "sales", "sales", "web-crm", 0.45),
    ("agent", 20, "service", "service", "support-desk", 0.35),
    ("mkt", 6, "marketing", "marketing", "campaign-tool", 0.15),
    ("batch", 2, "sales", "sales", "nightly-export", 0.03),
    ("sec", 2, "security", "audit", "c360-console", 0.02),
)
# What each role reads and what the shipped policy file decides for it.
READS = {
    "sales": {
        "name": "allow",
        "email": "allow",
        "phone": "allow",
        "nationalId": "mask",
        "address": "allow",
        "lifetimeValue": "allow",
        "orders": "allow",
    },
    "service": {
        "name": "allow",
        "email": "allow",
        "phone": "allow",
        "nationalId": "mask",
        "tickets": "allow",
        "satisfaction": "allow",
    },
    "marketing": {
        "name": "allow",
        "email": "consent",
        "phone": "mask",
        "nationalId": "deny",
        "segment": "allow",
        "consents": "allow",
    },
    "security": {"name": "mask"},
}
POLICIES = {
    "name": "customer.name",
    "email": "customer.email",
    "phone": "customer.phone",
    "nationalId": "customer.nationalId",
    "address": "customer.address",
    "lifetimeValue": "customer.lifetimeValue",
    "orders": "customer.orders",
    "tickets": "customer.tickets",
    "satisfaction": "customer.tickets",
    "segment": "customer.segment",
    "consents": "customer.segment",
}


class SeedRefused(Exception):
    """The target log is the configured one or holds real records, or the chain name is
    not a seed chain."""


@dataclass(frozen=True, slots=True)
class SeedReport:
    chain: str
    records: int
    first_seq: int
    last_seq: int
    seconds: float


def cuid(n: int) -> str:
    """A well-formed CUID that no identity sync issues (it is not keyed)."""
    digest = hashlib.sha256(f"c360-seed-customer-{n}".encode()).digest()
    return "cus_" + base64.b32encode(digest).decode().lower()[:16]


class RecordMaker:
    def __init__(self, rng: random.Random, customers: int) -> None:
        self.rng = rng
        self.population = [cuid(n) for n in range(customers)]
        self.hot = self.population[:10]  # customers many people look at: long timelines
        self.staff: list[tuple[str, str, str, str]] = []
        self.weights: list[float] = []
        for prefix, count, role, purpose, client, share in STAFF:
            for n in range(1, count + 1):
                self.staff.append((f"{prefix}-{n:03d}", role, purpose, client))
                self.weights.append(share / count)

    def customers(self, role: str) -> list[str]:
        roll = self.rng.random()
        if role == "security" or roll < 0.80:
            pool = self.hot if self.rng.random() < 0.05 else self.population
            return [self.rng.choice(pool)]
        size = self.rng.randint(10, 20) if roll < 0.97 else self.rng.randint(50, 100)
        return sorted(set(self.rng.sample(self.population, size)))

    def access(self, moment: dt.datetime) -> dict[str, Any]:
        rng = self.rng
        subject, role, purpose, client = rng.choices(self.staff, self.weights)[0]
        if rng.random() < 0.01:  # a rejected request: no principal, nothing read
            return self._base(moment, None, [], None, None, "rejected", 401) | {
                "reason": "unauthenticated"
            }
        touched = self.customers(role)
        reads = READS[role]
        names = [n for n in reads if n == "name" or rng.random() < 0.7]
        fields: dict[str, dict[str, str]] = {}
        for customer in touched:
            decided = {}
            for name in names:
                effect = reads[name]
                if effect == "consent":
                    effect = "allow" if rng.random() < 0.6 else "deny"
                decided[name] = effect
            fields[customer] = decided
        outcome = "ok" if rng.random() < 0.97 else rng.choice(["partial", "error"])
        if any(d == "deny" for seen in fields.values() for d in seen.values()):
            outcome = "partial"
        record = self._base(moment, subject, [role], purpose, client, outcome, 200)
        record.update(
            {
                "operation": rng.choice(["CustomerCard", "CustomerList", None]),
                "operation_type": "query",
                "document_hash": hashlib.sha256(f"{role}{len(names)}".encode()).hexdigest(),
                "customers": sorted(fields),
                "fields": fields,
                "policies": {name: POLICIES[name] for name in names},
                "sources": {"sales": {"calls": 1, "cache_hits": 0, "errors": 0}},
            }
        )
        return record

    def alert(self, moment: dt.datetime) -> dict[str, Any]:
        subject, role, _, _ = self.rng.choices(self.staff, self.weights)[0]
        bulk = self.rng.random() < 0.7
        detail: dict[str, Any] = (
            {"alert": "bulk_access", "distinct_customers": self.rng.randint(201, 900)}
            if bulk
            else {"alert": "denied_burst", "denied_fields": self.rng.randint(101, 400)}
        )
        return {
            "kind": "alert",
            "ts": _iso(moment),
            "request_id": self.rng.randbytes(16).hex(),
            "trace_id": self.rng.randbytes(16).hex(),
            "subject": subject,
            "roles": [role],
            "customers": [],
            **detail,
            "threshold": 200 if bulk else 100,
            "window_s": 600.0,
        }

    def _base(
        self,
        moment: dt.datetime,
        subject: str | None,
        roles: list[str],
        purpose: str | None,
        client: str | None,
        outcome: str,
        status: int,
    ) -> dict[str, Any]:
        return {
            "kind": "access",
            "ts": _iso(moment),
            "request_id": self.rng.randbytes(16).hex(),
            "trace_id": self.rng.randbytes(16).hex(),
            "subject": subject,
            "roles": roles,
            "purpose": purpose,
            "client": client,
            "operation": None,
            "operation_type": None,
            "document_hash": None,
            "outcome": outcome,
            "status": status,
            "reason": None,
            "duration_ms": round(self.rng.uniform(3, 80), 3),
            "customers": [],
            "fields": {},
            "policies": {},
            "sources": {},
        }


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate(
    head: ChainHead,
    count: int,
    *,
    start: dt.datetime,
    end: dt.datetime,
    seed: int = 7,
    customers: int = 20_000,
) -> Iterator[dict[str, Any]]:
    """`count` sealed records, oldest first, spread from `start` to `end`; about one in
    2,000 is an alert (a third of those acknowledged a little later)."""
    rng = random.Random(seed)
    maker = RecordMaker(rng, customers)
    step = (end - start) / max(1, count)
    for n in range(count):
        moment = start + step * n
        if rng.random() < 1 / 2000:
            alert = head.seal(maker.alert(moment))
            yield alert
            if rng.random() < 1 / 3:
                yield head.seal(
                    {
                        "kind": "ack",
                        "ts": _iso(moment + step / 2),
                        "request_id": rng.randbytes(16).hex(),
                        "subject": "sec-001",
                        "roles": ["security"],
                        "purpose": "audit",
                        "customers": [],
                        "fields": {},
                        "alert_id": f"{alert['chain']}:{alert['seq']}",
                        "alert_subject": alert["subject"],
                        "resolution": "reviewed",
                    }
                )
            continue
        yield head.seal(maker.access(moment))


async def foreign_chain(sink: AccessSink) -> str | None:
    """A chain in the log that is not a seed chain, if there is one."""
    if isinstance(sink, PostgresSink):
        table = sink.table
        statement = select(table.c.chain).where(~table.c.chain.startswith(PREFIX)).limit(1)
        async with sink.engine.connect() as connection:
            row = (await connection.execute(statement)).first()
        return None if row is None else str(row[0])
    if isinstance(sink, JsonlSink):
        return await asyncio.to_thread(_foreign_in_files, sink)
    raise SeedRefused(f"cannot seed a {sink.name} sink")


def _foreign_in_files(sink: JsonlSink) -> str | None:
    for _, record in sink.lines():
        chain = str((record or {}).get("chain", "?"))
        if not chain.startswith(PREFIX):
            return chain
    return None


async def seed_log(
    sink: AccessSink,
    records: int,
    *,
    chain: str = "seed-1",
    days: float = 30,
    seed: int = 7,
    batch: int = 2000,
    progress: Any = None,
) -> SeedReport:
    if not chain.startswith(PREFIX) or len(chain) > 128:
        raise SeedRefused(f"the chain's name must start with {PREFIX!r}")
    if records < 1:
        raise SeedRefused("--records: at least 1")
    started = time.perf_counter()
    await sink.open()
    try:
        foreign = await foreign_chain(sink)
        if foreign is not None:
            raise SeedRefused(
                f"the access log holds real records (chain {foreign!r}); "
                "seed into a log of its own (another audit.path or database)"
            )
        head = await sink.head(chain)
        first = head.seq + 1
        end = dt.datetime.now(dt.UTC)
        pending: list[dict[str, Any]] = []
        written = 0
        for record in generate(
            head, records, start=end - dt.timedelta(days=days), end=end, seed=seed + first
        ):
            pending.append(record)
            if len(pending) >= batch:
                await sink.write(pending)
                written += len(pending)
                pending = []
                if progress is not None:
                    progress(written)
        if pending:
            await sink.write(pending)
            written += len(pending)
    finally:
        await sink.close()
    return SeedReport(chain, written, first, head.seq, time.perf_counter() - started)


def same_log(one: AccessSink, other: AccessSink) -> bool:
    """Whether `one` writes `other`'s log: its JSONL file or one of its rotated files, or
    its PostgreSQL database (the table's name is fixed), however the DSN spells it."""
    if isinstance(one, JsonlSink) and isinstance(other, JsonlSink):
        paths = {path.resolve() for path in (other.path, *other.files())}
        return one.path.resolve() in paths
    if isinstance(one, PostgresSink) and isinstance(other, PostgresSink):
        return _database(one.dsn) == _database(other.dsn)
    return False


def _database(dsn: str) -> tuple[str, int, str]:
    url = make_url(dsn)
    host = url.host or ""
    return ("localhost" if host in LOOPBACK else host, url.port or 5432, url.database or "")


def target_sink(args: argparse.Namespace) -> AccessSink:
    """The log to seed, as the command line names it: never taken from a config file."""
    if args.path:
        return JsonlSink(Path(args.path).resolve())
    dsn = str(args.dsn)
    try:
        make_url(dsn)
    except ArgumentError as error:
        raise SeedRefused("--dsn: a postgresql+asyncpg:// DSN") from error
    if not dsn.startswith("postgresql"):
        raise SeedRefused("--dsn: a postgresql+asyncpg:// DSN")
    return PostgresSink(dsn)


def configured_sink(
    args: argparse.Namespace, default_config: Path
) -> tuple[Path, AccessSink] | None:
    """The gateway's own log, which seeding must leave alone. A config named with
    --config or --data-dir must load; the default one is read when it exists (without
    one here, there is no gateway's log to mistake for the target)."""
    from gateway.config import load_config

    if args.data_dir:
        path = Path(args.data_dir) / "c360.toml"
    elif args.config:
        path = Path(args.config)
    elif default_config.exists():
        path = default_config
    else:
        return None
    return path, load_config(path).audit_sink


def add_seed_parser(actions: Any, default_config: Path) -> None:
    """`c360 audit seed`, for the command line's `audit` sub-commands."""
    seed = actions.add_parser(
        "seed",
        help="write generated records into a log of their own (never the configured one)",
        description="Generated access records for trying the console. The log to seed is "
        "named with --path or --dsn and must not be the log the gateway's config names "
        "(audit.path or audit.dsn), nor hold any chain but seed-… ones.",
    )
    target = seed.add_mutually_exclusive_group(required=True)
    target.add_argument("--path", help="a JSONL log file of its own")
    target.add_argument("--dsn", help="a PostgreSQL database of its own (postgresql+asyncpg://…)")
    seed.add_argument(
        "--config",
        help=f"the gateway's config, whose log is refused (default: {default_config}, if present)",
    )
    seed.add_argument("--data-dir", help="the demo's data directory (instead of --config)")
    seed.add_argument("--records", type=int, required=True, help="how many records")
    seed.add_argument("--chain", default="seed-1", help="the chain (seed-…; default seed-1)")
    seed.add_argument("--days", type=float, default=30, help="spread over the last N days")
    seed.add_argument("--seed", type=int, default=7, help="random seed: same seed, same log")
    seed.set_defaults(handler=cmd_audit_seed, default_config=default_config)


def cmd_audit_seed(args: argparse.Namespace) -> int:
    def progress(written: int) -> None:
        if written % 100_000 == 0:
            print(f"  {written} records", file=sys.stderr, flush=True)

    try:
        sink = target_sink(args)
        configured = configured_sink(args, args.default_config)
        if configured is not None and same_log(sink, configured[1]):
            named = args.path or "the --dsn database"  # a DSN may hold a password
            raise SeedRefused(
                f"{named} is the access log {configured[0]} names for real use; "
                "seed a log of its own (another --path or --dsn)"
            )
        report = asyncio.run(
            seed_log(
                sink,
                args.records,
                chain=args.chain,
                days=args.days,
                seed=args.seed,
                progress=progress,
            )
        )
    except (SeedRefused, SinkUnavailable) as error:
        print(f"c360: audit seed: {error}", file=sys.stderr)
        return 1
    print(
        f"seeded {report.records} records into chain {report.chain} "
        f"(seq {report.first_seq}-{report.last_seq}) in {report.seconds:.1f} s"
    )
    return 0
