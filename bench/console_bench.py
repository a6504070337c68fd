"""`python -m bench.console_bench [--records N] [--rounds 30] [--page-rounds 10] [--out DIR]`: the
security console's server time on a PostgreSQL access log of a million records.

Seeds a database of its own (`c360_console_bench` on the local PostgreSQL; generated
records in chain `seed-1`, as `c360 audit seed` writes them), starts the demo systems and a
gateway whose access log is that database, checks the chains once (the overview's
integrity), then sends each view's GraphQL requests as the console sends them, with
varying customers and subjects, and reports p50/p95 per request and per view (a view's
requests as the page sends them: the footprint's three at once; the timeline's opening,
its field and decision filters and its second page one after the other); then, in
headless chromium, how long each page takes until it is usable (`bench/console_page.py`).
Prints a Markdown table; with --out, also writes console.json and console.md there.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.console_page import missing, page_times
from demo.console_seed import cuid, seed_log
from demo.systems import DemoSystems
from gateway.app import Gateway, build_app
from gateway.audit.sinks import PostgresSink
from gateway.auth import mint_token
from gateway.config import parse_config
from gateway.demo import demo_config
from gateway.serving import start_server

ADMIN_DSN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DATABASE = "c360_console_bench"
ZONE = "Asia/Shanghai"

FIELDS = "id kind ts subject roles purpose client operation outcome traceId"
Q_CUSTOMER = "query ConsoleCustomer($id: ID!) { customer(id: $id) { id name } }"
Q_TIMELINE = f"""query ConsoleTimeline($customer: ID!, $field: String, $decision: String,
  $first: Int, $after: String) {{
  accessLog(customer: $customer, field: $field, decision: $decision, first: $first,
    after: $after) {{
    edges {{ node {{ {FIELDS} fields(customer: $customer) {{ customer field decision policy }} }} }}
    pageInfo {{ hasNextPage endCursor }} }} }}"""
Q_FOOTPRINT = """query ConsoleFootprint($subject: String!, $since: DateTime, $zone: String!) {
  accessFootprint(subject: $subject, since: $since, timeZone: $zone) {
    since until requests customers deniedRequests
    days { day customers requests } decisions { field decision count } } }"""
Q_SEEN = """query ConsoleFootprintCustomers($subject: String!, $since: DateTime, $zone: String!,
  $first: Int, $after: String) {
  accessFootprint(subject: $subject, since: $since, timeZone: $zone) {
    customersSeen(first: $first, after: $after) {
      edges { node { customer accesses lastSeen } } pageInfo { hasNextPage endCursor } } } }"""
Q_DENIED = f"""query ConsoleDenied($subject: String!, $since: DateTime, $first: Int) {{
  accessLog(subject: $subject, decision: "deny", since: $since, first: $first) {{
    edges {{ node {{ {FIELDS} fields {{ customer field decision policy }} }} }}
    pageInfo {{ hasNextPage endCursor }} }} }}"""
Q_ALERTS = """query ConsoleAlerts($acknowledged: Boolean, $first: Int, $after: String) {
  accessAlerts(acknowledged: $acknowledged, first: $first, after: $after) {
    edges { node { id ts subject roles alert { type distinctCustomers deniedFields threshold
      windowSeconds } } acknowledgement { id by at resolution } }
    pageInfo { hasNextPage endCursor } } }"""
INTEGRITY = """accessLogIntegrity { checking checkedAt intact records chains { chain lastSeq }
  breaks { chain seq location problem } tornTail }"""
Q_OVERVIEW = f"""query ConsoleOverview($since: DateTime, $until: DateTime, $zone: String!) {{
  accessOverview(since: $since, until: $until, timeZone: $zone, top: 10) {{
    since until byRole {{ hour key count }} byDecision {{ hour key count }}
    topSubjects {{ subject customers requests }} fields {{ field allow mask deny }} }}
  {INTEGRITY} }}"""


async def ensure_database(fresh: bool) -> str:
    admin = create_async_engine(ADMIN_DSN, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            if fresh:
                await connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
            exists = await connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": DATABASE}
            )
            if not exists:
                await connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    finally:
        await admin.dispose()
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE


async def ensure_seeded(dsn: str, records: int) -> dict[str, Any]:
    sink = PostgresSink(dsn)
    await sink.open()
    head = await sink.head("seed-1")
    await sink.close()
    seeded: dict[str, Any] = {"existing": head.seq}
    if head.seq < records:
        started = time.perf_counter()

        def progress(written: int) -> None:
            if written % 50_000 == 0:
                rate = written / (time.perf_counter() - started)
                print(f"  seeded {head.seq + written} ({rate:.0f}/s)", file=sys.stderr, flush=True)

        report = await seed_log(
            PostgresSink(dsn), records - head.seq, days=30, batch=5000, progress=progress
        )
        seeded["written"] = report.records
        seeded["seconds"] = round(report.seconds, 1)
        engine = create_async_engine(dsn, isolation_level="AUTOCOMMIT")
        async with engine.connect() as connection:
            # Index-only scans need the visibility map; a fresh bulk load has none yet.
            await connection.execute(text("VACUUM ANALYZE"))
        await engine.dispose()
    engine = create_async_engine(dsn)
    async with engine.connect() as connection:
        seeded["log_records"] = await connection.scalar(
            select(func.count()).select_from(text("c360_access_log"))
        )
        seeded["customer_rows"] = await connection.scalar(
            select(func.count()).select_from(text("c360_access_customer"))
        )
        seeded["database_size"] = await connection.scalar(
            text("SELECT pg_size_pretty(pg_database_size(current_database()))")
        )
    await engine.dispose()
    return seeded


class Console:
    """Sends the console's requests and times them."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.http = http
        self.url = url
        self.headers = {
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
            "x-client-name": "console-bench",
        }
        self.times: dict[str, list[float]] = {}

    async def ask(self, name: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables})
        started = time.perf_counter()
        async with self.http.post(self.url, data=body, headers=self.headers) as response:
            answer: dict[str, Any] = await response.json()
        self.times.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        if answer.get("errors") and not answer.get("data"):
            raise RuntimeError(f"{name}: {answer['errors']}")
        return answer.get("data") or {}


def listening_socket() -> socket.socket:
    """Like `gateway.serving.bind`, but with IPPROTO_TCP: asyncio sets TCP_NODELAY only on
    sockets whose proto says TCP, and without it every response on a kept-alive
    connection waits ~40 ms for a delayed ACK (Nagle), which would hide the server time
    this measures."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def since(hours: int) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)).isoformat()


async def views(console: Console, rng: random.Random) -> dict[str, Callable[[], Awaitable[None]]]:
    """Each view as the console loads it; customers and subjects vary per round."""

    async def overview(hours: int, ago: int = 0) -> None:
        variables = {"since": since(hours + ago), "until": since(ago) if ago else None}
        label = f"overview {hours}h" + (f", {ago}h ago" if ago else "")
        await console.ask(label, Q_OVERVIEW, {**variables, "zone": ZONE})

    async def timeline(kind: str) -> None:
        customer = cuid(rng.randrange(10)) if kind == "hot" else cuid(rng.randrange(20_000))
        await console.ask(f"timeline {kind}: customer name", Q_CUSTOMER, {"id": customer})
        page = await console.ask(
            f"timeline {kind}: page 1", Q_TIMELINE, {"customer": customer, "first": 25}
        )
        await console.ask(
            f"timeline {kind}: nationalId",
            Q_TIMELINE,
            {"customer": customer, "field": "nationalId", "first": 25},
        )
        await console.ask(
            f"timeline {kind}: denied",
            Q_TIMELINE,
            {"customer": customer, "decision": "deny", "first": 25},
        )
        end = page["accessLog"]["pageInfo"]["endCursor"]
        if end:
            await console.ask(
                f"timeline {kind}: page 2",
                Q_TIMELINE,
                {"customer": customer, "first": 25, "after": end},
            )

    async def footprint(subject: str, label: str) -> None:
        # As the page asks: the summary and both tables at once.
        variables = {"subject": subject, "since": since(168), "zone": ZONE}
        await asyncio.gather(
            console.ask(f"footprint {label}: summary", Q_FOOTPRINT, variables),
            console.ask(f"footprint {label}: customers", Q_SEEN, {**variables, "first": 25}),
            console.ask(
                f"footprint {label}: denied",
                Q_DENIED,
                {"subject": subject, "since": variables["since"], "first": 25},
            ),
        )

    async def alerts() -> None:
        await console.ask("alerts: open", Q_ALERTS, {"acknowledged": False, "first": 25})
        await console.ask("alerts: all", Q_ALERTS, {"first": 25})

    return {
        "overview (24 h)": lambda: overview(24),
        "overview (7 days)": lambda: overview(168),
        "overview (7 days, ending a week ago)": lambda: overview(168, ago=168),
        "timeline (a customer in 5% of single reads)": lambda: timeline("hot"),
        "timeline (a typical customer)": lambda: timeline("typical"),
        "footprint 7 days (a sales rep)": lambda: footprint(f"rep-{rng.randint(1, 40):03d}", "rep"),
        "footprint 7 days (a batch reader)": lambda: footprint(
            f"batch-{rng.randint(1, 2):03d}", "batch"
        ),
        "footprint 7 days (marketing)": lambda: footprint(f"mkt-{rng.randint(1, 6):03d}", "mkt"),
        "alerts": alerts,
    }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def pages(rng: random.Random) -> dict[str, str]:
    """The console's pages as a reviewer opens them (the route after `/console`)."""
    return {
        "overview (24 h)": "#/overview?range=24h",
        "overview (7 days)": "#/overview?range=7d",
        "timeline (a typical customer)": f"#/timeline?customer={cuid(rng.randrange(20_000))}",
        "footprint 7 days (a sales rep)": f"#/footprint?subject=rep-{rng.randint(1, 40):03d}",
        "footprint 7 days (marketing)": f"#/footprint?subject=mkt-{rng.randint(1, 6):03d}",
        "alerts": "#/alerts",
    }


async def measure(dsn: str, rounds: int, page_rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="c360-console-bench-") as work:
        state = Path(work)
        async with DemoSystems(state / "demo") as systems:
            data = demo_config(
                systems.endpoints,
                port=0,
                overrides={
                    "identity.dsn": f"sqlite+aiosqlite:///{state}/identity.db",
                    "cache.enabled": False,
                    "audit.sink": "postgresql",
                    "audit.dsn": dsn,
                    "audit.chain": "console-bench",
                },
            )
            config = parse_config(data, base_dir=state)
            gateway = Gateway(config)
            server = await start_server(build_app(config, gateway), listening_socket())
            token = mint_token(config.auth, "bench-reviewer", ["security"], ["audit"])
            try:
                timeout = aiohttp.ClientTimeout(total=120)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    console = Console(http, server.url + "/graphql", token)
                    integrity = await check_integrity(console)
                    console.times.clear()
                    rng = random.Random(11)
                    plan = await views(console, rng)
                    for view in plan.values():  # warm-up: plans, pools, pages
                        await view()
                    console.times.clear()
                    per_view: dict[str, list[float]] = {name: [] for name in plan}
                    for _ in range(rounds):
                        for name, view in plan.items():
                            started = time.perf_counter()
                            await view()
                            per_view[name].append((time.perf_counter() - started) * 1000)
                page_load = await measure_pages(server.url, token, page_rounds)
            finally:
                await server.stop()
    return {
        "integrity": integrity,
        "views": {name: summary(times) for name, times in per_view.items()},
        "requests": {name: summary(times) for name, times in console.times.items()},
        "pages": page_load,
    }


async def measure_pages(base: str, token: str, rounds: int) -> dict[str, Any]:
    """Each page's time until usable in the browser, or why it was not measured."""
    reason = missing() if rounds else "--page-rounds 0"
    if reason:
        print(f"page load not measured: {reason}", file=sys.stderr)
        return {"skipped": reason}
    times = await asyncio.to_thread(page_times, base, token, pages(random.Random(5)), rounds)
    return {name: summary(values) for name, values in times.items()}


async def check_integrity(console: Console) -> dict[str, Any]:
    """The first overview starts the chains' check; wait for it as a reviewer would."""
    started = time.perf_counter()
    query = f"query ConsoleIntegrity {{ {INTEGRITY} }}"
    while True:
        answer = (await console.ask("integrity", query, {}))["accessLogIntegrity"]
        if answer["intact"] is not None and not answer["checking"]:
            break
        await asyncio.sleep(2)
    return {
        "seconds_until_first_report": round(time.perf_counter() - started, 1),
        "intact": answer["intact"],
        "records": answer["records"],
        "request_ms_while_checking": summary(console.times["integrity"]),
    }


def summary(times: list[float]) -> dict[str, float]:
    return {
        "n": len(times),
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 0.95), 1),
        "max_ms": round(max(times), 1),
    }


def markdown(result: dict[str, Any]) -> str:
    seeded = result["seeded"]
    lines = [
        "# Security console on a PostgreSQL access log",
        "",
        f"{seeded['log_records']:,} records ({seeded['customer_rows']:,} customer rows, "
        f"database {seeded['database_size']}), {result['rounds']} rounds; times are wall "
        "times of each GraphQL request over loopback HTTP, so they include the HTTP hop.",
        "",
        "| view (its requests as the page sends them) | p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for name, s in result["views"].items():
        lines.append(f"| {name} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |")
    lines += ["", "| request | n | p50 ms | p95 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for name, s in result["requests"].items():
        lines.append(f"| {name} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |")
    page_load = result["pages"]
    lines += [
        "",
        "Until the page is usable, in headless chromium at 1280x800: from the "
        "navigation's start to the view drawn with its data (a whole load each time: "
        "HTML, CSS, script, the sign-in check, the view's requests).",
    ]
    if "skipped" in page_load:
        lines += ["", f"Not measured in this run: {page_load['skipped']}."]
    else:
        lines += ["", "| page | n | p50 ms | p95 ms | max ms |", "|---|---:|---:|---:|---:|"]
        for name, s in page_load.items():
            lines.append(f"| {name} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |")
    integrity = result["integrity"]
    lines += [
        "",
        f"Chain check (`c360 audit verify`'s, in the background): first report after "
        f"{integrity['seconds_until_first_report']} s, intact={integrity['intact']}, "
        f"{integrity['records']:,} records; the integrity request meanwhile answered in "
        f"p95 {integrity['request_ms_while_checking']['p95_ms']} ms.",
    ]
    if "seconds" in seeded:
        lines.append(f"Seeding {seeded['written']:,} records took {seeded['seconds']} s.")
    return "\n".join(lines) + "\n"


def save(out: Path, result: dict[str, Any], text_report: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "console.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "console.md").write_text(text_report, encoding="utf-8")


async def main(args: argparse.Namespace) -> int:
    dsn = await ensure_database(args.fresh)
    seeded = await ensure_seeded(dsn, args.records)
    print(f"log ready: {seeded}", file=sys.stderr)
    if args.seed_only:
        return 0
    result = {
        "seeded": seeded,
        "rounds": args.rounds,
        **await measure(dsn, args.rounds, args.page_rounds),
    }
    text_report = markdown(result)
    if args.out:
        save(Path(args.out), result, text_report)
    print(text_report)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.console_bench")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--fresh", action="store_true", help="drop and re-seed the database")
    parser.add_argument("--seed-only", action="store_true")
    parser.add_argument(
        "--page-rounds", type=int, default=10, help="page loads per page in chromium (0: none)"
    )
    parser.add_argument("--out", help="a directory for console.json and console.md")
    sys.exit(asyncio.run(main(parser.parse_args())))
