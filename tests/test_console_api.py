"""The security console's GraphQL API: footprint, overview, alerts and their
acknowledgement, integrity, export records; security only, every use recorded, nothing
raw in what is recorded; the PostgreSQL read models give the JSONL reference's answers."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from demo.console_seed import SeedRefused, cuid, seed_log
from demo.people import DemoWorld
from demo.systems import DemoSystems
from gateway.audit.sinks import AccessQuery, JsonlSink, PostgresSink
from gateway.console.jsonl_views import JsonlViews
from gateway.console.pg_views import PostgresViews
from harness import RunningGateway, running_gateway
from resolvers.audit_views import AlertQuery, Window

PAGE = """query Page($n: Int) { customers(first: $n) { edges { node {
  id name email phone nationalId } } } }"""
FOOTPRINT = """query($s: String!) { accessFootprint(subject: $s, timeZone: "Asia/Shanghai") {
  requests customers deniedRequests days { day customers requests }
  decisions { field decision count }
  customersSeen(first: 2) {
    edges { node { customer accesses } } pageInfo { hasNextPage endCursor } } } }"""
OVERVIEW = """{ accessOverview(timeZone: "Europe/Berlin") {
  since until byRole { hour key count } byDecision { hour key count }
  topSubjects { subject customers requests } fields { field allow mask deny } } }"""
ALERTS = """query($ack: Boolean) { accessAlerts(acknowledged: $ack) { edges {
  node { id subject alert { type distinctCustomers threshold } }
  acknowledgement { id alertId by resolution } } } }"""
ACK = """mutation($id: ID!) { acknowledgeAccessAlert(id: $id, resolution: ESCALATED) {
  id alertId by resolution } }"""
INTEGRITY = """query($r: Boolean!) { accessLogIntegrity(refresh: $r) {
  checking intact records chains { chain lastSeq } breaks { chain seq problem } } }"""
EXPORT = """mutation($f: ConsoleExportFilters) {
  recordConsoleExport(view: TIMELINE, rows: 7, filters: $f) { requestId view rows } }"""
EXPORT_TABLE = """mutation($v: ConsoleView!, $t: ConsoleTable, $f: ConsoleExportFilters) {
  recordConsoleExport(view: $v, table: $t, rows: 2, filters: $f) { requestId } }"""
# What the console's overview asks in one request: the charts and the chains' integrity.
CONSOLE_OVERVIEW = """{ accessOverview { byRole { key count } }
  accessLogIntegrity { checking intact records chains { chain lastSeq } } }"""


async def records(gateway: RunningGateway) -> list[dict[str, Any]]:
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    return [record for _, record in sink.lines() if record is not None]


async def settled_integrity(
    gateway: RunningGateway, headers: dict[str, str], refresh: bool
) -> dict[str, Any]:
    """The integrity report once the check running (or started by `refresh`) finished:
    the gateway answers at once, `checking` while a check runs, and is asked again."""
    reply = await gateway.query(INTEGRITY, {"r": refresh}, headers)
    report: dict[str, Any] = reply.data["accessLogIntegrity"]
    async with asyncio.timeout(30):
        while report["checking"]:
            await asyncio.sleep(0.05)
            reply = await gateway.query(INTEGRITY, {"r": False}, headers)
            report = reply.data["accessLogIntegrity"]
    return report


async def test_console_queries_and_actions_are_for_security_only(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    queries = [
        (FOOTPRINT, {"s": "alice"}, "accessFootprint", "audit.read"),
        (OVERVIEW, {}, "accessOverview", "audit.read"),
        (ALERTS, {}, "accessAlerts", "audit.read"),
        (INTEGRITY, {"r": False}, "accessLogIntegrity", "audit.read"),
        (ACK, {"id": "x:1"}, "acknowledgeAccessAlert", "audit.ack"),
        (EXPORT, {}, "recordConsoleExport", "audit.read"),
    ]
    async with running_gateway(demo_systems, tmp_path) as gateway:
        for role in ("sales", "service", "marketing"):
            for query, variables, root, policy in queries:
                reply = await gateway.query(query, variables, gateway.as_role(role))
                assert reply.data == {root: None}, (role, root)
                assert reply.errors[0]["extensions"] == {"code": "FORBIDDEN", "policy": policy}
        written = await records(gateway)
    assert len(written) == 18  # each refusal is recorded, and nothing else was written
    assert all(r["kind"] == "access" and not r.get("audit_query") for r in written)


async def test_footprint_overview_and_timeline_filters(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        page = await gateway.query(PAGE, {"n": 5}, gateway.as_role("sales", subject="alice"))
        ids = [edge["node"]["id"] for edge in page.data["customers"]["edges"]]
        await gateway.query(PAGE, {"n": 3}, gateway.as_role("marketing", subject="carol"))
        await gateway.gateway.access_log.flush()
        security = gateway.as_role("security", subject="sam")
        footprint = (await gateway.query(FOOTPRINT, {"s": "carol"}, security)).data
        more = await gateway.query(
            """query($s: String!, $a: String) { accessFootprint(subject: $s) {
              customersSeen(first: 2, after: $a) { edges { node { customer } } } } }""",
            {
                "s": "carol",
                "a": footprint["accessFootprint"]["customersSeen"]["pageInfo"]["endCursor"],
            },
            security,
        )
        overview = (await gateway.query(OVERVIEW, None, security)).data["accessOverview"]
        denied = await gateway.query(
            """query($c: ID!) { accessLog(customer: $c, field: "nationalId", decision: "deny") {
              edges { node { subject fields(customer: $c) { field decision policy } } } } }""",
            {"c": ids[0]},
            security,
        )
        masked = await gateway.query(
            """query($c: ID!) { accessLog(customer: $c, field: "nationalId", decision: "mask") {
              edges { node { subject } } } }""",
            {"c": ids[0]},
            security,
        )
        written = await records(gateway)
        carol = gateway.gateway.masks["hash"]("carol")  # a searched subject's pseudonym
    fp = footprint["accessFootprint"]
    assert (fp["requests"], fp["customers"], fp["deniedRequests"]) == (1, 3, 1)
    assert sum(day["customers"] for day in fp["days"]) == 3
    assert {"field": "nationalId", "decision": "deny", "count": 3} in fp["decisions"]
    assert {"field": "phone", "decision": "mask", "count": 3} in fp["decisions"]
    first_page = [e["node"]["customer"] for e in fp["customersSeen"]["edges"]]
    rest = [e["node"]["customer"] for e in more.data["accessFootprint"]["customersSeen"]["edges"]]
    assert sorted(first_page + rest) == sorted(ids[:3])
    roles = {entry["key"]: entry["count"] for entry in overview["byRole"]}
    assert roles["sales"] == 1 and roles["marketing"] == 1
    decisions = {entry["key"] for entry in overview["byDecision"]}
    assert decisions == {"allow", "mask", "deny"}
    top = {entry["subject"]: entry["customers"] for entry in overview["topSubjects"]}
    assert top["alice"] == 5 and top["carol"] == 3
    national = next(f for f in overview["fields"] if f["field"] == "nationalId")
    assert (national["mask"], national["deny"]) == (5, 3)
    [hit] = denied.data["accessLog"]["edges"]
    assert hit["node"]["subject"] == "carol"
    seen = {f["field"]: (f["decision"], f["policy"]) for f in hit["node"]["fields"]}
    assert set(seen) == {"name", "email", "phone", "nationalId"}  # this customer's only
    assert seen["nationalId"] == ("deny", "customer.nationalId")
    assert seen["phone"] == ("mask", "customer.phone")
    assert [e["node"]["subject"] for e in masked.data["accessLog"]["edges"]] == ["alice"]
    looked = [r["audit_query"] for r in written if r.get("audit_query")]
    assert looked[0]["view"] == "footprint" and looked[0]["subject"] == carol
    since, until = (dt.datetime.fromisoformat(looked[0][key]) for key in ("since", "until"))
    # The whole range, not only its start (in whole hours: a week, and the hour begun).
    assert until - since in (dt.timedelta(days=7), dt.timedelta(days=7, hours=1))
    assert looked[2]["view"] == "overview"
    assert looked[3] == {"customer": ids[0], "field": "nationalId", "decision": "deny"}


async def test_an_alert_is_acknowledged_once_and_the_acknowledgement_is_recorded(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    overrides = {"audit.alerts.bulk_customers": 10}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        await gateway.query(PAGE, {"n": 15}, gateway.as_role("service", subject="bob"))
        await gateway.gateway.access_log.flush()
        security = gateway.as_role("security", subject="sam")
        open_alerts = (await gateway.query(ALERTS, {"ack": False}, security)).data
        [edge] = open_alerts["accessAlerts"]["edges"]
        alert_id = edge["node"]["id"]
        first = await gateway.query(ACK, {"id": alert_id}, security)
        again = await gateway.query(ACK, {"id": alert_id}, gateway.as_role("security", subject="x"))
        wrong = await gateway.query(ACK, {"id": "nowhere:99"}, security)
        still_open = (await gateway.query(ALERTS, {"ack": False}, security)).data
        every = (await gateway.query(ALERTS, {"ack": None}, security)).data
        before_check = len(await records(gateway))
        report = await settled_integrity(gateway, security, refresh=True)
        written = await records(gateway)
    assert edge["node"]["subject"] == "bob"
    assert edge["node"]["alert"] == {
        "type": "bulk_access",
        "distinctCustomers": 15,
        "threshold": 10,
    }
    assert edge["acknowledgement"] is None
    ack = first.data["acknowledgeAccessAlert"]
    assert (ack["alertId"], ack["by"], ack["resolution"]) == (alert_id, "sam", "escalated")
    assert again.data["acknowledgeAccessAlert"] == ack  # the first acknowledgement stands
    assert wrong.codes() == ["BAD_USER_INPUT"]
    assert still_open["accessAlerts"]["edges"] == []
    assert every["accessAlerts"]["edges"][0]["acknowledgement"] == ack
    [ack_record] = [r for r in written if r["kind"] == "ack"]
    assert ack_record["alert_id"] == alert_id and ack_record["subject"] == "sam"
    assert f"{ack_record['chain']}:{ack_record['seq']}" == ack["id"]
    mutation = next(r for r in written if (r.get("audit_query") or {}).get("view") == "ack")
    assert mutation["operation_type"] == "mutation"
    assert report["intact"] is True and report["breaks"] == []
    assert report["records"] >= before_check  # every record up to the check, the ack's too


async def test_integrity_is_what_audit_verify_says(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path, {"audit.chain": "ours"}) as gateway:
        for n in (1, 2, 3):
            await gateway.query(PAGE, {"n": n})
        await gateway.gateway.access_log.flush()
        security = gateway.as_role("security")
        fine = await settled_integrity(gateway, security, refresh=True)
        await gateway.gateway.access_log.flush()  # nothing written while the file is edited
        sink = gateway.gateway.config.audit_sink
        assert isinstance(sink, JsonlSink)
        lines = sink.path.read_text().splitlines(keepends=True)
        sink.path.write_text(lines[0] + lines[1].replace('"ok"', '"error"') + "".join(lines[2:]))
        report = await settled_integrity(gateway, security, refresh=True)
    # The check's own requests may land in the log while it reads: all of them, in order.
    assert fine["intact"] is True and fine["records"] >= 3
    assert fine["chains"] == [{"chain": "ours", "lastSeq": fine["records"]}]
    assert report["intact"] is False
    assert report["breaks"] == [
        {"chain": "ours", "seq": 2, "problem": "content does not match its hash"}
    ]


async def test_an_export_is_recorded_with_its_filters_and_never_a_raw_value(
    demo_systems: DemoSystems, tmp_path: Path, demo_world: DemoWorld
) -> None:
    person = next(p for p in demo_world.persons if p.sales_ids)
    customer = cuid(1)
    async with running_gateway(demo_systems, tmp_path) as gateway:
        security = gateway.as_role("security")
        ok = await gateway.query(
            EXPORT,
            {"f": {"customer": customer, "field": "nationalId", "decision": "deny"}},
            security,
        )
        by_email = await gateway.query(EXPORT, {"f": {"customer": person.email}}, security)
        odd_field = await gateway.query(EXPORT, {"f": {"field": person.email}}, security)
        no_such_field = await gateway.query(EXPORT, {"f": {"field": "notes"}}, security)
        tables = {
            name: await gateway.query(EXPORT_TABLE, variables, security)
            for name, variables in {
                "open alerts": {"v": "ALERTS", "t": "ALERTS", "f": {"acknowledged": False}},
                "all alerts": {"v": "ALERTS", "t": "ALERTS", "f": {"acknowledged": None}},
                "top subjects": {
                    "v": "OVERVIEW",
                    "t": "TOP_SUBJECTS",
                    "f": {"since": "2026-01-01T00:00:00+00:00"},
                },
                "field shares": {"v": "OVERVIEW", "t": "FIELD_SHARES"},
                "decisions": {"v": "FOOTPRINT", "t": "FOOTPRINT_DECISIONS", "f": {"subject": "x"}},
                "wrong view": {"v": "OVERVIEW", "t": "ALERTS"},
            }.items()
        }
        written = await records(gateway)
    receipt = ok.data["recordConsoleExport"]
    assert (receipt["view"], receipt["rows"]) == ("TIMELINE", 7)
    [recorded] = [r for r in written if r["request_id"] == receipt["requestId"]]
    assert recorded["audit_query"] == {
        "view": "export",
        "export": "timeline",
        "rows": 7,
        "customer": customer,
        "field": "nationalId",
        "decision": "deny",
    }
    assert by_email.codes() == ["BAD_USER_INPUT"]
    assert odd_field.codes() == ["BAD_USER_INPUT"]
    assert no_such_field.codes() == ["BAD_USER_INPUT"]  # a Customer field, not any name
    exported = {
        name: next(
            r["audit_query"]
            for r in written
            if r["request_id"] == reply.data["recordConsoleExport"]["requestId"]
        )
        for name, reply in tables.items()
        if name != "wrong view"
    }
    base = {"view": "export", "rows": 2}
    assert exported["open alerts"] == {
        **base,
        "export": "alerts",
        "table": "alerts",
        "state": "open",
    }
    assert exported["all alerts"] == {**base, "export": "alerts", "table": "alerts", "state": "all"}
    assert exported["top subjects"] == {
        **base,
        "export": "overview",
        "table": "top_subjects",
        "since": "2026-01-01T00:00:00+00:00",
    }
    assert exported["field shares"] == {**base, "export": "overview", "table": "field_shares"}
    assert exported["decisions"]["table"] == "footprint_decisions"
    assert tables["wrong view"].errors[0]["extensions"] == {
        "code": "BAD_USER_INPUT",
        "argument": "table",
    }
    log_text = "\n".join(path.read_text() for path in _files(gateway))
    assert person.email not in log_text


async def test_a_customer_or_field_argument_is_never_a_raw_value(
    demo_systems: DemoSystems, tmp_path: Path, demo_world: DemoWorld
) -> None:
    """`accessLog` copies what it looked for into its own access record: a customer is a
    CUID and a field one of Customer's, or the request is refused before it is noted."""
    person = next(p for p in demo_world.persons if p.sales_ids)
    timeline = """query($c: ID, $f: String) { accessLog(customer: $c, field: $f) {
      edges { node { id } } } }"""
    nested = """query($c: ID) { accessLog(first: 1) { edges { node { fields(customer: $c) {
      field } } } } }"""
    seen_after = """{ accessFootprint(subject: "alice") { customersSeen(after: "%s") {
      edges { node { customer } } } } }"""
    forged = base64.urlsafe_b64encode(f"2026-01-01T00:00:00+00:00|{person.email}".encode())
    async with running_gateway(demo_systems, tmp_path) as gateway:
        await gateway.query(PAGE, {"n": 1}, gateway.as_role("sales", subject="alice"))
        await gateway.gateway.access_log.flush()
        security = gateway.as_role("security", subject="sam")
        replies = {
            "customer": await gateway.query(timeline, {"c": person.email}, security),
            "name": await gateway.query(timeline, {"c": person.name}, security),
            "field": await gateway.query(timeline, {"f": person.email}, security),
            "unknown field": await gateway.query(timeline, {"f": "notes"}, security),
            "nested": await gateway.query(nested, {"c": person.email}, security),
            "cursor": await gateway.query(seen_after % forged.decode(), None, security),
        }
        fine = await gateway.query(timeline, {"c": cuid(1), "f": "nationalId"}, security)
        written = await records(gateway)
    arguments = {name: reply.errors[0]["extensions"] for name, reply in replies.items()}
    assert arguments == {
        "customer": {"code": "BAD_USER_INPUT", "argument": "customer"},
        "name": {"code": "BAD_USER_INPUT", "argument": "customer"},
        "field": {"code": "BAD_USER_INPUT", "argument": "field"},
        "unknown field": {"code": "BAD_USER_INPUT", "argument": "field"},
        "nested": {"code": "BAD_USER_INPUT", "argument": "customer"},
        "cursor": {"code": "BAD_USER_INPUT", "argument": "after"},
    }
    assert fine.errors == []
    looked = [r["audit_query"] for r in written if r.get("audit_query")]
    assert {"customer": cuid(1), "field": "nationalId"} in looked
    log_text = "\n".join(path.read_text() for path in _files(gateway))
    assert person.email not in log_text and person.name not in log_text


async def test_an_overview_answers_at_once_while_the_integrity_check_runs(
    demo_systems: DemoSystems, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overview asks for the chains' integrity, and answers within its own time
    however large the log: with the last report and `checking`, never waiting."""
    from gateway.audit.chain import verify
    from gateway.console import integrity

    gate = asyncio.Event()
    gate.set()
    real_check = integrity.verify_sink

    async def gated_check(sink: Any, *checkpoint: Any) -> Any:
        await gate.wait()
        return await real_check(sink, *checkpoint)

    monkeypatch.setattr(integrity, "verify_sink", gated_check)
    async with running_gateway(demo_systems, tmp_path, {"audit.chain": "ours"}) as gateway:
        for n in (1, 2, 3):
            await gateway.query(PAGE, {"n": n})
        await gateway.gateway.access_log.flush()
        security = gateway.as_role("security")
        # A check of a few records is done within milliseconds: still not waited for.
        first = (await gateway.query(CONSOLE_OVERVIEW, None, security)).data
        done = await settled_integrity(gateway, security, refresh=False)
        gate.clear()  # the next check runs until the gate opens
        started = (await gateway.query(INTEGRITY, {"r": True}, security)).data
        during = (await gateway.query(CONSOLE_OVERVIEW, None, security)).data
        await gateway.gateway.access_log.flush()  # the requests since are in the next check
        gate.set()
        after = await settled_integrity(gateway, security, refresh=False)
        sink = gateway.gateway.config.audit_sink
        assert isinstance(sink, JsonlSink)
        lines = list(sink.lines())
    assert first["accessOverview"]["byRole"]
    assert first["accessLogIntegrity"] == {
        "checking": True,
        "intact": None,
        "records": 0,
        "chains": [],
    }
    assert started["accessLogIntegrity"]["checking"] is True
    assert during["accessOverview"]["byRole"]
    last = {key: done[key] for key in ("intact", "records", "chains")}
    assert during["accessLogIntegrity"] == {"checking": True, **last}
    assert after["records"] > done["records"]
    # What `c360 audit verify` says of the same records.
    for report in (done, after):
        verified = verify(lines[: report["records"]])
        assert verified.intact is report["intact"] is True
        assert verified.records == report["records"]
        assert report["chains"] == [
            {"chain": name, "lastSeq": seq} for name, seq in sorted(verified.chains.items())
        ]


def _files(gateway: RunningGateway) -> list[Path]:
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    return sink.files()


async def test_seeding_refuses_a_real_log_and_writes_a_chain_that_verifies(
    tmp_path: Path,
) -> None:
    from gateway.audit.chain import verify

    real = JsonlSink(tmp_path / "real.jsonl")
    await real.write([{"chain": "host-1", "seq": 1, "ts": "2026-01-01T00:00:00Z"}])
    with pytest.raises(SeedRefused, match="host-1"):
        await seed_log(real, 10)
    sink = JsonlSink(tmp_path / "seed.jsonl")
    report = await seed_log(sink, 3000, days=2)
    again = await seed_log(sink, 500, days=1)  # continues the chain
    assert (report.first_seq, again.first_seq) == (1, report.last_seq + 1)
    result = verify(list(sink.lines()))
    assert result.intact and result.chains == {"seed-1": again.last_seq}
    kinds = {r["kind"] for _, r in sink.lines() if r is not None}
    assert {"access", "alert"} <= kinds <= {"access", "alert", "ack"}
    with pytest.raises(SeedRefused, match="seed-"):
        await seed_log(sink, 10, chain="host-1")


@pytest.mark.postgres
async def test_postgresql_read_models_answer_as_the_log_does(
    tmp_path: Path, fresh_postgres: str
) -> None:
    reference = JsonlSink(tmp_path / "seed.jsonl")
    await seed_log(reference, 4000, days=3)
    logged = [record for _, record in reference.lines() if record is not None]
    sink = PostgresSink(fresh_postgres)
    await sink.open()
    try:
        for start in range(0, len(logged), 700):
            await sink.write(logged[start : start + 700])
        await sink.write(logged[:1400])  # a replay (spill) must not count twice
        jsonl, pg = JsonlViews(reference), PostgresViews(sink)
        end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        midnight = end.replace(hour=0)
        minutes = dt.timedelta(minutes=1)
        windows = (  # up to now, and in the past
            Window(end - dt.timedelta(hours=24), end + dt.timedelta(hours=1), "UTC"),
            Window(end - dt.timedelta(days=3), end + dt.timedelta(hours=1), "Asia/Kolkata"),
            Window(end - dt.timedelta(days=2), end - dt.timedelta(hours=20), "Europe/Berlin"),
            # The reach bitmaps' whole UTC days and whole hours, with the minutes at either
            # end from the customer rows; exactly one whole day; within one hour.
            Window(end - dt.timedelta(days=3), end - dt.timedelta(hours=26), "UTC"),
            Window(end - dt.timedelta(days=3) + 17 * minutes, end - 7 * minutes, "UTC"),
            Window(midnight - dt.timedelta(days=2), midnight - dt.timedelta(days=1), "UTC"),
            Window(
                end - dt.timedelta(hours=30) + 10 * minutes,
                end - dt.timedelta(hours=30) + 40 * minutes,
                "UTC",
            ),
        )
        # A log written before the read models (or before one was added): rebuilt whole,
        # they answer as the models written record by record did.
        written = [await pg.overview(window, 10) for window in windows]
        assert await sink.rebuild_read_models(batch=900) == len(logged)
        assert [await pg.overview(window, 10) for window in windows] == written
        for window in windows:
            mine, theirs = await pg.overview(window, 10), await jsonl.overview(window, 10)
            assert mine == theirs, window
            assert mine.top_subjects, window  # a window the seed has traffic in
            for subject in ("rep-001", "agent-003", "mkt-002", "batch-001"):
                assert await pg.footprint(subject, window) == await jsonl.footprint(subject, window)
                first = await jsonl.footprint_customers(subject, window, 7, None)
                assert await pg.footprint_customers(subject, window, 7, None) == first
                if not first:
                    continue
                after = (first[-1].last_seen.isoformat(), str(first[-1].customer))
                assert await pg.footprint_customers(
                    subject, window, 7, after
                ) == await jsonl.footprint_customers(subject, window, 7, after)
        for acknowledged in (None, True, False):
            query = AlertQuery(acknowledged=acknowledged, first=20)
            assert await pg.alerts(query) == await jsonl.alerts(query)
        for query in (
            AccessQuery(customer=cuid(0), first=30),
            AccessQuery(customer=cuid(0), field="email", first=30),
            AccessQuery(customer=cuid(2), decision="mask", first=30),
            AccessQuery(subject="mkt-001", decision="deny", first=30),
            AccessQuery(field="nationalId", decision="deny", first=30),
            AccessQuery(customer=cuid(3), first=3, after=("2999-01-01T00:00:00Z", "z", 1)),
        ):
            found = await sink.search(query)
            assert found == await reference.search(query), query
        alert = next(r for r in logged if r["kind"] == "alert")
        assert await pg.find(alert["chain"], alert["seq"]) == alert
    finally:
        await sink.close()


@pytest.mark.postgres
async def test_integrity_of_a_postgresql_log_is_checked_in_the_background(
    demo_systems: DemoSystems, tmp_path: Path, fresh_postgres: str
) -> None:
    overrides = {"audit.sink": "postgresql", "audit.dsn": fresh_postgres, "audit.chain": "pg"}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        for n in (1, 2):
            await gateway.query(PAGE, {"n": n})
        await gateway.gateway.access_log.flush()
        security = gateway.as_role("security")
        first = (await gateway.query(INTEGRITY, {"r": True}, security)).data
        async with asyncio.timeout(30):
            while True:
                report = (await gateway.query(INTEGRITY, {"r": False}, security)).data
                if not report["accessLogIntegrity"]["checking"]:
                    break
                await asyncio.sleep(0.2)
    assert first["accessLogIntegrity"]["checking"] is True  # a process is being started
    assert report["accessLogIntegrity"]["intact"] is True
    [chain] = report["accessLogIntegrity"]["chains"]
    assert chain["chain"] == "pg" and chain["lastSeq"] >= 3  # and the console's own requests
