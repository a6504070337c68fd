"""Loads planned before execution (resolvers/planning.py): started as soon as the operation
may execute, the same answer and the same access record as when the resolver starts them,
and nothing fetched for an operation that will not execute."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_execution import last_record
from test_graph import cuid_of, in_all_systems

import resolvers.planning
from demo.people import DemoWorld
from demo.systems import DemoSystems
from harness import RunningGateway, SourceAdmin, running_gateway
from resolvers.execution import PlainFieldExecutor

ONE = """query($id: ID!) { customer(id: $id) { id name email phone segment satisfaction
    consents { channel granted } tickets(first: 2) { id status } nationalId } }"""

FIELDS = """id name email phone segment satisfaction consents { channel granted }
    tickets(first: 2) { id status } nationalId"""

# $a and $b: two customers known to the helpdesk and marketing.
OPERATIONS = [
    "query($a: ID!) { customer(id: $a) { " + FIELDS + " } }",
    """query($a: ID!, $b: ID!) { first: customer(id: $a) { name ...T }
        second: customer(id: $b) { email tickets { id } } __typename }
        fragment T on Customer { tickets(first: 1) { subject } }""",
    """query($a: ID!, $yes: Boolean = true) { customer(id: $a) { id
        name @skip(if: $yes) phone @include(if: $yes) }
        ... on Query { customer(id: $a) { segment } } }""",
    # Unknown, then malformed: null, or BAD_USER_INPUT, as ever.
    '{ customer(id: "cus_0000000000000000") { name } }',
    '{ customer(id: "nope") { name } }',
    # Not planned (another root field): the loads started by the resolvers.
    "query($a: ID!) { customer(id: $a) { name } customers(first: 1) { edges { cursor } } }",
]


def _unplanned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolvers.planning, "plan_loads", lambda *args: {})


@pytest.mark.parametrize("role", ["sales", "marketing", "service"])
@pytest.mark.parametrize("operation", range(len(OPERATIONS)))
async def test_planned_loads_answer_and_record_as_the_resolvers_own(
    gateway: RunningGateway,
    demo_world: DemoWorld,
    monkeypatch: pytest.MonkeyPatch,
    role: str,
    operation: int,
) -> None:
    people = [p for p in demo_world.persons if p.requester_id and p.contact_id][:2]
    variables = {"a": await cuid_of(gateway, people[0]), "b": await cuid_of(gateway, people[1])}
    replies, logged = [], []
    for planned in (True, False):
        if not planned:
            _unplanned(monkeypatch)
        reply = await gateway.query(OPERATIONS[operation], variables, gateway.as_role(role))
        replies.append(reply.body)
        logged.append(await last_record(gateway))
    # Two root fields' errors come in the order their loads finish, planned or not.
    for reply in replies:
        reply.get("errors", []).sort(key=lambda error: str(error.get("path")))
    assert replies[0] == replies[1]
    assert "data" in replies[0]
    for key in ("fields", "customers", "policies", "outcome", "sources"):
        assert logged[0].get(key) == logged[1].get(key), key


async def test_planned_loads_start_before_execution(
    gateway: RunningGateway, demo_world: DemoWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    hub = gateway.gateway.hub
    fetch = hub.fetch

    async def fetching(source: str, *args: Any) -> Any:
        events.append(source)
        return await fetch(source, *args)

    execute = PlainFieldExecutor.execute_operation

    def executing(self: PlainFieldExecutor, *args: Any, **kwargs: Any) -> Any:
        events.append("execute")
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(hub, "fetch", fetching)
    monkeypatch.setattr(PlainFieldExecutor, "execute_operation", executing)
    cuid = await cuid_of(gateway, in_all_systems(demo_world))
    events.clear()
    reply = await gateway.query(ONE, {"id": cuid})
    assert not reply.errors
    assert sorted(events[:3]) == ["marketing", "sales", "service"]
    assert events[3:] == ["execute"]
    # With another root field the operation is not planned: its resolver starts the load.
    events.clear()
    both = "query($id: ID!) { customer(id: $id) { name } customers(first: 1) { edges { cursor } } }"
    reply = await gateway.query(both, {"id": cuid})
    assert not reply.errors
    assert events[0] == "execute" and "sales" in events
    # Nor with one that a directive skips: the root fields' names alone decide, before
    # the variables are coerced (graphql-core coerces them again to execute).
    coerced: list[Any] = []
    coerce = resolvers.planning.get_variable_values
    monkeypatch.setattr(
        resolvers.planning, "get_variable_values", lambda *a: coerced.append(a) or coerce(*a)
    )
    events.clear()
    skipped = both.replace("customers(first: 1)", "customers(first: 1) @skip(if: true)")
    reply = await gateway.query(skipped, {"id": cuid})
    assert not reply.errors and "customers" not in reply.data
    assert events[0] == "execute" and coerced == []
    events.clear()
    reply = await gateway.query(ONE, {"id": cuid})
    assert not reply.errors and events[-1] == "execute" and len(coerced) == 1


async def _calls(gateway: RunningGateway, sources: SourceAdmin) -> int:
    return int(gateway.source_calls("sales")) + sum(
        [await sources.calls(system) for system in ("service", "marketing")]
    )


REFUSED: list[tuple[dict[str, Any], str, Callable[[str], dict[str, Any]], str]] = [
    # The cost limit answers in the operation's place.
    ({"limits.max_cost": 3}, ONE, lambda cuid: {"id": cuid}, "QUERY_TOO_COMPLEX"),
    # A variable that does not coerce: graphql-core refuses the operation before it runs.
    (
        {},
        "query($id: ID!, $f: Boolean!) { customer(id: $id) @include(if: $f) { name } }",
        lambda cuid: {"id": cuid, "f": "yes"},
        "has invalid value",
    ),
    # A validation error: nothing executes.
    ({}, "query($id: ID!) { customer(id: $id) { name nope } }", lambda c: {"id": c}, "'nope'"),
]


@pytest.mark.parametrize(("overrides", "query", "variables", "expected"), REFUSED)
async def test_an_operation_that_does_not_execute_fetches_nothing(
    demo_systems: DemoSystems,
    tmp_path: Path,
    sources: SourceAdmin,
    demo_world: DemoWorld,
    overrides: dict[str, Any],
    query: str,
    variables: Callable[[str], dict[str, Any]],
    expected: str,
) -> None:
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        cuid = await cuid_of(gateway, in_all_systems(demo_world))
        await sources.reset()
        before = await _calls(gateway, sources)
        reply = await gateway.query(query, variables(cuid))
        after = await _calls(gateway, sources)
    assert reply.errors and not reply.body.get("data")
    assert expected in str(reply.errors)
    assert after == before


async def test_a_load_no_resolver_took_is_cancelled(
    gateway: RunningGateway, demo_world: DemoWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    cancelled: list[Any] = []
    cancel = resolvers.planning.CustomerLoad.cancel

    def noting(self: Any) -> None:
        cancelled.append(self)
        cancel(self)

    monkeypatch.setattr(resolvers.planning.CustomerLoad, "cancel", noting)
    cuid = await cuid_of(gateway, in_all_systems(demo_world))
    reply = await gateway.query(ONE, {"id": cuid})
    assert not reply.errors and cancelled == []  # its resolver took it
    # A resolver that does not take it starts its own load, and the planned one is
    # cancelled when execution ends.
    monkeypatch.setattr("resolvers.schema.take", lambda *args: None)
    again = await gateway.query(ONE, {"id": cuid})
    assert again.body == reply.body
    assert len(cancelled) == 1
    _, pending = await asyncio.wait(cancelled[0].calls, timeout=5)  # they end, not linger
    assert not pending
