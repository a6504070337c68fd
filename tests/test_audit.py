"""The access log: a record for every kind of request, nothing raw in it, JSONL and
PostgreSQL sinks, a sink that fails and returns, fail_closed, tamper evidence, alerts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from demo.people import DemoWorld
from demo.systems import DemoSystems
from gateway.audit.log import AFTER_ANSWER_S, AccessLog, AuditSettings
from gateway.audit.settings import parse_audit
from gateway.audit.sinks import JsonlSink, SinkUnavailable
from gateway.demo import to_toml
from gateway.errors import ConfigError
from harness import (
    Load,
    RunningGateway,
    SourceAdmin,
    gateway_config,
    running_gateway,
    sales_token,
    start_serve,
    write_config,
)

PAGE = """query Page($n: Int) { customers(first: $n) { edges { node {
  id name email phone nationalId tickets { id } } } } }"""


async def records(gateway: RunningGateway) -> list[dict[str, Any]]:
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    return [record for _, record in sink.lines() if record is not None]


def log_text(gateway: RunningGateway) -> str:
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    return "\n".join(path.read_text(encoding="utf-8") for path in sink.files())


def cli(*args: str) -> Any:
    return asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await cli(*args)
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_a_record_for_every_kind_of_request(
    demo_systems: DemoSystems, tmp_path: Path, sources: SourceAdmin
) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        ok = await gateway.query(PAGE, {"n": 3}, {"x-client-name": "web-crm"})
        await sources.fault("service", "error")
        partial = await gateway.query(PAGE, {"n": 3})
        await sources.fault("service", "ok")
        await gateway.query(PAGE, {"n": 3}, headers={"authorization": "Bearer nonsense"})
        await gateway.query(
            PAGE, {"n": 3}, headers={**gateway.as_role("sales"), "x-purpose": "marketing"}
        )
        await gateway.post(b'{"query": "{ customers {')
        await gateway.query("{ customers { edges { node { shoeSize } } } }")
        await gateway.post(orjson.dumps({"query": "{ __typename }", "pad": "x" * 2_000_000}))
        written = await records(gateway)
    assert ok.headers["x-request-id"] == written[0]["request_id"]
    assert partial.codes() == ["SOURCE_UNAVAILABLE"]
    summary = [(r["outcome"], r["status"], r["reason"]) for r in written]
    assert summary == [
        ("ok", 200, None),
        ("partial", 200, None),
        ("rejected", 401, "unauthenticated"),
        ("rejected", 403, "purpose"),
        ("rejected", 400, "bad_request"),
        ("error", 200, None),
        ("rejected", 413, "body_too_large"),
    ]
    first = written[0]
    assert first["subject"] == "alice"
    assert first["roles"] == ["sales"]
    assert first["purpose"] == "sales"
    assert first["client"] == "web-crm"
    assert first["operation"] == "Page"
    assert first["operation_type"] == "query"
    assert len(first["document_hash"]) == 64
    assert len(first["customers"]) == 3
    assert first["sources"]["sales"]["calls"] == 1
    assert written[1]["sources"]["service"]["errors"] == 1
    assert written[2]["subject"] is None
    assert [r["seq"] for r in written] == list(range(1, 8))


async def test_a_refused_document_is_recorded_with_its_hash(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    # A syntax error or a query over the token limit ends the operation with an exception:
    # its record still names the document by hash (never by text).
    text = "query Broken { customers(first: 1) { edges"
    async with running_gateway(demo_systems, tmp_path) as gateway:
        reply = await gateway.query(text)
        [record] = await records(gateway)
    assert reply.errors and "Syntax Error" in reply.errors[0]["message"]
    assert record["document_hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert record["operation_type"] is None


async def test_field_decisions_per_customer_in_a_list(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        reply = await gateway.query(
            "{ customers(first: 25) { edges { node {"
            " id email phone nationalId consents { channel granted } } } } }",
            headers=gateway.as_role("marketing"),
        )
        [record] = await records(gateway)
    nodes = [edge["node"] for edge in reply.data["customers"]["edges"]]
    assert sorted(record["customers"]) == sorted(node["id"] for node in nodes)
    for node in nodes:
        decided = record["fields"][node["id"]]
        assert decided["nationalId"] == "deny"
        assert decided["phone"] == "mask"
        assert decided["email"] == ("allow" if node["email"] is not None else "deny")
        assert decided["consents"] == "allow"
    assert record["policies"]["email"] == "customer.email"
    assert record["policies"]["nationalId"] == "customer.nationalId"


async def test_nothing_raw_in_the_log(
    demo_systems: DemoSystems, tmp_path: Path, demo_world: DemoWorld
) -> None:
    person = next(p for p in demo_world.persons if p.sales_ids and p.requester_id)
    async with running_gateway(demo_systems, tmp_path) as gateway:
        await gateway.query(
            "query($e: String!) { customerByEmail(email: $e) {"
            " name email phone nationalId address } }",
            {"e": person.email},
        )
        await gateway.query(
            '{ customerByEmail(email: "' + person.email + '") { name } }',
            headers=gateway.as_role("security"),
        )
        await gateway.query(PAGE, {"n": 30}, headers=gateway.as_role("service"))
        await records(gateway)
        text = log_text(gateway)
    crm = next(c for c in demo_world.sales.customers if c.id == person.sales_ids[0])
    for raw in (
        person.email,
        crm.email.strip(),
        crm.phone.strip(),
        crm.national_id,
        crm.full_name.strip(),
        crm.address.strip(),
        person.phone,
    ):
        assert raw not in text
    for other in demo_world.sales.customers[:300]:
        assert other.national_id not in text
        assert other.email.strip() not in text


async def test_a_sink_that_fails_and_returns_loses_nothing_and_keeps_order(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        access_log = gateway.gateway.access_log
        access_log.settings = _fast_retry(access_log.settings)
        sink = access_log.sink
        real_write = sink.write
        down = True

        async def flaky_write(batch: Sequence[Any]) -> None:
            if down:
                raise SinkUnavailable("injected: the sink is down")
            await real_write(batch)

        sink.write = flaky_write  # type: ignore[method-assign]
        await gateway.query(PAGE, {"n": 2})
        await access_log.flush()
        assert access_log.spilling
        for _ in range(5):
            await gateway.query(PAGE, {"n": 2})
        assert access_log.settings.spill_path.exists()
        down = False
        async with asyncio.timeout(10):
            while access_log.spilling:  # noqa: ASYNC110 - the writer retries on its own
                await asyncio.sleep(0.02)
        await gateway.query(PAGE, {"n": 2})
        written = await records(gateway)
    assert [r["seq"] for r in written] == list(range(1, 8))
    assert not access_log.settings.spill_path.exists()
    code, out, _ = await run_cli(
        "audit", "verify", "--config", str(_config_file(tmp_path, gateway))
    )
    assert code == 0, out
    assert "intact: 7 records" in out


def _fast_retry(settings: Any) -> Any:
    import dataclasses

    return dataclasses.replace(settings, retry_interval_s=0.05)


def _config_file(tmp_path: Path, gateway: RunningGateway) -> Path:
    """A config file naming the same access log as the running gateway."""
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    data = {
        "identity": {"key": "x" * 32},
        "auth": {"issuer": "i", "audience": "a", "hs256": {"k": "s" * 32}},
        "policies": {"hash_key": "h" * 16},
        "sources": {"s": {"kind": "rest", "base_url": "http://127.0.0.1:1", "entities": {}}},
        "audit": {"path": str(sink.path), "chain": gateway.gateway.config.audit.chain},
    }
    path = tmp_path / "audit-only.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


async def test_fail_closed_refuses_what_cannot_be_recorded(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the spill directory should be")
    overrides = {"audit.fail_closed": True, "audit.spill_path": str(blocker / "spill.jsonl")}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        fine = await gateway.query(PAGE, {"n": 2})
        sink = gateway.gateway.access_log.sink

        async def failing(batch: Sequence[Any]) -> None:
            raise SinkUnavailable("injected")

        sink.write = failing  # type: ignore[method-assign]
        refused = await gateway.query(PAGE, {"n": 2})
    assert fine.status == 200
    assert fine.data["customers"]["edges"]
    assert refused.status == 503
    assert refused.codes() == ["AUDIT_UNAVAILABLE"]
    assert "data" not in refused.body


@pytest.mark.parametrize("fail_closed", [False, True])
async def test_the_record_follows_the_answer_unless_fail_closed(
    demo_systems: DemoSystems, tmp_path: Path, fail_closed: bool
) -> None:
    # The client does not wait for its own access record, except with fail_closed, where
    # the answer depends on the record being durable.
    sealed_when_answered: list[int] = []
    log: list[AccessLog] = []

    def watching(app: ASGIApp) -> ASGIApp:
        async def watched(scope: Scope, receive: Receive, send: Send) -> None:
            async def sending(message: Message) -> None:
                if message["type"] == "http.response.body" and scope["path"] == "/graphql":
                    sealed_when_answered.append(log[0].head.seq)
                await send(message)

            await app(scope, receive, sending)

        return watched

    overrides = {"audit.fail_closed": fail_closed}
    async with running_gateway(demo_systems, tmp_path, overrides, around=watching) as gateway:
        log.append(gateway.gateway.access_log)
        before = log[0].head.seq
        reply = await gateway.query(PAGE, {"n": 1})
        await log[0].flush()
        after = log[0].head.seq
    assert reply.status == 200 and not reply.errors
    assert after == before + 1
    assert sealed_when_answered == [after if fail_closed else before]


async def test_bookkeeping_after_an_answer_runs_a_moment_later_in_order_and_on_flush(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = AccessLog(
        AuditSettings(chain="t", spill_path=tmp_path / "spill.jsonl"),
        JsonlSink(tmp_path / "access.jsonl"),
    )
    await log.start()
    ran: list[int] = []

    def failing() -> None:
        raise RuntimeError("a broken job")

    def recording(n: int) -> Callable[[], None]:
        def job() -> None:
            log.record({"kind": "access", "n": n})

        return job

    for job in (lambda: ran.append(1), failing, lambda: ran.append(2)):
        log.later(job)
    assert ran == []  # not during the answer
    await asyncio.sleep(AFTER_ANSWER_S * 5)
    assert ran == [1, 2]  # in order, past the broken one, which is logged
    assert "recording a request after its answer failed" in caplog.text
    log.later(recording(3))
    await log.flush()  # runs what is due at once, then waits for the sink
    assert [r["n"] for _, r in log.sink.lines() if r] == [3]  # type: ignore[attr-defined]
    log.later(recording(4))
    await log.stop()  # so does an orderly stop
    assert [r["n"] for _, r in log.sink.lines() if r] == [3, 4]  # type: ignore[attr-defined]


async def test_verify_detects_edits_deletions_reorders_and_tolerates_a_torn_tail(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        for n in range(1, 7):
            await gateway.query(PAGE, {"n": n})
        await records(gateway)
        config = _config_file(tmp_path, gateway)
        sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    original = sink.path.read_bytes()
    lines = original.splitlines(keepends=True)

    async def verify_with(content: bytes) -> tuple[int, str, str]:
        sink.path.write_bytes(content)
        return await run_cli("audit", "verify", "--config", str(config))

    code, out, _ = await verify_with(original)
    assert (code, "intact: 6 records" in out) == (0, True)
    edited = json.loads(lines[2])
    edited["outcome"] = "error"
    code, _, err = await verify_with(
        b"".join([*lines[:2], orjson.dumps(edited) + b"\n", *lines[3:]])
    )
    assert code == 1
    assert "seq 3" in err and "content does not match" in err
    code, _, err = await verify_with(b"".join([*lines[:3], *lines[4:]]))
    assert code == 1
    assert "expected seq 4, found 5" in err
    code, _, err = await verify_with(b"".join([lines[0], lines[2], lines[1], *lines[3:]]))
    assert code == 1
    assert "BROKEN" in err
    torn = original + lines[-1][: len(lines[-1]) // 2]
    code, out, _ = await verify_with(torn)
    assert code == 0
    assert "incomplete last record" in out
    assert "intact: 6 records" in out


async def test_rotation_keeps_one_chain_across_files(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path, {"audit.max_bytes": 4096}) as gateway:
        for _ in range(12):
            await gateway.query(PAGE, {"n": 10})
        written = await records(gateway)
        config = _config_file(tmp_path, gateway)
        sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    assert len(sink.files()) > 2
    assert [r["seq"] for r in written] == list(range(1, 13))
    code, out, _ = await run_cli("audit", "verify", "--config", str(config))
    assert code == 0, out


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


async def test_jsonl_group_commit_writes_at_once_and_fsyncs_at_most_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs = _fsyncs(monkeypatch)
    sink = JsonlSink(tmp_path / "access.jsonl", sync_interval_s=0.2)
    await sink.open()
    for seq in range(1, 21):
        await sink.write([{"seq": seq}])
        # In the file (the OS has it: a crashing process loses nothing) before fsync.
        assert sum(1 for _ in sink.lines()) == seq
    assert len(fsyncs) == 1  # the first batch; the rest wait for the interval
    await asyncio.sleep(0.35)
    assert len(fsyncs) == 2  # one deferred fsync covered the other nineteen
    await sink.write([{"seq": 21}])
    await sink.close()  # flushes what the deferred fsync had not reached
    assert len(fsyncs) >= 3


async def test_jsonl_appends_small_batches_from_the_loop_and_the_rest_on_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_threads: list[str] = []
    real = asyncio.to_thread

    async def noting(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        on_threads.append(func.__name__)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", noting)
    sink = JsonlSink(tmp_path / "access.jsonl", max_bytes=300, sync_interval_s=60)
    await sink.open()
    on_threads.clear()
    sizes_checked: list[int] = []
    rotation_due = sink._rotation_due

    def checking(size: int) -> bool:
        sizes_checked.append(size)
        return rotation_due(size)

    monkeypatch.setattr(sink, "_rotation_due", checking)
    await sink.write([{"seq": 1}])  # the first batch is fsynced
    await sink.write([{"seq": 2}])  # small, no fsync due: from the loop
    await sink.write([{"seq": 3, "pad": "x" * 266}])  # past max_bytes: rotated
    await sink.write([{"seq": 4}])  # from the loop, into the new file
    await sink.write([{"seq": 5, "pad": "x" * (JsonlSink.INLINE_BYTES + 1)}])  # large
    assert on_threads == ["_append", "_append", "_append"]
    assert len(sizes_checked) == 5  # the file's size read once a batch, thread or not
    assert [record["seq"] for _, record in sink.lines() if record] == [1, 2, 3, 4, 5]
    assert len(sink.files()) == 3
    await sink.close()


@pytest.mark.parametrize(
    "table", [{"fsync_interval_ms": 0}, {"fail_closed": True, "fsync_interval_ms": 500}]
)
async def test_jsonl_fsyncs_every_batch_when_asked_or_fail_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: dict[str, Any]
) -> None:
    _, sink = parse_audit({"path": "access.jsonl", **table}, tmp_path)
    assert isinstance(sink, JsonlSink)
    fsyncs = _fsyncs(monkeypatch)
    await sink.open()
    for seq in range(5):
        await sink.write([{"seq": seq}])
    assert len(fsyncs) == 5
    await sink.close()


def test_fsync_interval_is_checked() -> None:
    with pytest.raises(ConfigError, match="fsync_interval_ms"):
        parse_audit({"fsync_interval_ms": -1}, Path("."))


async def test_bulk_access_alert(
    demo_systems: DemoSystems, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = {"audit.alerts.bulk_customers": 30, "audit.alerts.window_s": 600}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        with caplog.at_level(logging.WARNING, logger="c360.audit"):
            await gateway.query(PAGE, {"n": 20}, headers=gateway.as_role("service", subject="bob"))
            await gateway.query(PAGE, {"n": 40}, headers=gateway.as_role("service", subject="bob"))
            await gateway.query(PAGE, {"n": 40}, headers=gateway.as_role("service", subject="bob"))
        written = await records(gateway)
    alerts = [r for r in written if r["kind"] == "alert"]
    assert len(alerts) == 1  # once per window
    assert alerts[0]["alert"] == "bulk_access"
    assert alerts[0]["subject"] == "bob"
    assert alerts[0]["distinct_customers"] == 40
    lines = [r for r in caplog.records if r.getMessage() == "access pattern alert"]
    assert len(lines) == 1
    assert lines[0].subject == "bob"  # type: ignore[attr-defined]


async def test_access_log_query_is_for_security_and_is_itself_logged(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    query = """query($c: ID) { accessLog(customer: $c, first: 5) {
      edges { cursor node { subject roles outcome fields { customer field decision policy } } }
      pageInfo { hasNextPage endCursor } } }"""
    async with running_gateway(demo_systems, tmp_path) as gateway:
        page = await gateway.query(PAGE, {"n": 3})
        customer = page.data["customers"]["edges"][0]["node"]["id"]
        await gateway.query(PAGE, {"n": 3}, headers=gateway.as_role("marketing"))
        await gateway.gateway.access_log.flush()
        as_security = await gateway.query(query, {"c": customer}, gateway.as_role("security"))
        as_sales = await gateway.query(query, {"c": customer})
        written = await records(gateway)
    edges = as_security.data["accessLog"]["edges"]
    assert [edge["node"]["roles"] for edge in edges] == [["marketing"], ["sales"]]
    marketing_fields = {
        f["field"]: f["decision"] for f in edges[0]["node"]["fields"] if f["customer"] == customer
    }
    assert marketing_fields["nationalId"] == "deny"
    assert as_sales.data == {"accessLog": None}
    assert as_sales.errors[0]["extensions"] == {"code": "FORBIDDEN", "policy": "audit.read"}
    looked = [r for r in written if r.get("audit_query")]
    assert [r["subject"] for r in looked] == ["tester"]
    assert looked[0]["audit_query"] == {"customer": customer}
    refused = written[-1]  # the denied attempt is recorded too, without running the search
    assert (refused["subject"], refused["outcome"]) == ("alice", "partial")


@pytest.mark.postgres
async def test_the_postgresql_sink(
    demo_systems: DemoSystems, tmp_path: Path, postgres_dsn: str
) -> None:
    import uuid

    chain = "pg-test-" + uuid.uuid4().hex[:8]
    overrides = {"audit.sink": "postgresql", "audit.dsn": postgres_dsn, "audit.chain": chain}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        page = await gateway.query(PAGE, {"n": 4})
        customer = page.data["customers"]["edges"][1]["node"]["id"]
        for _ in range(3):
            await gateway.query(PAGE, {"n": 4}, headers=gateway.as_role("marketing"))
        await gateway.gateway.access_log.flush()
        found = await gateway.query(
            "query($c: ID) { accessLog(customer: $c, first: 2) {"
            " edges { node { chain seq roles } } pageInfo { hasNextPage endCursor } } }",
            {"c": customer},
            gateway.as_role("security"),
        )
        after = found.data["accessLog"]["pageInfo"]["endCursor"]
        more = await gateway.query(
            "query($c: ID, $a: String) {"
            " accessLog(customer: $c, first: 5, after: $a) { edges { node { chain seq } } } }",
            {"c": customer, "a": after},
            gateway.as_role("security"),
        )
    nodes = [edge["node"] for edge in found.data["accessLog"]["edges"]]
    assert [node["seq"] for node in nodes] == [4, 3]
    assert all(node["chain"] == chain for node in nodes)
    assert found.data["accessLog"]["pageInfo"]["hasNextPage"] is True
    # the shared table may hold older runs' chains for the same (deterministic) customer
    later = [edge["node"] for edge in more.data["accessLog"]["edges"]]
    assert [node["seq"] for node in later if node["chain"] == chain] == [2, 1]
    config = tmp_path / "pg.toml"
    data = gateway_config(demo_systems, tmp_path, overrides)
    config.write_text(to_toml(data), encoding="utf-8")
    code, out, err = await run_cli("audit", "verify", "--config", str(config))
    assert code == 0, err
    assert f"{chain}: " in out
    code, out, err = await run_cli(
        "audit", "search", "--config", str(config), "--customer", customer, "--json"
    )
    mine = [json.loads(line) for line in out.splitlines() if json.loads(line)["chain"] == chain]
    assert [r["seq"] for r in mine] == [4, 3, 2, 1]


async def test_kill_9_under_load_leaves_a_chain_that_verifies(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    config, data = write_config(demo_systems, tmp_path, {"audit.chain": "killed"})
    token = sales_token(data)

    async def start() -> tuple[asyncio.subprocess.Process, str]:
        return await start_serve(config)

    process, url = await start()
    stop = asyncio.Event()
    load = Load(url, token, orjson.dumps({"query": PAGE, "variables": {"n": 5}}))
    clients = [asyncio.create_task(load.client(stop)) for _ in range(8)]
    log_file = tmp_path / "access.jsonl"
    async with asyncio.timeout(30):
        # under load until the log holds a good number of records
        while not log_file.exists() or log_file.stat().st_size < 100_000:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    await process.wait()
    stop.set()
    await asyncio.gather(*clients)
    code, out, err = await run_cli("audit", "verify", "--config", str(config))
    assert code == 0, err
    assert "intact" in out
    restarted, url = await start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url + "/graphql",
                data=orjson.dumps({"query": PAGE, "variables": {"n": 1}}),
                headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            ) as response,
        ):
            assert response.status == 200
    finally:
        restarted.send_signal(signal.SIGTERM)
        await restarted.wait()
    code, out, err = await run_cli("audit", "verify", "--config", str(config))
    assert code == 0, err
    assert "killed: " in out


def test_bulk_alert_counts_distinct_customers_in_the_window_in_bounded_memory() -> None:
    from gateway.audit.alerts import AccessPatterns, AlertSettings

    patterns = AccessPatterns(AlertSettings(bulk_customers=150, window_s=60.0))
    page = {f"cus_{n:016d}" for n in range(100)}
    for second in range(1000):  # the same page, over and over: never more than 100
        assert patterns.observe("rep", page, 0, float(second)) == []
    assert len(patterns._subjects["rep"].last_read) == 100
    other = {f"cus_{n:016d}" for n in range(100, 160)}
    [alert] = patterns.observe("rep", other, 0, 1000.0)
    assert alert["alert"] == "bulk_access" and alert["distinct_customers"] == 160
    # 61 s later the first page has left the window; the second page alone is under 150.
    assert patterns.observe("rep", other, 0, 1061.0) == []
    assert len(patterns._subjects["rep"].last_read) == 60
