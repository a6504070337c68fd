"""The live Customer graph over HTTP: one query, three department systems."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from demo.people import DemoWorld, Person
from demo.systems import DemoSystems
from harness import RunningGateway, SourceAdmin, running_gateway
from policies.masks import mask_national_id

ALL_SYSTEMS = """
query One($id: ID!) {
  customer(id: $id) {
    id name email phone nationalId address lifetimeValue
    orders(first: 3) { id placedAt total status }
    tickets { id subject status satisfaction openedAt closedAt }
    satisfaction segment consents { channel granted updatedAt }
  }
}"""

PAGE = """
query Page($first: Int, $after: String) {
  customers(first: $first, after: $after) {
    edges { cursor node { id name email segment consents { channel } tickets { id } } }
    pageInfo { hasNextPage endCursor }
  }
}"""


def in_all_systems(world: DemoWorld) -> Person:
    return next(
        p
        for p in world.persons
        if len(p.sales_ids) == 1 and p.requester_id and p.contact_id and not p.marketing_conflict
    )


async def cuid_of(gateway: RunningGateway, person: Person) -> str:
    reply = await gateway.query(
        "query($e: String!) { customerByEmail(email: $e) { id } }", {"e": person.email}
    )
    return str(reply.data["customerByEmail"]["id"])


async def test_one_customer_is_assembled_from_all_three_systems(
    gateway: RunningGateway, demo_world: DemoWorld
) -> None:
    person = in_all_systems(demo_world)
    crm = next(c for c in demo_world.sales.customers if c.id == person.sales_ids[0])
    contact = next(c for c in demo_world.marketing.contacts if c.id == person.contact_id)
    tickets = [t for t in demo_world.service.tickets if t.requester_id == person.requester_id]

    reply = await gateway.query(ALL_SYSTEMS, {"id": await cuid_of(gateway, person)})

    assert reply.status == 200 and not reply.errors, reply.body
    customer = reply.data["customer"]
    assert customer["name"] == crm.full_name.strip()
    assert customer["email"] == crm.email.strip()
    assert customer["nationalId"] == mask_national_id(crm.national_id)  # sales: masked
    assert customer["lifetimeValue"] == pytest.approx(float(crm.lifetime_value))
    assert customer["segment"] == contact.segment
    assert {c["channel"]: c["granted"] for c in customer["consents"]} == {
        c.channel: c.granted for c in contact.consents
    }
    assert sorted(t["id"] for t in customer["tickets"]) == sorted(t.id for t in tickets)[:10]
    placed = [o["placedAt"] for o in customer["orders"]]
    assert placed == sorted(placed, reverse=True)


async def test_a_page_of_customers_makes_one_call_per_source(
    gateway: RunningGateway, sources: SourceAdmin
) -> None:
    for first in (50, 100):
        await sources.reset()
        sales_before = gateway.source_calls("sales")
        reply = await gateway.query(PAGE, {"first": first})
        assert not reply.errors, reply.errors
        assert len(reply.data["customers"]["edges"]) == first
        assert gateway.source_calls("sales") - sales_before == 1
        assert await sources.calls("service") == 1
        assert await sources.calls("marketing") == 1


async def test_nested_orders_are_one_more_batched_call_to_sales(gateway: RunningGateway) -> None:
    before = gateway.source_calls("sales")
    reply = await gateway.query(
        "{ customers(first: 100) { edges { node { name orders(first: 2) { id total } } } } }"
    )
    assert not reply.errors
    assert gateway.source_calls("sales") - before == 2  # one per nesting level


async def test_cursor_pagination_walks_forward_without_overlap(gateway: RunningGateway) -> None:
    first = await gateway.query(PAGE, {"first": 3})
    page = first.data["customers"]
    assert page["pageInfo"]["hasNextPage"] is True
    second = await gateway.query(PAGE, {"first": 3, "after": page["pageInfo"]["endCursor"]})
    ids_1 = [e["node"]["id"] for e in page["edges"]]
    ids_2 = [e["node"]["id"] for e in second.data["customers"]["edges"]]
    assert len(set(ids_1 + ids_2)) == 6
    assert ids_1 + ids_2 == sorted(ids_1 + ids_2)


async def test_last_page_says_there_is_no_next(gateway: RunningGateway) -> None:
    total = len(gateway.gateway.identity)
    cursor = None
    seen = 0
    while True:
        reply = await gateway.query(
            "query($after: String) { customers(first: 100, after: $after) "
            "{ edges { node { id } } pageInfo { hasNextPage endCursor } } }",
            {"after": cursor},
        )
        page = reply.data["customers"]
        seen += len(page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        cursor = page["pageInfo"]["endCursor"]
    assert seen == total


async def test_customer_by_email_matches_messy_spellings(
    gateway: RunningGateway, demo_world: DemoWorld
) -> None:
    person = in_all_systems(demo_world)
    expected = await cuid_of(gateway, person)
    messy = "  " + person.email.upper() + " "
    reply = await gateway.query(
        "query($e: String!) { customerByEmail(email: $e) { id } }", {"e": messy}
    )
    assert reply.data["customerByEmail"]["id"] == expected
    unknown = await gateway.query('{ customerByEmail(email: "nobody@nowhere.example") { id } }')
    assert unknown.data == {"customerByEmail": None} and not unknown.errors


async def test_segment_filter_returns_only_that_segment(gateway: RunningGateway) -> None:
    reply = await gateway.query(
        '{ customers(first: 100, segment: "vip") { edges { node { id segment } } } }'
    )
    segments = {edge["node"]["segment"] for edge in reply.data["customers"]["edges"]}
    assert segments == {"vip"}


@pytest.mark.parametrize(
    ("query", "argument"),
    [
        ('{ customer(id: "42; DROP TABLE crm_customers") { id } }', "id"),
        ('{ customer(id: "cus_") { id } }', "id"),
        ("{ customers(first: -1) { edges { cursor } } }", "first"),
        ("{ customers(first: 100000) { edges { cursor } } }", "first"),
        ('{ customers(after: "not-a-cursor") { edges { cursor } } }', "after"),
        ('{ customerByEmail(email: "no-at-sign") { id } }', "email"),
    ],
)
async def test_malformed_arguments_are_bad_user_input(
    gateway: RunningGateway, query: str, argument: str
) -> None:
    reply = await gateway.query(query)
    assert reply.status == 200
    assert reply.codes() == ["BAD_USER_INPUT"]
    assert reply.errors[0]["extensions"]["argument"] == argument
    assert "Traceback" not in orjson.dumps(reply.body).decode()


async def test_unknown_but_wellformed_id_is_null_without_error(gateway: RunningGateway) -> None:
    reply = await gateway.query('{ customer(id: "cus_aaaaaaaaaaaaaaaa") { id name } }')
    assert reply.body == {"data": {"customer": None}}


async def test_malformed_json_is_400_with_a_graphql_error_body(gateway: RunningGateway) -> None:
    reply = await gateway.post(b'{"query": "{ customers { ')
    assert reply.status == 400
    assert reply.errors and "data" not in reply.body
    assert reply.errors[0]["message"]


async def test_unknown_field_is_a_validation_error_without_data(gateway: RunningGateway) -> None:
    reply = await gateway.query("{ customers { edges { node { shoeSize } } } }")
    assert reply.status == 200  # application/json: GraphQL-over-HTTP keeps 200
    assert "data" not in reply.body
    assert "shoeSize" in reply.errors[0]["message"]
    strict = await gateway.query(
        "{ customers { edges { node { shoeSize } } } }",
        headers={"accept": "application/graphql-response+json"},
    )
    assert strict.status == 400
    assert strict.headers["content-type"].startswith("application/graphql-response+json")
    assert "data" not in strict.body


async def test_oversized_body_is_413(gateway: RunningGateway) -> None:
    limit = gateway.gateway.config.server.max_body_bytes
    reply = await gateway.post(orjson.dumps({"query": "{ __typename }", "pad": "x" * limit}))
    assert reply.status == 413
    assert reply.errors[0]["extensions"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize(("system", "mode"), [("service", "error"), ("marketing", "garbage")])
async def test_a_failing_system_nulls_its_fields_with_one_error(
    gateway: RunningGateway, sources: SourceAdmin, system: str, mode: str
) -> None:
    await sources.fault(system, mode)
    reply = await gateway.query(PAGE, {"first": 20})
    assert reply.status == 200
    assert reply.codes() == ["SOURCE_UNAVAILABLE"]
    assert reply.errors[0]["extensions"]["source"] == system
    assert reply.errors[0]["path"][:3] == ["customers", "edges", 0]
    nodes = [edge["node"] for edge in reply.data["customers"]["edges"]]
    assert len(nodes) == 20
    failed_field = "tickets" if system == "service" else "segment"
    assert all(node[failed_field] is None for node in nodes)
    assert any(node["name"] for node in nodes)  # sales still answered
    text = orjson.dumps(reply.body).decode()
    assert "503" not in text and "<html" not in text  # the reason stays in the gateway's log


async def test_a_hanging_system_times_out_into_source_unavailable(
    demo_systems: DemoSystems, sources: SourceAdmin, tmp_path: Path
) -> None:
    overrides = {"sources.service.timeout_ms": 300}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        await sources.fault("service", "hang")
        reply = await gateway.query(PAGE, {"first": 5})
    assert reply.codes() == ["SOURCE_UNAVAILABLE"]
    assert reply.errors[0]["extensions"]["source"] == "service"
    assert all(edge["node"]["name"] for edge in reply.data["customers"]["edges"])


async def test_sales_database_down(demo_systems: DemoSystems, tmp_path: Path) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        gateway.gateway.hub.connectors["sales"].dsn = "sqlite+aiosqlite:////nonexistent/dir/x.db"  # type: ignore[attr-defined]
        await gateway.gateway.hub.connectors["sales"].close()
        reply = await gateway.query(PAGE, {"first": 5})
        ready_status, ready = await gateway.get("/readyz")
    assert reply.status == 200
    assert reply.codes() == ["SOURCE_UNAVAILABLE"]
    assert reply.errors[0]["extensions"]["source"] == "sales"
    assert all(edge["node"]["segment"] for edge in reply.data["customers"]["edges"])
    assert ready_status == 503
    assert orjson.loads(ready)["sources"]["sales"]["ok"] is False


async def test_independent_sources_are_called_concurrently(
    demo_systems: DemoSystems, sources: SourceAdmin, tmp_path: Path, demo_world: DemoWorld
) -> None:
    overrides = {"sources.sales.simulated_latency_ms": 100}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        await sources.fault("service", "ok", latency_ms=100)
        await sources.fault("marketing", "ok", latency_ms=100)
        cuid = await cuid_of(gateway, in_all_systems(demo_world))
        calls: list[tuple[str, float, float]] = []
        hub = gateway.gateway.hub
        original = hub.fetch

        async def recording(source: str, *args: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(source, *args)
            finally:
                calls.append((source, started, time.perf_counter()))

        hub.fetch = recording  # type: ignore[method-assign]
        reply = await gateway.query(
            "query($id: ID!) { customer(id: $id) { name tickets { id } segment } }", {"id": cuid}
        )
    assert not reply.errors
    assert sorted(source for source, _, _ in calls) == ["marketing", "sales", "service"]
    latest_start = max(start for _, start, _ in calls)
    earliest_end = min(end for _, _, end in calls)
    assert latest_start < earliest_end, "every source call overlaps every other"


async def test_the_slowest_system_is_called_first(
    demo_systems: DemoSystems, sources: SourceAdmin, tmp_path: Path, demo_world: DemoWorld
) -> None:
    # The calls are set up one after the other; the one the answer waits for goes first.
    query = "query($id: ID!) { customer(id: $id) { name tickets { id } segment } }"
    async with running_gateway(demo_systems, tmp_path, {"cache.enabled": False}) as gateway:
        await sources.fault("service", "ok", latency_ms=60)
        cuid = await cuid_of(gateway, in_all_systems(demo_world))
        hub = gateway.gateway.hub
        await gateway.query(query, {"id": cuid})  # the hub learns how long each takes
        learned = {name: hub.expected_latency_s(name) for name in ("sales", "service")}
        started: list[str] = []
        original = hub.fetch

        async def recording(source: str, *args: Any) -> Any:
            started.append(source)
            return await original(source, *args)

        hub.fetch = recording  # type: ignore[method-assign]
        # ...and its HTTP request is the first to be made, not queued behind the others'
        # (a task of its own, say, would start after them).
        asked: list[str] = []
        for name in ("service", "marketing"):
            client = hub.connectors[name].client  # type: ignore[attr-defined]
            client.request_json = _noting(asked, name, client.request_json)
        reply = await gateway.query(query, {"id": cuid})
    assert not reply.errors
    assert learned["service"] >= 0.06 > learned["sales"]
    assert started[0] == "service", started  # alphabetically last, called first
    assert sorted(started) == ["marketing", "sales", "service"]
    assert asked == ["service", "marketing"]


def _noting(
    asked: list[str], name: str, request: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def noted(*args: Any, **kwargs: Any) -> Any:
        asked.append(name)
        return await request(*args, **kwargs)

    return noted


async def test_health_readiness_and_metrics(gateway: RunningGateway) -> None:
    assert (await gateway.get("/healthz"))[0] == 200
    status, body = await gateway.get("/readyz")
    ready = orjson.loads(body)
    assert status == 200 and ready["status"] == "ready"
    assert set(ready["sources"]) == {"sales", "service", "marketing"}
    await gateway.query("{ customers(first: 1) { edges { node { name } } } }")
    status, text = await gateway.get("/metrics")
    for name in (
        "c360_requests_total",
        "c360_request_duration_seconds",
        'c360_source_requests_total{source="sales"}',
        "c360_source_errors_total",
    ):
        assert name in text


async def test_readyz_is_503_when_a_required_system_is_down(
    gateway: RunningGateway, sources: SourceAdmin
) -> None:
    await sources.fault("marketing", "error")
    status, body = await gateway.get("/readyz")
    assert status == 503
    assert orjson.loads(body)["sources"]["marketing"]["ok"] is False


async def test_graphiql_for_a_browser(gateway: RunningGateway) -> None:
    status, html = await gateway.get("/graphql", headers={"accept": "text/html"})
    assert status == 200 and "graphiql" in html.lower()


async def test_many_concurrent_requests_all_succeed(gateway: RunningGateway) -> None:
    replies = await asyncio.gather(*(gateway.query(PAGE, {"first": 10}) for _ in range(20)))
    assert all(r.status == 200 and not r.errors for r in replies)


@pytest.mark.parametrize(
    "body", [b"null", b"[1, 2]", b'"a string"', b"\x80", b"\xff\xfe{}", b"42", b"[]"]
)
async def test_json_that_is_not_a_request_is_400(gateway: RunningGateway, body: bytes) -> None:
    """Found by the fuzz run: these used to be 500s."""
    reply = await gateway.post(body)
    assert reply.status == 400
    assert reply.errors[0]["extensions"]["code"] == "BAD_REQUEST"
