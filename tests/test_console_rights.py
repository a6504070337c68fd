"""The console's rights requests over HTTP: every subject report, erasure and restriction
is found in the access log with who asked, for which customer (by CUID, never an email or
phone) and its state (completed; open with the systems left for follow-up; a restriction
in force or lifted); for security and the privacy office only; the PostgreSQL read gives
the JSONL reference's answer."""

from __future__ import annotations

import base64
import html
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from sqlalchemy import select, text

from demo.people import DemoWorld, Person
from demo.systems import DemoSystems
from gateway.audit.sinks import RIGHTS_REQUEST, JsonlSink, PostgresSink
from gateway.console.jsonl_views import JsonlViews
from gateway.console.pg_views import PostgresViews
from gateway.console.report import REPORT as REPORT_QUERY
from gateway.console.report import render_html
from gateway.console.rights import rights_requests
from harness import RunningGateway, running_gateway

REPORT = """query($e: String, $c: ID) { subjectReport(email: $e, customer: $c) { customer } }"""
ERASE = """mutation($c: ID!) { subjectErase(customer: $c, confirm: true) { manual } }"""
RESTRICT = """mutation($c: ID!, $r: Boolean!) {
  subjectRestrict(customer: $c, restricted: $r) { restricted } }"""
REQUESTS = """query ConsoleRights($open: Boolean, $first: Int, $after: String) {
  rightsRequests(open: $open, first: $first, after: $after) {
    open total
    edges { cursor node { id at kind customer requester roles purpose requestId status
      erased failed manual unavailable } }
    pageInfo { hasNextPage endCursor } } }"""
PAGES = "query ConsoleSignIn { consolePages }"


@pytest.fixture(scope="module")
async def rights(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RunningGateway, DemoWorld]]:
    """Systems of their own: an erasure changes them."""
    work = tmp_path_factory.mktemp("console-rights")
    async with (
        DemoSystems(work, customers=60) as systems,
        running_gateway(systems, work / "gateway") as gateway,
    ):
        yield gateway, systems.world


def privacy(gateway: RunningGateway, purpose: str = "rights") -> dict[str, str]:
    return gateway.as_role("privacy", purpose, subject="dpo")


def cuid_of(gateway: RunningGateway, person: Person) -> str:
    return gateway.gateway.identity.by_record[("sales", str(person.sales_ids[0]))]


async def test_rights_requests_are_listed_with_their_state(
    rights: tuple[RunningGateway, DemoWorld],
) -> None:
    gateway, world = rights
    people = [p for p in world.persons if len(p.sales_ids) == 1 and p.requester_id]
    reported, erased, lifted, restricted = people[:4]
    ids = {p.index: cuid_of(gateway, p) for p in (reported, erased, lifted, restricted)}
    for query, variables in (
        (REPORT, {"e": reported.email}),  # by email: listed by CUID
        (ERASE, {"c": ids[erased.index]}),
        (RESTRICT, {"c": ids[lifted.index], "r": True}),
        (RESTRICT, {"c": ids[restricted.index], "r": True}),
        (RESTRICT, {"c": ids[lifted.index], "r": False}),
    ):
        reply = await gateway.query(query, variables, privacy(gateway))
        assert not reply.errors, reply.errors
    # Refused: not a rights request the log can list (no customer was named to it).
    await gateway.query(REPORT, {"e": reported.email}, gateway.as_role("sales"))
    await gateway.gateway.access_log.flush()

    security = gateway.as_role("security", subject="sam")
    every = await gateway.query(REQUESTS, {"first": 50}, security)
    assert not every.errors, every.errors
    first = await gateway.query(REQUESTS, {"first": 2}, privacy(gateway))
    rest = await gateway.query(
        REQUESTS,
        {"first": 50, "after": first.data["rightsRequests"]["pageInfo"]["endCursor"]},
        privacy(gateway, "audit"),  # the console's sign-in acts for audit
    )
    still_open = await gateway.query(REQUESTS, {"open": True}, security)
    pages = {
        role: (await gateway.query(PAGES, None, headers)).data
        for role, headers in (
            ("security", security),
            ("privacy", privacy(gateway)),
            ("steward", gateway.as_role("steward")),
            ("sales", gateway.as_role("sales")),
        )
    }
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    logged = [r for _, r in sink.lines() if r is not None]

    listing = every.data["rightsRequests"]
    nodes = [edge["node"] for edge in listing["edges"]]
    got = [(n["kind"], n["customer"], n["status"]) for n in nodes]
    assert got == [  # newest first
        ("LIFT", ids[lifted.index], "LIFTED"),
        ("RESTRICT", ids[restricted.index], "IN_FORCE"),
        ("RESTRICT", ids[lifted.index], "LIFTED"),
        ("ERASE", ids[erased.index], "OPEN"),
        ("REPORT", ids[reported.index], "COMPLETED"),
    ]
    assert (listing["open"], listing["total"]) == (1, 5)
    erasure = nodes[3]
    assert erasure["erased"] == ["sales"] and erasure["failed"] == []
    assert erasure["manual"] == ["marketing", "service"]  # named for manual follow-up
    assert all(n["requester"] == "dpo" and n["roles"] == ["privacy"] for n in nodes)
    assert all(n["purpose"] == "rights" and n["requestId"] for n in nodes)
    by_request = {r["request_id"]: r for r in logged}
    assert by_request[nodes[4]["requestId"]]["audit_query"]["view"] == "subject-report"

    paged = [e["node"]["id"] for e in first.data["rightsRequests"]["edges"]]
    paged += [e["node"]["id"] for e in rest.data["rightsRequests"]["edges"]]
    assert paged == [n["id"] for n in nodes]
    assert first.data["rightsRequests"]["pageInfo"]["hasNextPage"] is True
    assert [e["node"]["kind"] for e in still_open.data["rightsRequests"]["edges"]] == ["ERASE"]

    assert pages["security"] == {
        "consolePages": [
            "overview",
            "timeline",
            "footprint",
            "alerts",
            "integrity",
            "rights",
            "quality",
        ]
    }
    assert pages["privacy"] == {"consolePages": ["rights"]}
    assert pages["steward"] == {"consolePages": ["quality"]}
    assert pages["sales"] == {"consolePages": None}  # refused, and on the record as such
    refused = [r for r in logged if r["subject"] == "tester" and r["operation"] == "ConsoleSignIn"]
    assert refused and refused[-1]["outcome"] != "ok"
    # Each look at the list is itself on the record.
    looked = [r["audit_query"] for r in logged if (r.get("audit_query") or {}).get("view")]
    assert {"view": "rights-requests"} in looked and {
        "view": "rights-requests",
        "open": True,
    } in looked
    for reply in (every, first, rest, still_open):
        body = orjson.dumps(reply.body).decode()
        for person in (reported, erased, lifted, restricted):
            assert person.email not in body and person.phone not in body


async def test_only_security_and_the_privacy_office_see_them(
    rights: tuple[RunningGateway, DemoWorld],
) -> None:
    gateway, _ = rights
    for role in ("sales", "sales_manager", "service", "marketing", "steward"):
        reply = await gateway.query(REQUESTS, {"first": 5}, gateway.as_role(role))
        assert reply.data == {"rightsRequests": None}, role
        assert reply.errors[0]["extensions"] == {"code": "FORBIDDEN", "policy": "rights.requests"}
    # The privacy office acting for anything but rights or audit: no.
    other = await gateway.query(REQUESTS, {}, gateway.as_role("privacy", "marketing"))
    assert other.errors and other.data == {"rightsRequests": None}
    status, page = await gateway.get("/console")
    assert status == 200 and 'data-view="rights"' in page and 'data-view="quality"' in page


def test_a_restriction_is_in_force_until_a_later_lift() -> None:
    def record(seq: int, ts: str, **more: Any) -> dict[str, Any]:
        return {"chain": "c", "seq": seq, "ts": ts, "kind": "write", "outcome": "ok", **more}

    def restrict(customer: str, on: bool) -> dict[str, Any]:
        return {"mutation": "subjectRestrict", "customer": customer, "restricted": on}

    erase_failed = {
        "mutation": "subjectErase",
        "customer": "cus_b",
        "erased": [],
        "failed": ["sales"],
        "manual": [],
    }
    found = rights_requests(
        [
            record(1, "2026-01-01T00:00:00+00:00", writes=[restrict("cus_a", True)]),
            record(2, "2026-01-02T00:00:00+00:00", writes=[restrict("cus_a", False)]),
            record(3, "2026-01-03T00:00:00+00:00", writes=[restrict("cus_a", True)]),
            record(4, "2026-01-04T00:00:00+00:00", writes=[erase_failed], outcome="partial"),
            record(5, "2026-01-05T00:00:00+00:00", writes=[{"mutation": "updateCustomer"}]),
            # One request, two rights mutations: two entries, one record.
            record(
                6,
                "2026-01-06T00:00:00+00:00",
                writes=[restrict("cus_c", True), restrict("cus_d", True)],
                outcome="error",
            ),
        ]
    )
    assert [(r.id, r.kind, r.customer, r.status) for r in found] == [
        ("c:6#1", "restrict", "cus_d", "failed"),
        ("c:6", "restrict", "cus_c", "failed"),
        ("c:4", "erase", "cus_b", "open"),
        ("c:3", "restrict", "cus_a", "in_force"),
        ("c:2", "lift", "cus_a", "lifted"),
        ("c:1", "restrict", "cus_a", "lifted"),
    ]
    assert found[2].failed == ("sales",)


@pytest.mark.postgres
async def test_postgresql_lists_what_the_jsonl_log_lists(
    rights: tuple[RunningGateway, DemoWorld], fresh_postgres: str
) -> None:
    gateway, _ = rights
    await gateway.gateway.access_log.flush()
    reference = gateway.gateway.config.audit_sink
    assert isinstance(reference, JsonlSink)
    logged = [r for _, r in reference.lines() if r is not None]
    sink = PostgresSink(fresh_postgres)
    await sink.open()
    try:
        await sink.write(logged)
        mine = rights_requests(await PostgresViews(sink).rights_records())
        theirs = rights_requests(await JsonlViews(reference).rights_records())
        async with sink.engine.connect() as connection:
            # The list's condition is the partial index's own: the planner can use it.
            await connection.execute(text("SET enable_seqscan = off"))
            statement = select(sink.table.c.record).where(RIGHTS_REQUEST)
            explained = await connection.execute(
                text("EXPLAIN " + str(statement.compile(compile_kwargs={"literal_binds": True})))
            )
            plan = "\n".join(row[0] for row in explained)
    finally:
        await sink.close()
    assert theirs and mine == theirs
    assert "ix_c360_access_rights" in plan, plan


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def test_a_cursor_the_api_did_not_issue_is_bad_input(
    rights: tuple[RunningGateway, DemoWorld],
) -> None:
    """Whatever `after` holds, the answer is BAD_USER_INPUT naming it, never an internal
    error: the cursor is compared with the listed requests' places only once it is one
    this API issues (an aware timestamp, integers a log's seq can be, its own encoding)."""
    gateway, world = rights
    await gateway.query(REPORT, {"e": world.persons[-1].email}, privacy(gateway))
    await gateway.gateway.access_log.flush()
    security = gateway.as_role("security", subject="sam")
    issued = await gateway.query(REQUESTS, {"first": 1}, security)
    cursor = issued.data["rightsRequests"]["pageInfo"]["endCursor"]
    ts, chain, seq, n = (
        base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().rsplit("|", 3)
    )
    crafted = {
        "not base64": "%%%not-base64%%%",
        "not ascii": "é",
        "not text": base64.urlsafe_b64encode(b"\xff\xfe|\x00").decode(),
        "too few parts": _b64(f"{ts}|{chain}|{seq}"),
        "no parts": _b64(""),
        "naive time": _b64(f"2024-02-01T00:00:00|{chain}|1|0"),
        "naive time of the log's": _b64(f"{ts[:19]}|{chain}|{seq}|{n}"),
        "not a time": _b64(f"yesterday|{chain}|1|0"),
        "year out of range": _b64(f"99999-01-01T00:00:00+00:00|{chain}|1|0"),
        "seq not an integer": _b64(f"{ts}|{chain}|one|0"),
        "n not an integer": _b64(f"{ts}|{chain}|{seq}|1.5"),
        "huge seq": _b64(f"{ts}|{chain}|{10**100}|0"),
        "too many digits": _b64(f"{ts}|{chain}|{'9' * 5000}|0"),
        "negative seq": _b64(f"{ts}|{chain}|-1|0"),
        "spaced seq": _b64(f"{ts}|{chain}| {seq}|{n}"),
        "padded": cursor + "=" * (-len(cursor) % 4 or 4),
    }
    replies = {
        name: await gateway.query(REQUESTS, {"first": 5, "after": after}, security)
        for name, after in crafted.items()
    }
    accepted = await gateway.query(REQUESTS, {"first": 5, "after": cursor}, security)
    assert {
        name: (reply.data, reply.errors[0]["extensions"]) for name, reply in replies.items()
    } == {
        name: ({"rightsRequests": None}, {"code": "BAD_USER_INPUT", "argument": "after"})
        for name in crafted
    }
    assert not accepted.errors and accepted.data["rightsRequests"]["total"] >= 1


def _shell(page: str, element: str) -> Any:
    """A JSON block the console's shell carries for its script (`<script id=…>`)."""
    start = page.index(f'<script type="application/json" id="{element}">')
    start = page.index(">", start) + 1
    return orjson.loads(html.unescape(page[start : page.index("</script>", start)]))


async def test_the_console_runs_a_persons_report_as_the_command_line_does(
    rights: tuple[RunningGateway, DemoWorld],
) -> None:
    """The shell carries the command line's query and the printable page's labels in both
    languages; sent as the console sends it, the report is the person's data unmasked, and
    the rights list shows the request afterwards; security is refused."""
    gateway, world = rights
    status, page = await gateway.get("/console")
    assert status == 200
    shell = _shell(page, "c360-report")
    assert shell == {"query": REPORT_QUERY, "languages": ["zh-CN", "en"]}
    labels = _shell(page, "c360-labels")
    report_keys = {k for k in labels["en"] if k.startswith(("report.", "lookup."))}
    assert report_keys == {k for k in labels["zh-CN"] if k.startswith(("report.", "lookup."))}
    assert labels["en"]["report.title"] == "What we hold about you"
    assert labels["zh-CN"]["report.title"] == "我们持有的您的个人信息"

    person = [p for p in world.persons if len(p.sales_ids) == 1 and p.requester_id][-2]
    cuid = cuid_of(gateway, person)
    console = {"x-purpose": "rights", "x-client-name": "c360-console"}
    reply = await gateway.query(
        shell["query"], {"email": person.email}, {**privacy(gateway), **console}
    )
    assert not reply.errors, reply.errors
    report = reply.data["subjectReport"]
    assert report["customer"] == cuid
    held = {v["value"] for record in report["records"] for v in record["values"]}
    assert person.national_id in held  # their own data, unmasked

    # The command line's page from the same answer: its labels (but the lines for no
    # records and for unreachable systems, which this report has no call for), both languages.
    printed = render_html(report)
    for lang in ("zh-CN", "en"):
        for key in report_keys - {"report.unavailable", "report.none"}:
            if key.startswith("report."):
                assert labels[lang][key] in printed, (lang, key)

    await gateway.gateway.access_log.flush()
    listing = await gateway.query(REQUESTS, {"first": 50}, privacy(gateway))
    [listed] = [
        e["node"]
        for e in listing.data["rightsRequests"]["edges"]
        if e["node"]["requestId"] == reply.headers["x-request-id"]
    ]
    assert (listed["kind"], listed["customer"], listed["status"]) == ("REPORT", cuid, "COMPLETED")
    assert person.email not in orjson.dumps(listing.body).decode()

    # Security acts for audit: the console's request for `rights` is refused, and so is
    # the report itself when asked for audit (the policy's refusal).
    security = gateway.as_role("security", subject="sam")
    for extra, code in ((console, 403), ({"x-client-name": "c360-console"}, 200)):
        refused = await gateway.query(shell["query"], {"customer": cuid}, {**security, **extra})
        assert refused.status == code and refused.codes() == ["FORBIDDEN"], refused.body
        assert not (refused.data or {}).get("subjectReport")
    policy_refusal = refused.errors[0]["extensions"]
    assert policy_refusal == {"code": "FORBIDDEN", "policy": "rights.report"}
