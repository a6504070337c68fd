"""Connectors that write, and SourceHub.write, against the real demo systems (the sales DB
on SQLite and on the real PostgreSQL) and a small stub for the statuses the demo never
answers. Each test checks the system's own state afterwards, read back through `fetch`.

These systems are this module's own (writes change them), not the session's shared ones.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from connectors.base import (
    ConnectorConfigError,
    NoSuchWrite,
    SourceUnavailable,
    Writable,
    WriteConflict,
    WriteRefused,
    WriteResult,
    WriteSpec,
    WriteValueError,
)
from connectors.registry import build_connector
from demo.marketing import CHANNELS
from demo.sales_db import seed_sales_db
from demo.systems import DemoSystems, unused_port
from gateway.app import connector_settings
from gateway.cache import RecordStore, parse_cache_settings
from gateway.demo import demo_config
from gateway.metrics import Metrics
from gateway.resilience import ResilienceSettings
from gateway.sources import SourceHub
from harness import SourceAdmin, own_database

PATCH_REQUESTER = "PATCH /api/v2/requesters/{id}"
INJECTION = "x'); DROP TABLE crm_customers; --"
# A way to read the requester and the follow-ups back (the demo declaration needs neither).
REQUESTER_ENTITY = {
    "key_field": "id",
    "single": {"path": "/api/v2/requesters/{key}", "items": "requester"},
}
FOLLOWUPS_ENTITY = {
    "key_field": "customer_id",
    "key_type": "int",
    "many": True,
    "query": "SELECT id, customer_id, note, due_on, created_by FROM crm_followups "
    "WHERE customer_id IN :keys ORDER BY id",
}


# --- the systems ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def systems(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoSystems]:
    async with DemoSystems(tmp_path_factory.mktemp("writes"), customers=60) as running:
        yield running


@pytest.fixture
async def admin(
    systems: DemoSystems, demo_http: aiohttp.ClientSession
) -> AsyncIterator[SourceAdmin]:
    """Counts and faults of this module's HTTP systems, reset before and after each test."""
    admin = SourceAdmin(systems, demo_http)
    await admin.reset()
    yield admin
    await admin.reset()


@pytest.fixture(scope="module")
async def postgres_sales(postgres_dsn: str, systems: DemoSystems) -> AsyncIterator[str]:
    """The same sales world in a PostgreSQL database of its own (other tests reseed the
    shared one), dropped afterwards."""
    async with own_database(postgres_dsn, "c360_writes") as dsn:
        await seed_sales_db(dsn, systems.world)
        yield dsn


def settings_of(systems: DemoSystems, source: str, **overrides: Any) -> dict[str, Any]:
    """The source's table as `c360 demo` configures it (gateway/demo.toml)."""
    settings = connector_settings(demo_config(systems.endpoints, port=0)["sources"][source])
    return {**settings, **overrides}


def sales_settings(systems: DemoSystems, dsn: str | None = None) -> dict[str, Any]:
    settings = settings_of(systems, "sales")
    entities = {**settings["entities"], "followups": FOLLOWUPS_ENTITY}
    return {**settings, "entities": entities, **({"dsn": dsn} if dsn else {})}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sales_dsn(request: pytest.FixtureRequest) -> str | None:
    """None: the module's SQLite sales database; else its PostgreSQL twin's DSN."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_sales"))
    return None


@pytest.fixture
async def sales(sales_dsn: str | None, systems: DemoSystems) -> AsyncIterator[Any]:
    """The sales connector of gateway/demo.toml, on SQLite and on the real PostgreSQL."""
    connector = build_connector("sales", sales_settings(systems, sales_dsn))
    yield connector
    await connector.close()


@pytest.fixture
async def service(systems: DemoSystems) -> AsyncIterator[Any]:
    settings = settings_of(systems, "service")
    settings["entities"] = {**settings["entities"], "requester": REQUESTER_ENTITY}
    connector = build_connector("service", settings)
    yield connector
    await connector.close()


@pytest.fixture
async def marketing(systems: DemoSystems) -> AsyncIterator[Any]:
    connector = build_connector("marketing", settings_of(systems, "marketing"))
    yield connector
    await connector.close()


def customer_id(systems: DemoSystems, index: int) -> str:
    return str(systems.world.sales.customers[index].id)


async def one(connector: Any, entity: str, key: str) -> Any:
    """The record (or, for a one-to-many entity, the records) the system has for key."""
    found = await connector.fetch(entity, [key])
    assert key in found, f"{entity} {key} not found"
    return found[key]


# --- what each connector offers ---------------------------------------------------------


def test_demo_sources_configure_their_writes(systems: DemoSystems) -> None:
    built = {name: build_connector(name, settings_of(systems, name)) for name in systems.endpoints}
    assert all(isinstance(connector, Writable) for connector in built.values())
    actions = {name: dict(connector.actions()) for name, connector in built.items()}  # type: ignore[attr-defined]
    assert actions == {
        "sales": {
            "update_customer": WriteSpec(
                "update_customer",
                frozenset({"key", "email", "phone", "address", "version"}),
                frozenset({"key"}),
            ),
            "add_followup": WriteSpec(
                "add_followup",
                frozenset({"key", "note", "dueOn", "actor"}),
                frozenset({"key"}),
            ),
            "erase_customer": WriteSpec("erase_customer", frozenset({"key"}), frozenset({"key"})),
        },
        "service": {
            "update_requester": WriteSpec(
                "update_requester", frozenset({"key", "phone", "email"}), frozenset({"key"})
            )
        },
        "marketing": {
            "set_consent": WriteSpec(
                "set_consent",
                frozenset({"key", "channel", "granted"}),
                frozenset({"key", "channel", "granted"}),
            )
        },
    }
    plain = {k: v for k, v in settings_of(systems, "service").items() if k != "writes"}
    assert build_connector("service", plain).actions() == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("source", "write", "message"),
    [
        ("sales", {"statement": "UPDATE t SET a = 1", "sttement": "x"}, r"writes\.w\.sttement"),
        ("sales", {"read_back": "SELECT 1"}, r"writes\.w\.statement: is required"),
        (
            "sales",
            {"statement": "UPDATE t SET a = :a", "read_back": "SELECT :b"},
            r"read_back: :b is not a parameter",
        ),
        ("sales", {"statement": "UPDATE t SET a = :a", "key_type": "int"}, "has no :key"),
        (
            "sales",
            {"statement": "UPDATE t SET a = :a", "types": {"a": "money"}},
            r"types\.a: must be one of",
        ),
        ("sales", {"statement": "UPDATE t SET a = 1", "types": {"a": "int"}}, "not a parameter"),
        ("sales", {"statement": "DELETE FROM t", "on_no_row": "maybe"}, "on_no_row"),
        ("service", {"path": "/r/{key}"}, r"method: is required"),
        ("service", {"method": "GET", "path": "/r/{key}"}, "must be one of PATCH"),
        ("service", {"method": "PATCH", "path": "/r/{key", "body": []}, "placeholders"),
        ("service", {"method": "PATCH", "path": "/r", "body": "phone"}, "list of"),
        ("service", {"method": "PATCH", "path": "/r", "items": "x"}, r"\.items: unknown key"),
        ("marketing", {"mutation": "mutation { x }"}, r"result: is required"),
        ("marketing", {"mutation": "query { x }", "result": "x"}, "must be a mutation"),
        ("marketing", {"mutation": "mutation {", "result": "x"}, "does not parse"),
    ],
)
def test_write_settings_are_checked(
    systems: DemoSystems, source: str, write: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConnectorConfigError, match=message):
        build_connector(source, settings_of(systems, source, writes={"w": write}))


# --- SQL --------------------------------------------------------------------------------


async def test_sql_update_changes_only_the_values_given(sales: Any, systems: DemoSystems) -> None:
    key = customer_id(systems, 1)
    before = await one(sales, "customer", key)
    result = await sales.write("update_customer", {"key": key, "email": "neu@example.cn"})
    after = await one(sales, "customer", key)
    assert result.affected == 1
    assert result.record == after  # read back in the write's transaction
    assert after["email"] == "neu@example.cn"
    assert (after["phone"], after["address"]) == (before["phone"], before["address"])
    assert after["updated_at"] != before["updated_at"]  # the version moved on


async def test_sql_conditional_update_is_a_conflict_once_the_version_moved(
    sales: Any, systems: DemoSystems
) -> None:
    key = customer_id(systems, 2)
    read = await one(sales, "customer", key)
    first = await sales.write(
        "update_customer", {"key": key, "phone": "13900000001", "version": read["updated_at"]}
    )
    assert first.affected == 1 and first.record is not None
    with pytest.raises(WriteConflict) as stale:  # the same version again: it is gone
        await sales.write(
            "update_customer", {"key": key, "phone": "13900000002", "version": read["updated_at"]}
        )
    assert stale.value.source == "sales"
    assert (await one(sales, "customer", key))["phone"] == "13900000001"
    current = first.record["updated_at"]
    again = await sales.write(
        "update_customer", {"key": key, "phone": "13900000003", "version": current}
    )
    assert again.record is not None and again.record["phone"] == "13900000003"


async def test_sql_unknown_or_impossible_key(sales: Any) -> None:
    with pytest.raises(WriteRefused) as refused:
        await sales.write("update_customer", {"key": "999999", "email": "a@b.cn"})
    assert refused.value.status == 404
    with pytest.raises(WriteValueError, match="'key' is not an int"):
        await sales.write("update_customer", {"key": "10001; DROP TABLE crm_customers"})
    with pytest.raises(WriteValueError, match="takes no value 'full_name'"):
        await sales.write("update_customer", {"key": "10001", "full_name": "x"})
    with pytest.raises(WriteValueError, match="needs a value for 'key'"):
        await sales.write("update_customer", {"email": "a@b.cn"})
    with pytest.raises(NoSuchWrite, match=r"writes\.delete_customer: not configured"):
        await sales.write("delete_customer", {"key": "10001"})


async def test_sql_values_are_bound_never_formatted(sales: Any, systems: DemoSystems) -> None:
    key = customer_id(systems, 3)
    result = await sales.write("update_customer", {"key": key, "address": INJECTION})
    assert result.record is not None and result.record["address"] == INJECTION
    assert (await one(sales, "customer", key))["address"] == INJECTION
    note = await sales.write("add_followup", {"key": key, "note": INJECTION, "actor": INJECTION})
    assert note.record is not None and note.record["note"] == INJECTION
    page = await sales.scan(None, 500)  # the table is still there, every row in it
    assert len(page.rows) == len(systems.world.sales.customers)


async def test_sql_insert_returns_the_new_row(sales: Any, systems: DemoSystems) -> None:
    key = customer_id(systems, 4)
    result = await sales.write(
        "add_followup",
        {"key": key, "note": "Call back after the 15th", "dueOn": "2026-03-16", "actor": "amy"},
    )
    assert result.affected == 1 and result.record is not None
    assert result.record["customer_id"] == int(key)
    assert result.record["due_on"] == "2026-03-16"
    undated = await sales.write(
        "add_followup", {"key": key, "note": "Sent the brochure", "actor": "amy"}
    )
    assert undated.record is not None and undated.record["due_on"] is None
    notes = await one(sales, "followups", key)
    assert [n["note"] for n in notes] == ["Call back after the 15th", "Sent the brochure"]
    assert notes[0]["created_by"] == "amy" and notes[0]["id"] == result.record["id"]
    with pytest.raises(WriteRefused) as unknown:  # no customer, no note
        await sales.write("add_followup", {"key": "999999", "note": "x", "actor": "amy"})
    assert unknown.value.status == 404
    with pytest.raises(WriteValueError, match="'dueOn' is not a date"):
        await sales.write("add_followup", {"key": key, "note": "x", "dueOn": "next week"})
    assert len(await one(sales, "followups", key)) == 2


async def test_sql_write_is_one_transaction(systems: DemoSystems, sales: Any) -> None:
    """A read back that fails rolls the statement back: nothing half-done stays."""
    dsn = sales.dsn
    broken = sales_settings(systems, dsn)
    broken["writes"] = {
        "w": {
            "key_type": "int",
            "statement": "UPDATE crm_customers SET email = :email WHERE id = :key",
            "read_back": "SELECT no_such_column FROM crm_customers WHERE id = :key",
        }
    }
    connector = build_connector("sales", broken)
    key = customer_id(systems, 5)
    try:
        before = await one(connector, "customer", key)
        with pytest.raises(SourceUnavailable):
            await connector.write("w", {"key": key, "email": "lost@example.cn"})
        assert (await one(connector, "customer", key))["email"] == before["email"]
    finally:
        await connector.close()


async def test_sql_constraint_is_a_refusal(systems: DemoSystems, sales: Any) -> None:
    settings = sales_settings(systems, sales.dsn)
    settings["writes"] = {
        "w": {  # crm_followups.note is NOT NULL
            "key_type": "int",
            "statement": "INSERT INTO crm_followups (customer_id, note, created_by, created_at) "
            "VALUES (:key, :note, 'x', :now)",
        }
    }
    connector = build_connector("sales", settings)
    try:
        with pytest.raises(WriteRefused, match="IntegrityError"):
            await connector.write("w", {"key": customer_id(systems, 6)})
    finally:
        await connector.close()


async def test_sql_reads_after_a_write_stay_in_autocommit(
    sales: Any, systems: DemoSystems, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write's transaction does not leak into the pool: a fetch on the connection it
    used begins and ends no transaction."""
    async with sales._get_engine().connect() as connection:
        raw = await connection.get_raw_connection()
        driver = type(raw.dbapi_connection)
    ends: list[str] = []
    for name in ("commit", "rollback"):
        original = getattr(driver, name)

        def counting(self: Any, *args: Any, _name: str = name, _original: Any = original) -> Any:
            ends.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(driver, name, counting)
    key = customer_id(systems, 7)
    await sales.write("update_customer", {"key": key, "phone": "13700000000"})
    # One commit. The rollbacks are the isolation-level switches and the pool's reset of
    # a connection handed back outside autocommit: with no transaction open, both
    # drivers do nothing for them (asyncpg not even a round trip).
    assert ends.count("commit") == 1 and set(ends) == {"commit", "rollback"}
    ends.clear()
    await sales.fetch("customer", [key])
    assert ends == []


async def test_sql_down_is_unavailable_and_not_retried(systems: DemoSystems) -> None:
    settings = sales_settings(systems, "postgresql+asyncpg://postgres@127.0.0.1:1/none")
    hub = SourceHub({"sales": build_connector("sales", settings)}, Metrics())
    try:
        with pytest.raises(SourceUnavailable) as down:
            await hub.write("sales", "update_customer", {"key": "10001", "email": "a@b.cn"})
        assert down.value.source == "sales"
        assert requests(hub, "sales") == 1 and errors(hub, "sales") == 1
        with pytest.raises(SourceUnavailable):
            await hub.fetch("sales", "customer", ["10001"])
        assert requests(hub, "sales") == 1 + 3  # a read is retried (twice), a write never
    finally:
        await hub.close()


# --- REST -------------------------------------------------------------------------------


async def test_rest_patch_changes_the_requester(
    service: Any, systems: DemoSystems, admin: SourceAdmin
) -> None:
    requester = systems.world.service.requesters[0]
    result = await service.write("update_requester", {"key": requester.id, "phone": "13811112222"})
    assert await admin.calls("service", PATCH_REQUESTER) == 1
    assert result == WriteResult(
        1,
        {
            "id": requester.id,
            "email": requester.email,  # not sent, not changed
            "phone": "13811112222",
            "name": requester.name,
        },
    )
    assert await one(service, "requester", requester.id) == result.record


async def test_rest_unknown_record_and_bad_values_are_refused(
    service: Any, systems: DemoSystems, admin: SourceAdmin
) -> None:
    requester = systems.world.service.requesters[4]
    with pytest.raises(WriteRefused) as missing:
        await service.write("update_requester", {"key": "req_unknown000", "phone": "1"})
    assert missing.value.status == 404
    assert "requester not found" in missing.value.reason
    with pytest.raises(WriteRefused) as bad:  # the helpdesk's own validation
        await service.write("update_requester", {"key": requester.id, "email": ""})
    assert bad.value.status == 400 and "non-empty" in bad.value.reason
    with pytest.raises(WriteValueError):
        await service.write("update_requester", {"phone": "1"})
    assert await admin.calls("service", PATCH_REQUESTER) == 2  # the last was never sent


async def test_rest_path_values_are_quoted(service: Any, admin: SourceAdmin) -> None:
    with pytest.raises(WriteRefused) as missing:
        await service.write("update_requester", {"key": "../../healthz?x=1", "phone": "1"})
    assert missing.value.status == 404  # one odd requester id, not another path
    assert await admin.calls("service", PATCH_REQUESTER) == 1


async def test_rest_system_down_or_failing_is_unavailable_once(
    systems: DemoSystems, admin: SourceAdmin
) -> None:
    hub = SourceHub(
        {"service": build_connector("service", settings_of(systems, "service"))}, Metrics()
    )
    key = systems.world.service.requesters[1].id
    try:
        await admin.fault("service", "error")  # 503 to everything
        with pytest.raises(SourceUnavailable, match="HTTP 503"):
            await hub.write("service", "update_requester", {"key": key, "phone": "1"})
        assert await admin.calls("service", PATCH_REQUESTER) == 1  # not retried
        with pytest.raises(SourceUnavailable):
            await hub.fetch("service", "tickets", [key])
        assert await admin.calls("service", "GET /api/v2/tickets") == 3  # a read is
        assert requests(hub, "service") == 4 and errors(hub, "service") == 4
    finally:
        await hub.close()
    down = settings_of(systems, "service", base_url=f"http://127.0.0.1:{unused_port()}")
    connector = build_connector("service", down)
    try:
        with pytest.raises(SourceUnavailable, match="ClientConnectorError"):
            await connector.write("update_requester", {"key": key, "phone": "1"})  # type: ignore[attr-defined]
    finally:
        await connector.close()


async def test_rest_timeout_says_the_outcome_is_unknown(
    systems: DemoSystems, admin: SourceAdmin
) -> None:
    connector = build_connector("service", settings_of(systems, "service", timeout_ms=300))
    try:
        await admin.fault("service", "hang")
        with pytest.raises(SourceUnavailable, match="may or may not have happened"):
            await connector.write(  # type: ignore[attr-defined]
                "update_requester", {"key": systems.world.service.requesters[2].id, "phone": "1"}
            )
        assert await admin.calls("service", PATCH_REQUESTER) == 1
    finally:
        await connector.close()


# A helpdesk that answers each requester id with a status of its own, counting calls.
STUB_ANSWERS: dict[str, tuple[int, Any]] = {
    "ok": (200, {"requester": {"id": "ok", "phone": "1"}}),
    "created": (201, {"requester": {"id": "created"}}),
    "empty": (204, None),
    "moved": (409, {"error": "edited by someone else"}),
    "stale": (412, {"error": "precondition failed"}),
    "invalid": (422, {"error": "phone is not a phone number"}),
    "busy": (429, {"error": "slow down"}),
    "broken": (500, {"error": "oops"}),
    "redirect": (307, None),
    "html": (200, "<html>proxy</html>"),
}


@pytest.fixture
async def stub() -> AsyncIterator[tuple[str, Counter[str]]]:
    calls: Counter[str] = Counter()

    async def answer(request: web.Request) -> web.StreamResponse:
        key = request.match_info["id"]
        calls[key] += 1
        status, payload = STUB_ANSWERS[key]
        if isinstance(payload, str):
            return web.Response(status=status, text=payload, content_type="text/html")
        if status == 307:
            return web.Response(status=307, headers={"Location": "/elsewhere"})
        if payload is None:
            return web.Response(status=status)
        return web.json_response(payload, status=status)

    app = web.Application()
    app.router.add_route("*", "/api/v2/requesters/{id}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", calls
    finally:
        await runner.cleanup()


def stub_connector(url: str) -> Any:
    return build_connector(
        "service",
        {
            "kind": "rest",
            "base_url": url,
            "entities": {},
            "writes": {
                "update_requester": {
                    "method": "PATCH",
                    "path": "/api/v2/requesters/{key}",
                    "body": ["phone", "email"],
                    "record": "requester",
                },
                "forget_requester": {"method": "DELETE", "path": "/api/v2/requesters/{key}"},
            },
        },
    )


async def test_rest_statuses_map_to_outcomes(stub: tuple[str, Counter[str]]) -> None:
    url, calls = stub
    connector = stub_connector(url)

    async def patch(key: str) -> WriteResult:
        result: WriteResult = await connector.write("update_requester", {"key": key, "phone": "1"})
        return result

    try:
        assert await patch("ok") == WriteResult(1, {"id": "ok", "phone": "1"})
        assert await patch("created") == WriteResult(1, {"id": "created"})
        assert await patch("empty") == WriteResult(1, None)
        assert await connector.write("forget_requester", {"key": "ok"}) == WriteResult(1, None)
        for key in ("moved", "stale"):
            with pytest.raises(WriteConflict, match=f"HTTP {STUB_ANSWERS[key][0]}"):
                await patch(key)
        with pytest.raises(WriteRefused) as invalid:
            await patch("invalid")
        assert invalid.value.status == 422 and "not a phone number" in invalid.value.reason
        for key in ("busy", "broken", "redirect", "html"):
            with pytest.raises(SourceUnavailable):
                await patch(key)
    finally:
        await connector.close()
    assert dict(calls) == {
        "ok": 2,
        "created": 1,
        "empty": 1,
        "moved": 1,
        "stale": 1,
        "invalid": 1,
        "busy": 1,
        "broken": 1,
        "redirect": 1,  # not followed
        "html": 1,
    }


async def test_rest_body_holds_only_the_values_given(stub: tuple[str, Counter[str]]) -> None:
    url, _ = stub
    seen: list[Any] = []
    connector = stub_connector(url)
    real_send = connector.client.send

    async def spy(method: str, path: str, *, json: Any = None) -> tuple[int, bytes]:
        seen.append((method, path, json))
        result: tuple[int, bytes] = await real_send(method, path, json=json)
        return result

    connector.client.send = spy
    try:
        await connector.write("update_requester", {"key": "ok", "email": None})
        await connector.write("update_requester", {"key": "ok", "phone": "1"})
        await connector.write("forget_requester", {"key": "ok"})
    finally:
        await connector.close()
    assert seen == [
        ("PATCH", "/api/v2/requesters/ok", {"email": None}),  # given as null: sent as null
        ("PATCH", "/api/v2/requesters/ok", {"phone": "1"}),
        ("DELETE", "/api/v2/requesters/ok", None),
    ]


# --- GraphQL ----------------------------------------------------------------------------


async def test_graphql_mutation_sets_the_consent(marketing: Any, systems: DemoSystems) -> None:
    contact = next(c for c in systems.world.marketing.contacts if len(c.consents) == 3)
    email = next(c for c in contact.consents if c.channel == "email")
    result = await marketing.write(
        "set_consent", {"key": contact.id, "channel": "email", "granted": not email.granted}
    )
    assert result.affected == 1 and result.record is not None
    assert result.record["channel"] == "email"
    assert result.record["granted"] is (not email.granted)
    assert result.record["updatedAt"] > email.updated_at
    consents = (await one(marketing, "contact", contact.id))["consents"]
    assert [c["channel"] for c in consents] == ["email", "sms", "phone"]
    assert consents[0] == result.record


async def test_graphql_mutation_adds_a_missing_channel(
    marketing: Any, systems: DemoSystems
) -> None:
    contact = next(c for c in systems.world.marketing.contacts if len(c.consents) < 3)
    had = [k.channel for k in contact.consents]
    missing = next(channel for channel in CHANNELS if channel not in had)
    await marketing.write("set_consent", {"key": contact.id, "channel": missing, "granted": True})
    consents = (await one(marketing, "contact", contact.id))["consents"]
    channels = [c["channel"] for c in consents]
    assert channels == [channel for channel in CHANNELS if channel in {*had, missing}]


async def test_graphql_errors_are_refusals(
    marketing: Any, systems: DemoSystems, admin: SourceAdmin
) -> None:
    contact = systems.world.marketing.contacts[0]
    before = (await one(marketing, "contact", contact.id))["consents"]
    with pytest.raises(WriteRefused, match="channel must be one of") as bad_channel:
        await marketing.write("set_consent", {"key": contact.id, "channel": "fax", "granted": True})
    assert bad_channel.value.status is None
    with pytest.raises(WriteRefused, match="no contact MC-999999"):
        await marketing.write(
            "set_consent", {"key": "MC-999999", "channel": "sms", "granted": True}
        )
    with pytest.raises(WriteValueError, match="needs a value for 'granted'"):
        await marketing.write("set_consent", {"key": contact.id, "channel": "sms"})
    assert (await one(marketing, "contact", contact.id))["consents"] == before


async def test_graphql_down_or_failing_is_unavailable_once(
    systems: DemoSystems, admin: SourceAdmin
) -> None:
    connector = build_connector("marketing", settings_of(systems, "marketing"))
    hub = SourceHub({"marketing": connector}, Metrics())
    values = {"key": systems.world.marketing.contacts[1].id, "channel": "sms", "granted": True}
    try:
        await admin.fault("marketing", "error")
        with pytest.raises(SourceUnavailable, match="HTTP 503"):
            await hub.write("marketing", "set_consent", values)
        await admin.fault("marketing", "garbage")
        with pytest.raises(SourceUnavailable, match="may have happened"):
            await hub.write("marketing", "set_consent", values)
        assert await admin.calls("marketing") == 2  # one each, never retried
    finally:
        await hub.close()
    down = build_connector(
        "marketing",
        settings_of(systems, "marketing", url=f"http://127.0.0.1:{unused_port()}/graphql"),
    )
    try:
        with pytest.raises(SourceUnavailable):
            await down.write("set_consent", values)  # type: ignore[attr-defined]
    finally:
        await down.close()


# --- the hub ----------------------------------------------------------------------------


def requests(hub: SourceHub, source: str) -> float:
    value = hub.metrics.registry.get_sample_value("c360_source_requests_total", {"source": source})
    return value or 0.0


def errors(hub: SourceHub, source: str) -> float:
    value = hub.metrics.registry.get_sample_value("c360_source_errors_total", {"source": source})
    return value or 0.0


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The source spans use the global tracer: the global provider is set once per process
    (as tests/test_hardening.py does)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_hub_write_is_counted_and_traced_without_values(
    systems: DemoSystems, admin: SourceAdmin, spans: InMemorySpanExporter
) -> None:
    settings = settings_of(systems, "service")
    settings["entities"] = {**settings["entities"], "requester": REQUESTER_ENTITY}
    connector = build_connector("service", settings)
    cache = parse_cache_settings({"url": "memory://", "ttl_s": 60}, {"service": {}})
    assert cache is not None
    hub = SourceHub({"service": connector}, Metrics(), store=RecordStore(cache))
    requester = systems.world.service.requesters[3]
    secret_phone = "13866667777"
    try:
        cached = await hub.fetch("service", "requester", [requester.id])
        spans.clear()
        result = await hub.write(
            "service", "update_requester", {"key": requester.id, "phone": secret_phone}
        )
        assert result.record is not None and result.record["phone"] == secret_phone
        with pytest.raises(WriteRefused):
            await hub.write("service", "update_requester", {"key": "req_none", "phone": "1"})
        assert requests(hub, "service") == 1 + 2
        assert errors(hub, "service") == 0  # a refusal is an answer, not a failure
        assert hub.breakers["service"].state == "closed"
        # The write neither read nor filled the cache: the cached read is as it was.
        assert await hub.fetch("service", "requester", [requester.id]) == cached
        assert await admin.calls("service", "GET /api/v2/requesters/{id}") == 1
    finally:
        await hub.close()
    written = [s for s in spans.get_finished_spans() if s.name.startswith("source service write")]
    assert [s.name for s in written] == ["source service write update_requester"] * 2
    ok, refused = written
    assert ok.attributes is not None and refused.attributes is not None
    assert ok.attributes["c360.write.action"] == "update_requester"
    assert ok.attributes["c360.outcome"] == "ok"
    assert tuple(ok.attributes["c360.write.fields"]) == ("key", "phone")  # type: ignore[arg-type]
    assert refused.attributes["c360.outcome"] == "refused"
    assert refused.attributes["http.response.status_code"] == 404
    for span in written:
        assert secret_phone not in str(span.attributes) and requester.id not in str(span.attributes)


async def test_hub_refuses_unknown_writes_before_asking(
    systems: DemoSystems, admin: SourceAdmin
) -> None:
    class ReadOnly:
        name = "legacy"

    hub = SourceHub(
        {
            "service": build_connector("service", settings_of(systems, "service")),
            "legacy": ReadOnly(),  # type: ignore[dict-item]
        },
        Metrics(),
    )
    try:
        assert hub.actions("legacy") == {}
        with pytest.raises(NoSuchWrite, match=r"sources\.service\.writes\.delete: not configured"):
            await hub.write("service", "delete", {"key": "x"})
        with pytest.raises(NoSuchWrite, match=r"configured: none"):
            await hub.write("legacy", "update", {"key": "x"})
        with pytest.raises(NoSuchWrite, match="no such source"):
            await hub.write("billing", "update", {})
        with pytest.raises(WriteValueError, match="takes no value 'name'"):
            await hub.write("service", "update_requester", {"key": "x", "name": "y"})
        assert requests(hub, "service") == 0
        assert await admin.calls("service") == 0
    finally:
        await hub.connectors["service"].close()


async def test_hub_write_honours_the_circuit_breaker(stub: tuple[str, Counter[str]]) -> None:
    url, calls = stub
    hub = SourceHub(
        {"service": stub_connector(url)},
        Metrics(),
        resilience={"service": ResilienceSettings(breaker_failures=2, breaker_cooldown_s=60)},
    )

    async def broken() -> WriteResult:
        return await hub.write("service", "update_requester", {"key": "broken", "phone": "1"})

    try:
        for _ in range(2):
            with pytest.raises(SourceUnavailable, match="HTTP 500"):
                await broken()
        assert hub.breakers["service"].state == "open"
        with pytest.raises(SourceUnavailable, match="circuit open"):
            await broken()
        with pytest.raises(SourceUnavailable, match="circuit open"):
            await hub.write("service", "update_requester", {"key": "ok", "phone": "1"})
    finally:
        await hub.close()
    assert calls["broken"] == 2 and calls["ok"] == 0


async def test_hub_write_times_out_with_the_source(
    systems: DemoSystems, admin: SourceAdmin
) -> None:
    connector = build_connector("marketing", settings_of(systems, "marketing", timeout_ms=300))
    hub = SourceHub({"marketing": connector}, Metrics())
    values = {"key": systems.world.marketing.contacts[2].id, "channel": "sms", "granted": True}
    try:
        await admin.fault("marketing", "hang")
        started = asyncio.get_running_loop().time()
        with pytest.raises(SourceUnavailable, match=r"timed out after 0\.3s"):
            await hub.write("marketing", "set_consent", values)
        assert asyncio.get_running_loop().time() - started < 2
        assert await admin.calls("marketing") == 1
    finally:
        await hub.close()
