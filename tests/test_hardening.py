"""Production hardening over HTTP: limits, rate limiting, the circuit breaker, tracing
(traceparent in and out, spans), persisted documents, graceful shutdown under load."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from demo.systems import DemoSystems
from gateway.audit.sinks import JsonlSink
from gateway.demo import to_toml
from gateway.documents import document_hash
from gateway.telemetry import Telemetry
from harness import (
    Load,
    SourceAdmin,
    gateway_config,
    running_gateway,
    sales_token,
    start_serve,
    write_config,
)

TICKETS = "query T($n: Int) { customers(first: $n) { edges { node { id tickets { id } } } } }"


@pytest.mark.parametrize(
    ("limit", "setting", "under", "over"),
    [
        (
            "depth",
            {"limits.max_depth": 3},
            "{ customers(first: 1) { edges { node { id } } } }",
            "{ customers(first: 1) { edges { node { orders { id } } } } }",
        ),
        (
            "aliases",
            {"limits.max_aliases": 2},
            "{ a: customers(first: 1) { edges { cursor } }"
            " b: customers(first: 1) { edges { cursor } } }",
            "{ a: customers(first: 1) { edges { cursor } }"
            " b: customers(first: 1) { edges { cursor } }"
            " c: customers(first: 1) { edges { cursor } } }",
        ),
        (
            "cost",
            {"limits.max_cost": 400},
            "{ customers(first: 50) { edges { node { name email } } } }",
            "{ customers(first: 100) { edges { node { name email orders(first: 10) { id } } } } }",
        ),
        (
            "tokens",
            {"limits.max_tokens": 25},
            "{ customers(first: 1) { edges { node { id name } } } }",
            "{ customers(first: 1) { edges { node { id name email phone address segment"
            " satisfaction lifetimeValue nationalId orders { id total status placedAt } } } } }",
        ),
    ],
)
async def test_each_limit_just_under_and_just_over(
    demo_systems: DemoSystems,
    tmp_path: Path,
    limit: str,
    setting: dict[str, Any],
    under: str,
    over: str,
) -> None:
    async with running_gateway(demo_systems, tmp_path, setting) as gateway:
        fine = await gateway.query(under)
        calls = gateway.source_calls("sales")
        refused = await gateway.query(over)
        assert gateway.source_calls("sales") == calls  # refused before any system was asked
        await gateway.gateway.access_log.flush()
        sink = gateway.gateway.config.audit_sink
        assert isinstance(sink, JsonlSink)
        last = [r for _, r in sink.lines()][-1]
    assert not fine.errors, fine.errors
    assert "data" not in refused.body
    assert refused.codes() == ["QUERY_TOO_COMPLEX"]
    assert refused.errors[0]["extensions"]["limit"] == limit
    assert limit in refused.errors[0]["message"]
    assert last is not None and last["outcome"] == "rejected"


async def test_rate_limit_answers_429_with_retry_after(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    overrides = {"rate_limit.rate_per_s": 0.5, "rate_limit.burst": 2}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        replies = [
            await gateway.query("{ customers(first: 1) { edges { cursor } } }") for _ in range(3)
        ]
        other = await gateway.query(
            "{ customers(first: 1) { edges { cursor } } }",
            headers=gateway.as_role("sales", subject="someone-else"),
        )
    assert [r.status for r in replies] == [200, 200, 429]
    assert replies[2].codes() == ["RATE_LIMITED"]
    assert int(replies[2].headers["retry-after"]) >= 1
    assert other.status == 200  # per principal


async def test_breaker_opens_half_opens_and_closes(
    demo_systems: DemoSystems, tmp_path: Path, sources: SourceAdmin
) -> None:
    overrides = {"resilience.breaker_failures": 2, "resilience.breaker_cooldown_s": 0.3}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        breaker = gateway.gateway.hub.breakers["service"]
        await sources.fault("service", "error")
        for _ in range(2):
            await gateway.query(TICKETS, {"n": 2})
        assert breaker.state == "open"
        _, body = await gateway.get("/readyz")
        assert orjson.loads(body)["sources"]["service"]["circuit"] == "open"
        before = await sources.calls("service", "GET /api/v2/tickets")
        refused = await gateway.query(TICKETS, {"n": 2})
        assert refused.codes() == ["SOURCE_UNAVAILABLE"]
        assert await sources.calls("service", "GET /api/v2/tickets") == before  # not called
        await sources.fault("service", "ok")
        async with asyncio.timeout(5):
            while breaker.state == "open":  # noqa: ASYNC110 - the cool-down runs on its own
                await asyncio.sleep(0.05)
        assert breaker.state == "half_open"
        healed = await gateway.query(TICKETS, {"n": 2})
        _, metrics = await gateway.get("/metrics")
    assert not healed.errors
    assert breaker.state == "closed"
    assert 'c360_source_circuit_state{source="service"} 0.0' in metrics


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """Spans of this module's gateways: the source spans use the global tracer, so the
    global provider is set once (OpenTelemetry allows one per process)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_traceparent_in_spans_out_and_to_the_systems(
    demo_systems: DemoSystems, tmp_path: Path, sources: SourceAdmin, spans: InMemorySpanExporter
) -> None:
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    secret_email = "fuzzy.secret@example.org"
    query = (
        "query Lookup($e: String!) { customerByEmail(email: $e) { id } "
        "customers(first: 2) { edges { node { tickets { id } } } } }"
    )
    async with running_gateway(
        demo_systems,
        tmp_path,
        {"cache.enabled": True},
        telemetry=Telemetry(tracer_provider=provider),
    ) as gateway:
        spans.clear()
        reply = await gateway.query(query, {"e": secret_email}, headers={"traceparent": incoming})
        stats = await sources.stats("service")
        again = await gateway.query(query, {"e": secret_email}, headers={"traceparent": incoming})
    assert not reply.errors and not again.errors
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    assert stats["last_traceparent"].split("-")[1] == trace_id  # propagated to the helpdesk
    finished = spans.get_finished_spans()
    ours = [s for s in finished if format(s.context.trace_id, "032x") == trace_id]
    server = [s for s in ours if s.kind == trace.SpanKind.SERVER]
    assert len(server) == 2
    attributes = dict(server[0].attributes or {})
    assert attributes["graphql.operation.name"] == "Lookup"
    assert attributes["graphql.operation.type"] == "query"
    assert attributes["c360.request_id"] == reply.headers["x-request-id"]
    source_spans = [s for s in ours if s.name.startswith("source ")]
    assert {s.attributes["c360.source"] for s in source_spans} >= {"service"}  # type: ignore[index]
    # The helpdesk's lookups: the first asked the system, the second found the cache.
    cold, warm = [
        (s.kind, dict(s.attributes or {}))
        for s in source_spans
        if s.name == "source service.tickets"
    ]
    assert cold[0] == warm[0] == trace.SpanKind.CLIENT
    assert (
        cold[1].items()
        >= {
            "c360.batch_size": 2,
            "c360.cache.hits": 0,
            "c360.cache.misses": 2,
            "c360.source_called": True,
            "c360.attempts": 1,
            "c360.outcome": "ok",
        }.items()
    )
    assert warm[1].items() >= {"c360.cache.hits": 2, "c360.cache.misses": 0}.items()
    assert "c360.source_called" not in warm[1]
    for span in ours:
        assert secret_email not in str(dict(span.attributes or {}))


async def test_automatic_persisted_queries(demo_systems: DemoSystems, tmp_path: Path) -> None:
    query = "{ customers(first: 1) { edges { cursor } } }"
    digest = document_hash(query)
    persisted = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    async with running_gateway(demo_systems, tmp_path) as gateway:
        unknown = await gateway.post(orjson.dumps({"extensions": persisted}))
        registered = await gateway.post(orjson.dumps({"query": query, "extensions": persisted}))
        by_hash = await gateway.post(orjson.dumps({"extensions": persisted}))
    assert unknown.codes() == ["PERSISTED_QUERY_NOT_FOUND"]
    assert not registered.errors
    assert by_hash.data == registered.data


async def test_only_trusted_documents_run(demo_systems: DemoSystems, tmp_path: Path) -> None:
    trusted = "{ customers(first: 1) { edges { cursor } } }"
    (tmp_path / "trusted.graphql").write_text(trusted)
    store = tmp_path / "documents.json"
    data = gateway_config(demo_systems, tmp_path, {"documents.file": str(store)})
    config = tmp_path / "docs.toml"
    config.write_text(to_toml(data))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "documents",
        "add",
        "--config",
        str(config),
        str(tmp_path / "trusted.graphql"),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert out.decode().split()[0] == document_hash(trusted)
    overrides = {"documents.file": str(store), "documents.only_trusted": True}
    async with running_gateway(demo_systems, tmp_path / "gw", overrides) as gateway:
        allowed = await gateway.query(trusted)
        refused = await gateway.query("{ customers(first: 2) { edges { cursor } } }")
    assert not allowed.errors
    assert refused.codes() == ["QUERY_NOT_TRUSTED"]


async def test_sigterm_under_load_loses_no_access_record(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    config, data = write_config(demo_systems, tmp_path, {"audit.chain": "graceful"})
    token = sales_token(data)
    process, url = await start_serve(config)
    stop = asyncio.Event()
    load = Load(url, token, orjson.dumps({"query": TICKETS, "variables": {"n": 3}}))

    clients = [asyncio.create_task(load.client(stop)) for _ in range(6)]
    async with asyncio.timeout(30):
        while load.answered < 60:  # noqa: ASYNC110 - under load for a while
            await asyncio.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        code = await process.wait()
    stop.set()
    await asyncio.gather(*clients)
    records = [
        orjson.loads(line)
        for line in (tmp_path / "access.jsonl").read_bytes().splitlines()
        if line.strip()
    ]
    assert code == 0
    ok_records = [r for r in records if r["outcome"] == "ok" and r["status"] == 200]
    assert len(ok_records) >= load.answered  # every answered request was recorded
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))


async def test_cors_allows_only_configured_origins(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    overrides = {"server.cors_origins": ["https://crm.example.com"]}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:

        async def preflight(origin: str) -> dict[str, str]:
            headers = {
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            }
            async with gateway.http.options(gateway.url + "/graphql", headers=headers) as reply:
                return {k.lower(): v for k, v in reply.headers.items()}

        allowed = await preflight("https://crm.example.com")
        refused = await preflight("https://evil.example")
    assert allowed["access-control-allow-origin"] == "https://crm.example.com"
    assert "authorization" in allowed["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in refused


async def test_serve_with_workers(demo_systems: DemoSystems, tmp_path: Path) -> None:
    import socket as sockets

    with sockets.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config, data = write_config(demo_systems, tmp_path, {"server.port": port})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config),
        "--workers",
        "2",
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {sales_token(data)}", "content-type": "application/json"}
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):
                while True:  # until a worker has started and synced its crosswalk
                    try:
                        async with http.get(url + "/readyz") as ready:
                            if ready.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
            body = orjson.dumps({"query": "{ customers(first: 2) { edges { node { name } } } }"})
            async with http.post(url + "/graphql", data=body, headers=headers) as reply:
                answer = await reply.json()
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
    assert len(answer["data"]["customers"]["edges"]) == 2


async def test_array_batches_run_up_to_the_batch_limit(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    operation = {"query": "{ customers(first: 2) { edges { node { name } } } }"}
    async with running_gateway(demo_systems, tmp_path, {"limits.max_batch": 3}) as gateway:
        async with gateway.http.post(
            gateway.url + "/graphql",
            data=orjson.dumps([operation] * 3),
            headers={**gateway.as_role("sales"), "content-type": "application/json"},
        ) as reply:
            batch = await reply.json()
        calls = gateway.source_calls("sales")
        too_many = await gateway.post(orjson.dumps([operation] * 4))
        assert gateway.source_calls("sales") == calls  # refused before anything ran
    assert [len(result["data"]["customers"]["edges"]) for result in batch] == [2, 2, 2]
    assert too_many.status == 400
    assert too_many.codes() == ["QUERY_TOO_COMPLEX"]
    assert too_many.errors[0]["extensions"]["limit"] == "batch"
