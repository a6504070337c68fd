"""A person a system holds twice is one customer: every record the crosswalk links is read
(in the same one call per system), lists hold every record's items, one value follows
the field's declared `@merge` rule, and writes still go to the primary record."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from connectors.base import EntitySpec, SourceUnavailable
from connectors.identity.index import IdentityIndex
from connectors.identity.keys import IdentityKeys
from connectors.identity.store import Link
from demo.people import DemoWorld, Person
from demo.systems import DemoSystems
from gateway.auth import mint_token
from harness import RunningGateway, running_gateway
from resolvers.bindings import BindingError, check_bindings
from resolvers.declaration import DeclarationError, parse_declaration
from resolvers.merging import EntityMerge, MergeRule, ValueRule, merge_records
from resolvers.schema import encode_cursor
from resolvers.types import build_graph

ONE = """query($id: ID!) {
  customer(id: $id) {
    id name email address lifetimeValue version
    orders(first: 100) { id placedAt total }
  }
}"""
NEWEST_TWO = "query($id: ID!) { customer(id: $id) { orders(first: 2) { id placedAt } } }"
REPORT = """query($c: ID) {
  subjectReport(customer: $c) { records { entity key values { name value } } }
}"""
UPDATE = """mutation($id: ID!, $input: CustomerInput!, $v: String) {
  updateCustomer(id: $id, input: $input, ifVersion: $v) { id address version }
}"""


@dataclass
class Held:
    """The demo systems, a gateway over them, and the people the CRM holds twice."""

    gateway: RunningGateway
    world: DemoWorld
    systems: DemoSystems
    twice: list[Person]

    def cuid(self, person: Person) -> str:
        return self.gateway.gateway.identity.by_record[("sales", str(person.sales_ids[0]))]

    def ids(self, person: Person) -> tuple[int, int]:
        """(primary, duplicate): the crosswalk's primary is the record linked first, the
        lowest id."""
        low, high = sorted(person.sales_ids)
        return low, high

    def orders(self, person: Person) -> list[Any]:
        return [o for o in self.world.sales.orders if o.customer_id in person.sales_ids]

    async def execute(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        engine = create_async_engine(self.systems.endpoints["sales"]["dsn"])
        try:
            async with engine.begin() as connection:
                result = await connection.execute(text(sql), params)
                return [dict(row) for row in result.mappings()] if result.returns_rows else []
        finally:
            await engine.dispose()


PRIMARY_UPDATED = "2025-01-01 00:00:00.000000"
DUPLICATE_UPDATED = "2026-06-01 00:00:00.000000"


@pytest.fixture(scope="module")
async def held(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Held]:
    """Systems of their own (their CRM records are edited): the first person held twice
    has a blank name on the primary record, and a newer address on the duplicate."""
    work = tmp_path_factory.mktemp("duplicates")
    async with DemoSystems(work, customers=200) as systems:
        twice = [p for p in systems.world.persons if len(p.sales_ids) == 2]
        assert len(twice) >= 2
        primary, duplicate = sorted(twice[0].sales_ids)
        engine = create_async_engine(systems.endpoints["sales"]["dsn"])
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE crm_customers SET full_name = '  ', updated_at = :at WHERE id = :id"),
                {"id": primary, "at": PRIMARY_UPDATED},
            )
            await connection.execute(
                text(
                    "UPDATE crm_customers SET full_name = 'Second Record', updated_at = :at, "
                    "address = 'Moved: 1 New Street, Shanghai' WHERE id = :id"
                ),
                {"id": duplicate, "at": DUPLICATE_UPDATED},
            )
        await engine.dispose()
        async with running_gateway(systems, work / "gateway") as gateway:
            yield Held(gateway, systems.world, systems, twice)


async def test_a_person_held_twice_shows_both_records_orders_and_the_declared_values(
    held: Held,
) -> None:
    person = held.twice[0]
    primary, duplicate = held.ids(person)
    crm = {c.id: c for c in held.world.sales.customers}
    gateway = held.gateway
    before = gateway.source_calls("sales")

    reply = await gateway.query(ONE, {"id": held.cuid(person)})

    assert reply.status == 200 and not reply.errors, reply.body
    # one call per entity (the customer record, its orders), both keys in each
    assert gateway.source_calls("sales") - before == 2
    customer = reply.data["customer"]
    expected = sorted(held.orders(person), key=lambda o: o.placed_at, reverse=True)
    assert {o.customer_id for o in expected} == {primary, duplicate}  # both hold orders
    assert [o["id"] for o in customer["orders"]] == [o.id for o in expected]
    # lifetimeValue @merge(rule: SUM): over both records
    total = crm[primary].lifetime_value + crm[duplicate].lifetime_value
    assert customer["lifetimeValue"] == pytest.approx(float(total))
    # name @merge(rule: FIRST_NON_EMPTY): the primary's is blank
    assert customer["name"] == "Second Record"
    # address @merge(rule: LATEST, by: "updated_at"): the duplicate was updated last
    assert customer["address"] == "Moved: 1 New Street, Shanghai"
    # email: no rule, so the primary record's (the one writes go to)
    assert customer["email"] == crm[primary].email.strip()


async def test_paging_applies_to_the_merged_list(held: Held) -> None:
    person = held.twice[0]
    reply = await held.gateway.query(NEWEST_TWO, {"id": held.cuid(person)})
    assert not reply.errors, reply.errors
    newest = sorted(held.orders(person), key=lambda o: o.placed_at, reverse=True)[:2]
    assert [o["id"] for o in reply.data["customer"]["orders"]] == [o.id for o in newest]


async def test_a_page_with_people_held_twice_makes_one_call_per_system(held: Held) -> None:
    gateway = held.gateway
    ordered = gateway.gateway.identity.ordered
    cuids = sorted(held.cuid(p) for p in held.twice)
    start = ordered.index(cuids[0])
    after = encode_cursor(ordered[start - 1]) if start else None
    page = """query($after: String) {
      customers(first: 50, after: $after) {
        edges { node { id lifetimeValue orders(first: 100) { id } tickets { id } segment } }
      }
    }"""
    sales = gateway.source_calls("sales")
    service = gateway.source_calls("service")
    marketing = gateway.source_calls("marketing")

    reply = await gateway.query(page, {"after": after})

    assert not reply.errors, reply.errors
    assert gateway.source_calls("sales") - sales == 2  # customer, orders: one call each
    assert gateway.source_calls("service") - service == 1
    assert gateway.source_calls("marketing") - marketing == 1
    nodes = {edge["node"]["id"]: edge["node"] for edge in reply.data["customers"]["edges"]}
    person = held.twice[0]
    assert len(nodes[held.cuid(person)]["orders"]) == len(held.orders(person))


async def test_a_customer_without_duplicates_answers_exactly_as_before(held: Held) -> None:
    """The same answers as a crosswalk that reads the primary records only (as before
    duplicates were read), for everyone but the people held twice."""
    gateway = held.gateway
    once = [p for p in held.world.persons if len(p.sales_ids) == 1][:15]
    query = ONE.replace("orders(first: 100)", "orders(first: 3)").replace(
        "version", "version phone segment satisfaction tickets { id status } consents { channel }"
    )

    async def answers() -> dict[str, Any]:
        found = {}
        for person in [*once, held.twice[0]]:
            reply = await gateway.query(query, {"id": held.cuid(person)})
            assert not reply.errors, reply.errors
            found[held.cuid(person)] = reply.data["customer"]
        return found

    merged = await answers()
    index = gateway.gateway.identity
    gateway.gateway.identity = dataclasses.replace(index, duplicates={})
    try:
        primary_only = await answers()
    finally:
        gateway.gateway.identity = index
    for person in once:
        assert merged[held.cuid(person)] == primary_only[held.cuid(person)]
    twice = held.cuid(held.twice[0])
    assert merged[twice]["lifetimeValue"] != primary_only[twice]["lifetimeValue"]


async def test_the_quality_report_counts_the_duplicates_the_crosswalk_links(held: Held) -> None:
    gateway = held.gateway.gateway
    links = await gateway.store.links()
    second = sum(1 for link in links if link.system == "sales" and not link.is_primary)
    report = await gateway.quality(record=False)
    duplicates = report.systems["sales"].identity.duplicates
    read = sum(len(by.get("sales", ())) for by in gateway.identity.duplicates.values())
    assert duplicates == second == read == len(held.twice)


async def test_merged_records_are_cached_under_their_own_keys(
    held: Held, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With the cache on, each record is cached as the system gave it: a second read is
    served from the cache, and the primary key still holds the primary's orders only."""
    person = held.twice[0]
    primary, _ = held.ids(person)
    overrides = {"cache.enabled": True, "cache.url": "memory://"}
    async with running_gateway(
        held.systems, tmp_path_factory.mktemp("cached"), overrides
    ) as gateway:
        cuid = gateway.gateway.identity.by_record[("sales", str(primary))]
        first = await gateway.query(ONE, {"id": cuid})
        before = gateway.source_calls("sales")
        again = await gateway.query(ONE, {"id": cuid})
        assert not first.errors and again.data == first.data
        assert gateway.source_calls("sales") == before  # both records from the cache
        report = await gateway.query(
            REPORT,
            {"c": cuid},
            headers=gateway.as_role("privacy", "rights", subject="dpo"),
        )
        # the report reads every bound sales entity: the two read above from the cache
        bound = {b.slot for b in gateway.gateway.bindings.customer.values() if b.source == "sales"}
        assert gateway.source_calls("sales") - before == len(bound) - 2
    assert not report.errors, report.errors
    cached = {
        value["value"]
        for record in report.data["subjectReport"]["records"]
        if (record["entity"], record["key"]) == ("orders", str(primary))
        for value in record["values"]
        if value["name"] == "id"
    }
    assert cached == {o.id for o in held.world.sales.orders if o.customer_id == primary}


async def test_a_write_goes_to_the_primary_record_and_reads_back(held: Held) -> None:
    person = held.twice[1]
    primary, duplicate = held.ids(person)
    gateway = held.gateway
    token = mint_token(
        gateway.gateway.config.auth, "manager", ["sales_manager"], ["sales"], amr=["pwd", "mfa"]
    )
    headers = {"authorization": f"Bearer {token}"}
    read = await gateway.query(ONE, {"id": held.cuid(person)}, headers=headers)
    assert not read.errors, read.errors
    was = await held.execute("SELECT address FROM crm_customers WHERE id = :id", id=duplicate)

    reply = await gateway.query(
        UPDATE,
        {
            "id": held.cuid(person),
            "input": {"address": "9 Written Road, Beijing"},
            "v": read.data["customer"]["version"],  # the primary record's version
        },
        headers=headers,
    )

    assert not reply.errors, reply.errors
    rows = await held.execute(
        "SELECT id, address FROM crm_customers WHERE id IN (:a, :b)", a=primary, b=duplicate
    )
    by_id = {row["id"]: row["address"] for row in rows}
    assert by_id == {primary: "9 Written Road, Beijing", duplicate: was[0]["address"]}
    # the written record is now the latest: address (LATEST by updated_at) reads it back
    assert reply.data["updateCustomer"]["address"] == "9 Written Road, Beijing"


# --- the merge itself, and its declaration ----------------------------------------------


def test_lists_are_joined_and_a_failure_is_the_whole_value() -> None:
    down = SourceUnavailable("sales", "timeout")
    assert merge_records([[{"id": 1}], None, [{"id": 2}]]) == [{"id": 1}, {"id": 2}]
    assert merge_records([[{"id": 1}], down]) is down
    assert merge_records([None, None]) is None
    only = {"id": 1}
    assert merge_records([only]) is only  # one record: as the system gave it


def test_each_rule_picks_its_value() -> None:
    records: list[dict[str, Any]] = [
        {"name": " ", "city": "Beijing", "ltv": Decimal("10.50"), "at": "2025-01-01T00:00:00"},
        {"name": "Wei", "city": "Shanghai", "ltv": Decimal("2.25"), "at": "2026-01-01 00:00:00"},
        {"name": "Zhang", "city": None, "ltv": None, "at": None},
    ]
    rules = EntityMerge(
        attributes={
            "name": ValueRule(MergeRule.FIRST_NON_EMPTY),
            "city": ValueRule(MergeRule.LATEST, "at"),
            "ltv": ValueRule(MergeRule.SUM),
        }
    )
    merged = merge_records(records, rules)
    assert merged == {
        "name": "Wei",
        "city": "Shanghai",
        "ltv": Decimal("12.75"),
        "at": records[0]["at"],
    }
    assert records[0]["name"] == " "  # the fetched records are not changed
    whole = EntityMerge(
        default=ValueRule(MergeRule.LATEST, "at"), attributes={"name": ValueRule(MergeRule.PRIMARY)}
    )
    assert merge_records(records, whole) == {**records[1], "name": " "}


def test_the_index_reads_every_linked_record_primary_first() -> None:
    keys = IdentityKeys(b"k" * 32)
    links = [
        Link("crm", "10", "cus_a", True, None, None),
        Link("crm", "100", "cus_a", False, None, None),
        Link("crm", "9", "cus_a", False, None, None),  # linked later (an incremental sync)
        Link("desk", "r1", "cus_a", True, None, None),
        Link("crm", "11", "cus_b", True, None, None),
    ]
    index = IdentityIndex.build(links, keys)
    assert index.links("cus_a") == {"crm": "10", "desk": "r1"}  # writes go to these
    assert index.duplicates == {"cus_a": {"crm": ("9", "100")}}  # cus_b: none


GRAPH = """
type Customer @merge(path: "crm.person", rule: LATEST, by: "updated_at") {{
  name: String @from(path: "crm.person.name") @policy(name: "customer.name") {name}
  {extra}
}}
"""


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("@merge(rule: LATEST)", "", "needs by"),
        ('@merge(rule: PRIMARY, by: "x")', "", "LATEST only"),
        ("@merge(rule: SUM)", "", "an Int or a Float"),
        (
            "",
            'visits: [String!] @from(path: "crm.visits") @merge(rule: PRIMARY) @public',
            "one-to-many",
        ),
        (
            "",
            'v: String @from(path: "crm.person.at") @version @merge(rule: PRIMARY) @public',
            "@version",
        ),
        (
            "@merge(rule: PRIMARY)",
            'n: String @from(path: "crm.person.name") @merge(rule: FIRST_NON_EMPTY) @public',
            "another rule",
        ),
    ],
)
def test_a_misplaced_merge_rule_is_refused_naming_the_line(
    name: str, extra: str, message: str
) -> None:
    with pytest.raises(DeclarationError, match=message) as caught:
        parse_declaration(GRAPH.format(name=name, extra=extra), "dept.graphql")
    assert caught.value.line is not None


def test_declared_rules_reach_the_bindings() -> None:
    text_ = GRAPH.format(
        name="@merge(rule: FIRST_NON_EMPTY)",
        extra='v: String @from(path: "crm.person.at") @version @public',
    )
    merges = build_graph(parse_declaration(text_, "dept.graphql")).bindings.merges
    rules = merges[("crm", "person")]
    assert rules.default == ValueRule(MergeRule.LATEST, "updated_at")
    assert rules.attributes == {
        "name": ValueRule(MergeRule.FIRST_NON_EMPTY),
        "at": ValueRule(MergeRule.PRIMARY),  # a write's version: the primary's
    }


def test_an_entity_rule_names_a_configured_one_to_one_entity() -> None:
    declaration = parse_declaration(
        'type Customer @merge(path: "crm.visits", rule: FIRST_NON_EMPTY) {\n'
        '  name: String @from(path: "crm.person.name") @public\n}',
        "dept.graphql",
    )
    person = EntitySpec("person", "id")
    check_bindings(declaration, {"crm": {"person": person, "visits": EntitySpec("visits", "p")}})
    many = {"crm": {"person": person, "visits": EntitySpec("visits", "p", many=True)}}
    with pytest.raises(BindingError, match=r"dept.graphql:1: Customer @merge\(path:\)"):
        check_bindings(declaration, many)
