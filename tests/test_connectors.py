"""Connectors against the real demo systems and the real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.base import ConnectorConfigError, SourceUnavailable
from connectors.registry import build_connector
from demo.people import DemoWorld
from demo.sales_db import seed_sales_db
from demo.systems import DemoSystems
from gateway.app import connector_settings
from gateway.demo import demo_config
from harness import SourceAdmin


def source_settings(systems: DemoSystems, name: str) -> dict[str, Any]:
    return connector_settings(demo_config(systems.endpoints, port=0)["sources"][name])


async def transaction_ends(sales: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts, from now on, the driver connection's commits and rollbacks: the SQL
    connector only reads, one statement at a time, in autocommit, so a fetch ends none."""
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
    return ends


async def test_sql_fetches_a_batch_and_groups_one_to_many(
    demo_systems: DemoSystems, demo_world: DemoWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    sales = build_connector("sales", source_settings(demo_systems, "sales"))
    ids = [str(c.id) for c in demo_world.sales.customers[:5]]
    try:
        ends = await transaction_ends(sales, monkeypatch)
        customers = await sales.fetch("customer", [*ids, "999999999", "not-a-number"])
        orders = await sales.fetch("orders", ids)
        assert ends == []
    finally:
        await sales.close()
    assert sorted(customers) == sorted(ids)
    first = demo_world.sales.customers[0]
    assert customers[str(first.id)]["national_id"] == first.national_id
    assert isinstance(customers[str(first.id)]["lifetime_value"], float)
    expected = [o.id for o in demo_world.sales.orders if o.customer_id == first.id]
    assert sorted(o["id"] for o in orders[str(first.id)]) == sorted(expected)  # type: ignore[union-attr]


@pytest.mark.postgres
async def test_sql_against_postgresql(
    postgres_dsn: str,
    demo_systems: DemoSystems,
    demo_world: DemoWorld,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed_sales_db(postgres_dsn, demo_world)
    settings = {**source_settings(demo_systems, "sales"), "dsn": postgres_dsn}
    sales = build_connector("sales", settings)
    ids = [str(c.id) for c in demo_world.sales.customers[:100]]
    try:
        ends = await transaction_ends(sales, monkeypatch)
        customers = await sales.fetch("customer", ids)
        orders = await sales.fetch("orders", ids[:3])
        page = await sales.scan(None, 50)
        health = await sales.health()
        assert ends == []  # no BEGIN, no ROLLBACK: one round trip per statement
    finally:
        await sales.close()  # (closing rolls back, in the driver's own close)
    assert len(customers) == 100
    assert all(isinstance(o["placed_at"], str) for rows in orders.values() for o in rows)  # type: ignore[union-attr]
    assert len(page.rows) == 50 and page.next_cursor == page.rows[-1].system_id
    assert health.ok


async def test_sql_unreachable_database_is_source_unavailable() -> None:
    settings = {
        "kind": "sql",
        "dsn": "postgresql+asyncpg://postgres@127.0.0.1:1/none",
        "timeout_ms": 1000,
        "entities": {"customer": {"key_field": "id", "query": "SELECT 1 AS id WHERE 1 IN :keys"}},
    }
    sales = build_connector("sales", settings)
    with pytest.raises(SourceUnavailable) as raised:
        await sales.fetch("customer", ["1"])
    assert raised.value.source == "sales"
    assert not (await sales.health()).ok
    await sales.close()


async def test_rest_batch_endpoint_is_one_call(
    demo_systems: DemoSystems, demo_world: DemoWorld, sources: SourceAdmin
) -> None:
    service = build_connector("service", source_settings(demo_systems, "service"))
    ids = [r.id for r in demo_world.service.requesters[:30]]
    try:
        tickets = await service.fetch("tickets", ids)
    finally:
        await service.close()
    assert await sources.calls("service") == 1
    assert set(tickets) == set(ids)
    expected = sum(1 for t in demo_world.service.tickets if t.requester_id in set(ids))
    assert sum(len(v) for v in tickets.values()) == expected  # type: ignore[arg-type]


async def test_rest_without_batch_fans_out_to_the_single_endpoint(
    demo_systems: DemoSystems, demo_world: DemoWorld, sources: SourceAdmin
) -> None:
    settings = source_settings(demo_systems, "service")
    entity = dict(settings["entities"]["tickets"])
    del entity["batch"]
    settings["entities"] = {"tickets": entity}
    service = build_connector("service", settings)
    ids = [r.id for r in demo_world.service.requesters[:7]]
    try:
        tickets = await service.fetch("tickets", [*ids, "req_unknown000"])
    finally:
        await service.close()
    stats = await sources.stats("service")
    assert stats["total"] == 8
    assert set(tickets) == set(ids)  # the 404 is simply absent


async def test_rest_garbage_is_source_unavailable(
    demo_systems: DemoSystems, sources: SourceAdmin
) -> None:
    await sources.fault("service", "garbage")
    service = build_connector("service", source_settings(demo_systems, "service"))
    try:
        with pytest.raises(SourceUnavailable, match="invalid JSON"):
            await service.fetch("tickets", ["req_0000000000"])
    finally:
        await service.close()


async def test_graphql_federation_entities_and_keys_query(
    demo_systems: DemoSystems, demo_world: DemoWorld, sources: SourceAdmin
) -> None:
    marketing = build_connector("marketing", source_settings(demo_systems, "marketing"))
    ids = [c.id for c in demo_world.marketing.contacts[:40]]
    try:
        contacts = await marketing.fetch("contact", [*ids, "MC-nobody"])
        segments = await marketing.fetch("segment_members", ["vip", "no-such-segment"])
        page = await marketing.scan(None, 10)
    finally:
        await marketing.close()
    assert set(contacts) == set(ids)
    first = demo_world.marketing.contacts[0]
    assert contacts[first.id]["segment"] == first.segment  # type: ignore[call-overload]
    vip = {c.id for c in demo_world.marketing.contacts if c.segment == "vip"}
    assert set(segments["vip"]["contactIds"]) == vip  # type: ignore[call-overload]
    assert segments["no-such-segment"]["contactIds"] == []  # type: ignore[call-overload]
    assert len(page.rows) == 10 and page.next_cursor
    assert await sources.calls("marketing") == 3


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"kind": "soap"}, "sources.x.kind"),
        ({"kind": "sql", "entities": {}}, "sources.x.dsn"),
        (
            {
                "kind": "sql",
                "dsn": "sqlite+aiosqlite://",
                "entities": {"e": {"key_field": "id", "query": "SELECT 1"}},
            },
            "sources.x.entities.e.query",
        ),
        (
            {"kind": "rest", "base_url": "http://h", "entities": {"e": {"key_field": "id"}}},
            "sources.x.entities.e.batch",
        ),
        ({"kind": "rest", "base_url": "http://h", "timeout_ms": "fast"}, "sources.x.timeout_ms"),
        ({"kind": "graphql", "url": "http://h", "colour": "blue"}, "sources.x.colour"),
        (
            {
                "kind": "graphql",
                "url": "http://h",
                "entities": {"c": {"key_field": "id", "query": "{ a }", "items": "a"}},
            },
            "sources.x.entities.c.query",
        ),
    ],
)
def test_connector_settings_errors_name_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConnectorConfigError) as raised:
        build_connector("x", settings)
    assert str(raised.value).startswith(key + ":")
