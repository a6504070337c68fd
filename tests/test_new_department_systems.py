"""A new department by configuration: the loyalty subgraph (Node, Apollo Federation 2)
and the offline stores' REST API, reached only through the `[sources.*]` tables a user
would write (tests/systems/fixtures.py's `sources_toml`), built by the connector registry.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Connector, SourceUnavailable
from connectors.identity.keys import IdentityKeys
from connectors.identity.store import CrosswalkStore
from connectors.identity.sync import sync_identity
from connectors.registry import build_connector
from demo.people import DemoWorld
from demo.systems import DemoSystems
from tests.systems.data import (
    LoyaltyMember,
    StoreShopper,
    loyalty_members,
    store_shoppers,
)
from tests.systems.fixtures import (
    LoyaltySystem,
    StoresSystem,
    loyalty_node,
    loyalty_system,
    sources_toml,
    stores_system,
)
from tests.systems.stores import VISITS_PAGE

KEYS = IdentityKeys(b"new-departments-test-key-0123")


@pytest.fixture(scope="module")
async def node() -> str:
    return await loyalty_node()


@pytest.fixture(scope="module")
async def loyalty(
    node: str, demo_world: DemoWorld, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LoyaltySystem]:
    async with loyalty_system(demo_world, tmp_path_factory.mktemp("loyalty"), node) as system:
        yield system


@pytest.fixture(scope="module")
async def stores(demo_world: DemoWorld) -> AsyncIterator[StoresSystem]:
    async with stores_system(demo_world) as system:
        yield system


def sources(loyalty_url: str, stores_url: str) -> dict[str, Any]:
    return dict(tomllib.loads(sources_toml(loyalty_url, stores_url))["sources"])


@pytest.fixture
async def connectors(
    loyalty: LoyaltySystem, stores: StoresSystem
) -> AsyncIterator[dict[str, Connector]]:
    await loyalty.reset()
    stores.reset()
    built = {
        name: build_connector(name, table)
        for name, table in sources(loyalty.url, stores.url).items()
    }
    try:
        yield built
    finally:
        for connector in built.values():
            await connector.close()


async def scan_all(connector: Connector, limit: int) -> tuple[list[str], list[str]]:
    """Every system id of a scan, and the cursors it went through."""
    ids: list[str] = []
    cursors: list[str] = []
    after = None
    while True:
        page = await connector.scan(after, limit)
        ids.extend(row.system_id for row in page.rows)
        if page.next_cursor is None:
            return ids, cursors
        after = page.next_cursor
        cursors.append(after)


def member_shape(member: LoyaltyMember) -> dict[str, Any]:
    return {
        "id": member.id,
        "email": member.email,
        "phone": member.phone,
        "points": member.points,
        "tier": member.tier,
        "joinedAt": member.joined_at,
        "redemptions": [
            {"id": r.id, "reward": r.reward, "points": r.points, "redeemedAt": r.redeemed_at}
            for r in member.redemptions
        ],
    }


def test_the_systems_hold_people_of_the_demo_world(demo_world: DemoWorld) -> None:
    members, shoppers = loyalty_members(demo_world), store_shoppers(demo_world)
    people = len(demo_world.persons)
    assert 0.35 * people < len(members) < 0.45 * people
    assert 0.25 * people < len(shoppers) < 0.35 * people
    assert {len(m.redemptions) for m in members} == {0, 1, 2, 3, 4}
    assert {len(s.visits) for s in shoppers} == {0, 1, 2, 3, 4, 5, 6}
    assert {m.tier for m in members} == {"G", "S", "B"}
    by_index = {p.index: p for p in demo_world.persons}
    for member in members:
        digits = by_index[member.person].phone
        assert member.phone == f"+86 {digits[:3]}-{digits[3:7]}-{digits[7:]}"
    assert all(s.mobile == f"0086-{by_index[s.person].phone}" for s in shoppers)
    assert loyalty_members(demo_world) == members  # deterministic


async def test_the_configuration_builds_healthy_connectors(
    connectors: dict[str, Connector], loyalty: LoyaltySystem, stores: StoresSystem
) -> None:
    assert set(connectors) == {"loyalty", "stores"}
    assert {name: spec.many for name, spec in connectors["stores"].entities().items()} == {
        "visits": True
    }
    assert (await connectors["loyalty"].health()).ok
    assert (await connectors["stores"].health()).ok
    assert stores.calls("/healthz") == 1
    assert await loyalty.calls("POST /graphql") == 1


async def test_members_by_id_are_one_entities_request(
    connectors: dict[str, Connector], loyalty: LoyaltySystem, demo_world: DemoWorld
) -> None:
    members = loyalty_members(demo_world)
    wanted = members[::7][:60]
    found = await connectors["loyalty"].fetch("member", [m.id for m in wanted] + ["LM-999999"])
    assert found == {m.id: member_shape(m) for m in wanted}  # the unknown id is absent
    assert await loyalty.requests() == {"POST /graphql": 1, "field _entities": 1}


async def test_visits_of_100_shoppers_are_one_batch_over_several_pages(
    connectors: dict[str, Connector], stores: StoresSystem, demo_world: DemoWorld
) -> None:
    shoppers = store_shoppers(demo_world)[:100]
    keys = [s.shopper_no for s in shoppers]
    found = await connectors["stores"].fetch("visits", keys)
    total = sum(len(s.visits) for s in shoppers)
    assert total > 3 * VISITS_PAGE
    assert stores.calls("/v3/visits") == math.ceil(total / VISITS_PAGE) == stores.calls()
    assert set(found) == set(keys)  # a shopper without visits has []
    for shopper in shoppers:
        records = found[shopper.shopper_no]
        assert isinstance(records, list)
        assert [v["visitNo"] for v in records] == [v.visit_no for v in shopper.visits]
        assert [v["amountCents"] for v in records] == [v.amount_cents for v in shopper.visits]


async def test_more_shoppers_than_max_keys_are_chunks_each_paged(
    connectors: dict[str, Connector], stores: StoresSystem, demo_world: DemoWorld
) -> None:
    shoppers = store_shoppers(demo_world)[100:250]
    found = await connectors["stores"].fetch("visits", [s.shopper_no for s in shoppers])
    first, second = shoppers[:100], shoppers[100:]
    pages = sum(
        math.ceil(sum(len(s.visits) for s in chunk) / VISITS_PAGE) for chunk in (first, second)
    )
    assert stores.calls("/v3/visits") == pages
    assert sum(len(v) for v in found.values()) == sum(len(s.visits) for s in shoppers)  # type: ignore[arg-type]


async def test_both_scans_follow_their_opaque_cursors(
    connectors: dict[str, Connector],
    loyalty: LoyaltySystem,
    stores: StoresSystem,
    demo_world: DemoWorld,
) -> None:
    member_ids, member_cursors = await scan_all(connectors["loyalty"], 150)
    shopper_ids, shopper_cursors = await scan_all(connectors["stores"], 500)
    assert member_ids == [m.id for m in loyalty_members(demo_world)]
    assert shopper_ids == [s.shopper_no for s in store_shoppers(demo_world)]
    assert len(member_cursors) == math.ceil(len(member_ids) / 150) - 1
    # the stores cap a page at 200 whatever the limit asked
    assert len(shopper_cursors) == math.ceil(len(shopper_ids) / 200) - 1
    assert stores.calls("/v3/shoppers") == len(shopper_cursors) + 1
    assert await loyalty.calls("field memberPage") == len(member_cursors) + 1
    # the cursors are the systems' own: a record id is not one, and is refused
    assert not set(member_cursors) & set(member_ids)
    assert not set(shopper_cursors) & set(shopper_ids)
    with pytest.raises(SourceUnavailable, match="HTTP 400"):
        await connectors["loyalty"].scan(member_ids[149], 150)
    with pytest.raises(SourceUnavailable, match="HTTP 400"):
        await connectors["stores"].scan(shopper_ids[199], 200)


def anchor_links(world: DemoWorld, links: dict[tuple[str, str], str]) -> dict[int, str]:
    """Each person's CUID, as the demo systems' records made it."""
    cuids: dict[int, str] = {}
    for person in world.persons:
        if person.sales_ids:
            cuids[person.index] = links["sales", str(person.sales_ids[0])]
        elif person.requester_id:
            cuids[person.index] = links["service", person.requester_id]
    return cuids


def demo_scans(systems: DemoSystems) -> list[Connector]:
    """Only the scans of the three demo systems, as their sources would configure them."""
    endpoints = systems.endpoints
    settings: dict[str, dict[str, Any]] = {
        "sales": {
            "kind": "sql",
            "dsn": endpoints["sales"]["dsn"],
            "scan": {
                "key_type": "int",
                "query": "SELECT id, email, phone FROM crm_customers"
                " WHERE id > :after ORDER BY id LIMIT :limit",
            },
        },
        "service": {
            "kind": "rest",
            "base_url": endpoints["service"]["url"],
            "scan": {"path": "/api/v2/requesters", "items": "requesters"},
        },
        "marketing": {
            "kind": "graphql",
            "url": endpoints["marketing"]["url"],
            "scan": {
                "query": "query($after: String, $limit: Int!) { contactPage(first: $limit,"
                " after: $after) { items { id email phone } nextCursor } }",
                "items": "contactPage.items",
                "next_field": "contactPage.nextCursor",
            },
        },
    }
    return [build_connector(name, table) for name, table in settings.items()]


async def test_the_identity_sync_links_them_to_demo_customers(
    demo_systems: DemoSystems, demo_world: DemoWorld, node: str, tmp_path: Path
) -> None:
    """Synced twice: the second time, after new members and shoppers signed up, only they
    are linked, resumed from each system's own opaque cursor, without an error."""
    members, shoppers = loyalty_members(demo_world), store_shoppers(demo_world)
    store = CrosswalkStore(f"sqlite+aiosqlite:///{tmp_path}/identity.db")
    async with (
        loyalty_system(demo_world, tmp_path / "loyalty", node) as loyalty,
        stores_system(demo_world) as stores,
    ):
        new = sources(loyalty.url, stores.url)
        scanned = demo_scans(demo_systems) + [build_connector(n, t) for n, t in new.items()]
        try:
            first = await sync_identity(store, scanned, KEYS, page_size=100)
            cursors = await store.cursors()
            links = {(link.system, link.system_id): link.cuid for link in await store.links()}
            issues = await store.issues()
            # new sign-ups: people of the world not in these systems yet, newest ids last
            joining = [p for p in demo_world.persons if p.index not in {m.person for m in members}]
            new_members = [
                replace(
                    members[0],
                    id=f"LM-99{n:04d}",
                    person=p.index,
                    email=p.email,
                    phone=f"+86 {p.phone[:3]}-{p.phone[3:7]}-{p.phone[7:]}",
                )
                for n, p in enumerate(joining[:3])
            ]
            shopping = [
                p for p in demo_world.persons if p.index not in {s.person for s in shoppers}
            ]
            new_shoppers = [
                StoreShopper(f"S-999{n:02d}", p.index, p.email.upper(), f"0086-{p.phone}", ())
                for n, p in enumerate(shopping[:4])
            ]
            await loyalty.add(new_members)
            stores.stores.add(new_shoppers)
            stores.reset()
            second = await sync_identity(store, scanned, KEYS, page_size=100)
            links_after = {(link.system, link.system_id): link.cuid for link in await store.links()}
        finally:
            for connector in scanned:
                await connector.close()
            await store.close()

    for name in ("sales", "service", "marketing", "loyalty", "stores"):
        assert first.systems[name].error is None, first.systems[name].error
        assert second.systems[name].error is None, second.systems[name].error
    assert first.systems["loyalty"].linked == len(members)
    assert first.systems["stores"].linked == len(shoppers)
    # all of them are people the demo systems know: no new customer, no issue
    assert first.systems["loyalty"].new_customers == first.systems["stores"].new_customers == 0
    assert not [i for i in issues if i.system in ("loyalty", "stores")]
    cuid_of = anchor_links(demo_world, links)
    for member in members:
        assert links["loyalty", member.id] == cuid_of[member.person], member
    for shopper in shoppers:
        assert links["stores", shopper.shopper_no] == cuid_of[shopper.person], shopper
    # the resume points are the systems' cursors, not the last ids
    assert cursors["loyalty"] not in {m.id for m in members}
    assert cursors["stores"] not in {s.shopper_no for s in shoppers}

    assert second.systems["loyalty"].linked == 3 and second.systems["stores"].linked == 4
    assert second.linked == 7
    for member in new_members:
        assert links_after["loyalty", member.id] == cuid_of[member.person]
    for shopper in new_shoppers:
        assert links_after["stores", shopper.shopper_no] == cuid_of[shopper.person]
    # resumed, not rescanned: the last page of the first sync again, and the new ones
    last_page = (len(shoppers) - 1) // 100 * 100
    assert second.systems["stores"].scanned == len(shoppers) - last_page + 4
    assert stores.calls("/v3/shoppers") == math.ceil((len(shoppers) - last_page + 4) / 100)


async def test_stores_down_is_unavailable_and_back_after_a_restart(
    demo_world: DemoWorld,
) -> None:
    async with stores_system(demo_world) as stores:
        url = stores.url
        connector = build_connector("stores", sources("http://unused", url)["stores"])
        keys = [s.shopper_no for s in store_shoppers(demo_world)[:10]]
        try:
            before = await connector.fetch("visits", keys)
            await stores.stop()
            assert not (await connector.health()).ok
            with pytest.raises(SourceUnavailable) as raised:
                await connector.fetch("visits", keys)
            assert raised.value.source == "stores"
            await stores.start()
            assert stores.url == url
            assert (await connector.health()).ok
            after = await connector.fetch("visits", keys)
        finally:
            await connector.close()
    assert after == before and sum(len(v) for v in after.values()) > 0  # type: ignore[arg-type]
