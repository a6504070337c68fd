"""A new department end to end, by configuration only (README "Plugging in a department").

Two systems c360 has never seen are added to the demo gateway without a line of Python:
a loyalty programme served by a real Apollo Federation subgraph (Node) and an offline-stores
REST API with its own ids, phone format and paging. The declaration and the policies are
the files under examples/loyalty-and-stores/, the `[sources]` tables the README shows.
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from demo import GRAPH_FILE
from demo.people import DemoWorld
from demo.systems import DemoSystems
from harness import RunningGateway, running_gateway
from tests.systems.data import LoyaltyMember, StoreShopper, loyalty_members, store_shoppers
from tests.systems.fixtures import (
    LoyaltySystem,
    StoresSystem,
    loyalty_node,
    loyalty_system,
    sources_toml,
    stores_system,
)

EXAMPLE = Path(__file__).parents[1] / "examples" / "loyalty-and-stores"
TIERS = {"G": "GOLD", "S": "SILVER", "B": "BRONZE"}

PAGE = """query($n: Int!) { customers(first: $n) { edges { node {
  id name tier points
  loyalty { id tier joinedAt redemptions { reward points } }
  storeVisits(first: 2) { id store amountCents visitedAt }
  storeVisitCount storeSpendCents lastStoreVisit
} } } }"""


@dataclass
class Department:
    gateway: RunningGateway
    loyalty: LoyaltySystem
    stores: StoresSystem
    members: dict[str, LoyaltyMember]  # by CUID
    shoppers: dict[str, StoreShopper]  # by CUID


@pytest.fixture(scope="module")
async def department(
    demo_systems: DemoSystems,
    demo_world: DemoWorld,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Department]:
    node = await loyalty_node()
    work = tmp_path_factory.mktemp("department")
    policies = work / "policies.toml"
    policies.write_text(
        (Path(__file__).parents[1] / "policies" / "default.toml").read_text()
        + "\n"
        + (EXAMPLE / "policies.toml").read_text()
    )
    async with (
        loyalty_system(demo_world, work / "loyalty", node) as loyalty,
        stores_system(demo_world) as stores,
    ):
        sources = tomllib.loads(sources_toml(loyalty.url, stores.url))["sources"]
        overrides = {
            **{f"sources.{name}": table for name, table in sources.items()},
            "identity.systems": ["sales", "service", "marketing", "loyalty", "stores"],
            "graph.file": [str(GRAPH_FILE), str(EXAMPLE / "graph.graphql")],
            "policies.file": str(policies),
        }
        async with running_gateway(demo_systems, work / "gateway", overrides) as gateway:
            by_record = gateway.gateway.identity.by_record
            members = {by_record[("loyalty", m.id)]: m for m in loyalty_members(demo_world)}
            shoppers = {by_record[("stores", s.shopper_no)]: s for s in store_shoppers(demo_world)}
            yield Department(gateway, loyalty, stores, members, shoppers)


def _nodes(reply: Any) -> list[dict[str, Any]]:
    assert reply.status == 200, reply.body
    return [edge["node"] for edge in reply.data["customers"]["edges"]]


async def test_new_types_fields_enum_and_derived_values_from_both_systems(
    department: Department,
) -> None:
    gateway = department.gateway
    sdl = gateway.gateway.schema.as_str()
    assert "tier: Tier @policy" in sdl and "type StoreVisit {" in sdl
    assert "customerByMemberId(memberId: ID!): Customer" in sdl
    nodes = _nodes(await gateway.query(PAGE, {"n": 100}))
    checked_members = checked_shoppers = 0
    for node in nodes:
        member = department.members.get(node["id"])
        if member is None:
            assert node["tier"] is None and node["loyalty"] is None
        else:
            checked_members += 1
            assert node["tier"] == TIERS[member.tier] == node["loyalty"]["tier"]
            assert node["points"] == member.points
            assert node["loyalty"]["id"] == member.id
            assert node["loyalty"]["joinedAt"] == member.joined_at
            assert [r["reward"] for r in node["loyalty"]["redemptions"]] == [
                r.reward for r in member.redemptions
            ]
        shopper = department.shoppers.get(node["id"])
        visits = shopper.visits if shopper is not None else ()
        if not visits:
            assert not node["storeVisits"] and node["storeVisitCount"] in (None, 0)
            continue
        checked_shoppers += 1
        newest = sorted(visits, key=lambda v: v.visited_at, reverse=True)
        assert [v["id"] for v in node["storeVisits"]] == [v.visit_no for v in newest[:2]]
        assert node["storeVisitCount"] == len(visits)
        assert node["storeSpendCents"] == sum(v.amount_cents for v in visits)
        assert node["lastStoreVisit"] is not None
    assert checked_members >= 20 and checked_shoppers >= 10


async def test_one_call_per_system_per_level_across_the_systems_own_paging(
    department: Department,
) -> None:
    gateway, stores = department.gateway, department.stores
    before = {name: gateway.source_calls(name) for name in ("loyalty", "stores", "sales")}
    stores.reset()
    reply = await gateway.query(PAGE, {"n": 100})
    assert not reply.errors, reply.errors
    after = {name: gateway.source_calls(name) for name in before}
    assert {name: after[name] - before[name] for name in before} == {
        "loyalty": 1,
        "stores": 1,
        "sales": 1,
    }
    # One batched fetch of the page's shoppers, which the stores API answered in pages.
    assert stores.calls("/v3/visits") > 1


async def test_marketing_sees_the_tier_not_the_points(department: Department) -> None:
    gateway = department.gateway
    member_cuid = next(iter(department.members))
    reply = await gateway.query(
        "query($id: ID!) { customer(id: $id) { tier points loyalty { id } } }",
        {"id": member_cuid},
        headers=gateway.as_role("marketing"),
    )
    assert reply.data["customer"]["tier"] == TIERS[department.members[member_cuid].tier]
    assert reply.data["customer"]["points"] is None and reply.data["customer"]["loyalty"] is None
    refused = {(e["path"][-1], e["extensions"]["policy"]) for e in reply.errors}
    assert refused == {("points", "loyalty.points"), ("loyalty", "loyalty.membership")}
    assert all(e["extensions"]["code"] == "FORBIDDEN" for e in reply.errors)


async def test_lookup_by_the_loyalty_systems_own_id(department: Department) -> None:
    gateway = department.gateway
    cuid, member = next(iter(department.members.items()))
    query = "query($m: ID!) { customerByMemberId(memberId: $m) { id tier } }"
    found = await gateway.query(query, {"m": member.id})
    assert found.data["customerByMemberId"] == {"id": cuid, "tier": TIERS[member.tier]}
    missing = await gateway.query(query, {"m": "LM-999999"})
    assert missing.data["customerByMemberId"] is None and not missing.errors
    # Marketing may not read the membership: found or not, the same refusal.
    marketing = gateway.as_role("marketing")
    answers = [
        (await gateway.query(query, {"m": key}, headers=marketing)).body
        for key in (member.id, "LM-999999")
    ]
    assert answers[0] == answers[1]
    assert answers[0]["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_a_partial_answer_when_the_stores_are_down(department: Department) -> None:
    gateway, stores = department.gateway, department.stores
    await stores.stop()
    try:
        nodes = []
        reply = await gateway.query(PAGE, {"n": 40})
        nodes = _nodes(reply)
    finally:
        await stores.start()
    assert all(n["storeVisits"] is None and n["storeVisitCount"] is None for n in nodes)
    assert any(n["tier"] for n in nodes) and any(n["name"] for n in nodes)
    unavailable = [e for e in reply.errors if e["extensions"]["code"] == "SOURCE_UNAVAILABLE"]
    assert [e["extensions"]["source"] for e in unavailable] == ["stores"]
    assert not [e for e in reply.errors if e["extensions"]["code"] != "SOURCE_UNAVAILABLE"]


async def test_the_consoles_field_filter_lists_the_declared_fields(department: Department) -> None:
    status, page = await department.gateway.get("/console")
    assert status == 200
    start = page.index('id="c360-fields">') + len('id="c360-fields">')
    fields = orjson.loads(page[start : page.index("</script>", start)])
    assert {"nationalId", "tier", "points", "storeVisits", "storeVisitCount"} <= set(fields)
