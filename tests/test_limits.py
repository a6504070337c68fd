"""Query limits: each one just under and just over, rejected before any resolver runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import strawberry
from graphql import parse
from starlette.requests import Request

from demo import GRAPH_FILE
from gateway import limits
from gateway.app import Gateway
from gateway.config import parse_config
from gateway.demo import demo_config
from gateway.errors import ConfigError
from gateway.http.state import RequestState
from gateway.limits import (
    CostCache,
    CostEstimate,
    ParsedDocuments,
    QueryLimits,
    QueryTooComplex,
    alias_rule,
    check_batch,
    depth_rule,
    limit_extensions,
)
from policies.principal import Principal
from resolvers.graphs import load_graph
from resolvers.schema import build_schema

# The shipped floor (depth 12, aliases 30, tokens 2000) with the cost pinned at 5000,
# the number these tests count against (the shipped default is higher).
LIMITS = QueryLimits(max_cost=5000)


class Calls:
    count = 0


@strawberry.type
class Item:
    name: str = "x"

    @strawberry.field
    def children(self, first: int | None = 5) -> list[Item]:
        Calls.count += 1
        return [Item()] * (first or 0)

    @strawberry.field
    def tags(self) -> list[Item]:  # a list without `first`: default_list_size
        return [Item()]

    @strawberry.field
    def child(self) -> Item:
        return Item()


@strawberry.type
class Query:
    @strawberry.field
    def item(self) -> Item:
        Calls.count += 1
        return Item()


def small_schema(limits: QueryLimits) -> strawberry.Schema:
    return strawberry.Schema(Query, extensions=list(limit_extensions(limits)))


@pytest.fixture
def schema() -> strawberry.Schema:
    Calls.count = 0
    return small_schema(LIMITS)


async def run(schema: strawberry.Schema, query: str, **variables: Any) -> Any:
    return await schema.execute(query, variable_values=variables or None)


def rejected(result: Any, limit: str) -> str:
    """The request error's message, after checking its shape."""
    assert result.data is None
    [error] = result.errors
    assert error.extensions["code"] == "QUERY_TOO_COMPLEX"
    assert error.extensions["limit"] == limit
    assert error.path is None  # a request error: the view answers without `data`
    return str(error.message)


def nested(levels: int) -> str:
    """`{ item { child { ... { name } } } }` with the leaf `levels` levels deep."""
    return "{ item { " + "child { " * (levels - 1) + "name" + " }" * levels + " }"


async def test_depth_just_under_and_just_over(schema: strawberry.Schema) -> None:
    ok = await run(schema, nested(12))
    assert ok.errors is None and ok.data is not None

    over = await run(schema, nested(13))
    message = rejected(over, "depth")
    assert "13 levels" in message and "depth limit is 12" in message
    assert Calls.count == 1  # only the accepted query ran


async def test_depth_counts_through_fragments(schema: strawberry.Schema) -> None:
    def query(levels: int) -> str:  # the leaf `levels` deep, all but `item` in a fragment
        chain = "child { " * (levels - 1) + "name" + " }" * (levels - 1)
        return "{ item { ...Deep } } fragment Deep on Item { " + chain + " }"

    assert (await run(schema, query(12))).errors is None
    assert "13 levels" in rejected(await run(schema, query(13)), "depth")


def aliased(count: int) -> str:
    return "{ " + " ".join(f"a{i}: item {{ name }}" for i in range(count)) + " }"


async def test_aliases_just_under_and_just_over(schema: strawberry.Schema) -> None:
    ok = await run(schema, aliased(30))
    assert ok.errors is None and len(ok.data) == 30

    Calls.count = 0
    message = rejected(await run(schema, aliased(31)), "aliases")
    assert "31 aliases" in message and "alias limit is 30" in message
    assert Calls.count == 0


def tokens(count: int) -> str:
    # `{ item { name } }` is 6 tokens; comments count too, so padding with them is bounded.
    return "{ item { name } }\n" + "# padding\n" * (count - 6)


async def test_tokens_just_under_and_just_over(schema: strawberry.Schema) -> None:
    ok = await run(schema, tokens(2000))
    assert ok.errors is None

    Calls.count = 0
    message = rejected(await run(schema, tokens(2001)), "tokens")
    assert "more than 2000 tokens" in message
    assert Calls.count == 0


async def test_other_syntax_errors_stay_syntax_errors(schema: strawberry.Schema) -> None:
    result = await run(schema, "{ item { name }")
    assert result.data is None
    assert result.errors[0].message.startswith("Syntax Error")
    assert "code" not in (result.errors[0].extensions or {})


# item: 1 + (children: 1 + first x (name: 1)) = first + 2
COST = "query($n: Int) { item { children(first: $n) { name } } }"


@pytest.mark.parametrize(
    "query",
    [nested(12), nested(13), aliased(31), tokens(2001), "{ item { name }", "{ nothing }"],
    ids=["ok", "deep", "aliases", "tokens", "syntax", "invalid"],
)
async def test_a_remembered_document_is_judged_as_the_first_time(
    schema: strawberry.Schema, query: str
) -> None:
    first, again = await run(schema, query), await run(schema, query)
    assert first.data == again.data
    assert [e.formatted for e in first.errors or []] == [e.formatted for e in again.errors or []]


def test_documents_are_parsed_and_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    validations: list[Any] = []
    real = limits.validate_document

    def counting(schema: Any, document: Any, rules: Any) -> Any:
        validations.append(document)
        return real(schema, document, rules)

    monkeypatch.setattr(limits, "validate_document", counting)
    documents = ParsedDocuments(size=2)
    graph = small_schema(LIMITS)._schema
    text = "{ item { name } }"
    parsed = documents.parse(text, {"max_tokens": 10})
    same_text = "".join(["{ item { ", "name } }"])  # another str object
    assert documents.parse(same_text, {"max_tokens": 10}) is parsed
    assert documents.parse(text, {"max_tokens": 11}) is not parsed  # other options
    depth = depth_rule(LIMITS)
    assert documents.validate(graph, parsed, (depth,)) == []
    assert documents.validate(graph, parsed, (depth,)) == []
    assert documents.validate(graph, parsed, (depth, alias_rule(LIMITS))) == []
    assert len(validations) == 2  # once per document and rules
    documents.parse("{ a: item { name } }", {})  # the third text: the oldest goes
    assert documents.parse(text, {"max_tokens": 10}) is not parsed


async def test_cost_just_under_and_just_over(schema: strawberry.Schema) -> None:
    ok = await run(schema, COST, n=4998)
    assert ok.errors is None and len(ok.data["item"]["children"]) == 4998

    Calls.count = 0
    message = rejected(await run(schema, COST, n=4999), "cost")
    assert "estimated cost is 5001" in message and "cost limit is 5000" in message
    assert Calls.count == 0


@pytest.mark.parametrize(
    ("query", "variables", "cost"),
    [
        ("{ item { children(first: 7) { name } } }", {}, 9),  # a literal
        ("{ item { children { name } } }", {}, 7),  # the argument's default (5)
        ("query($n: Int = 3) { item { children(first: $n) { name } } }", {}, 5),
        ("query($n: Int) { item { children(first: $n) { name } } }", {}, 7),  # unset -> default
        ("{ item { tags { name } } }", {}, 12),  # a list without `first`: 10
        ("{ item { child { name } } }", {}, 3),  # a single object
        ("{ item { children(first: 2) { children(first: 3) { name } } } }", {}, 1 + 1 + 2 * 4),
        ("{ item { ...F } } fragment F on Item { children(first: 7) { name } }", {}, 9),
        ("{ item { __typename name } }", {}, 2),  # introspection counts nothing
    ],
)
async def test_cost_estimate(query: str, variables: dict[str, Any], cost: int) -> None:
    just = small_schema(QueryLimits(max_cost=cost))
    assert (await just.execute(query, variable_values=variables)).errors is None
    below = small_schema(QueryLimits(max_cost=cost - 1))
    assert f"estimated cost is {cost};" in rejected(
        await below.execute(query, variable_values=variables), "cost"
    )


async def test_a_fragment_bomb_is_measured_without_being_walked() -> None:
    # Each fragment uses the next twice: 2^40 aliased fields as executed, from 40 lines.
    fragments = " ".join(
        f"fragment F{i} on Item {{ a: child {{ ...F{i + 1} }} b: child {{ ...F{i + 1} }} }}"
        for i in range(40)
    )
    query = "{ item { ...F0 } } " + fragments + " fragment F40 on Item { name }"
    schema = small_schema(QueryLimits(max_depth=100, max_tokens=100_000))
    # The exact count of 2^41 - 2 aliases is only reachable with each fragment counted
    # once (memoised): walked, this test would not finish within any CI run.
    message = rejected(await schema.execute(query), "aliases")
    assert f"uses {2**41 - 2} aliases" in message


async def test_fragment_cycles_are_reported_by_validation_not_a_crash(
    schema: strawberry.Schema,
) -> None:
    query = (
        "{ item { ...A } } fragment A on Item { child { ...B } } "
        "fragment B on Item { child { ...A } }"
    )
    result = await run(schema, query)
    assert result.data is None
    assert any("Cannot spread fragment" in error.message for error in result.errors)


def test_batch_just_under_and_just_over() -> None:
    check_batch(10, LIMITS)
    with pytest.raises(QueryTooComplex) as raised:
        check_batch(11, LIMITS)
    error = raised.value.error()
    assert error.extensions == {"code": "QUERY_TOO_COMPLEX", "limit": "batch", "max": 10}
    assert "11 operations" in error.message and "batch limit is 10" in error.message


def test_limits_parse_from_their_table() -> None:
    assert QueryLimits.parse({}) == QueryLimits()
    assert QueryLimits.parse({"max_cost": 900, "max_depth": 8}) == QueryLimits(
        max_cost=900, max_depth=8
    )
    for table, message in [
        ({"max_detph": 3}, "limits.max_detph: unknown key"),
        ({"max_cost": 0}, "limits.max_cost: expected an integer >= 1"),
        ({"max_tokens": "2000"}, "limits.max_tokens: expected an integer >= 1"),
        ({"max_batch": True}, "limits.max_batch: expected an integer >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            QueryLimits.parse(table)


# --- the real schema ----------------------------------------------------------------------

# node: 1 + id, name, email + orders (1 + 10 x 4) + tickets (1 + 10 x 2) = 66
# edges (a connection's list): 1 + 66; customers: 1 + n x 67
PAGE = """query($n: Int) { customers(first: $n) { edges { node {
  id name email orders(first: 10) { id total status placedAt } tickets { id subject }
} } } }"""


@pytest.fixture
async def graph(tmp_path: Path) -> Any:
    """The gateway's schema with the shipped limits, and a context for a sales user; the
    identity index is empty, so an accepted query runs its resolvers and asks no system."""
    endpoints = {
        "sales": {"dsn": f"sqlite+aiosqlite:///{tmp_path}/sales.db"},
        "service": {"url": "http://127.0.0.1:9"},
        "marketing": {"url": "http://127.0.0.1:9/graphql"},
    }
    overrides = {"identity.dsn": f"sqlite+aiosqlite:///{tmp_path}/id.db", "cache.enabled": False}
    config = parse_config(demo_config(endpoints, port=0, overrides=overrides), base_dir=tmp_path)
    gateway = Gateway(config)
    request = Request({"type": "http", "method": "POST", "path": "/graphql", "headers": []})
    alice = Principal("alice", frozenset({"sales"}), "sales", ("sales",))
    state = RequestState("limits", principal=alice)
    schema = build_schema(
        load_graph(GRAPH_FILE),
        extensions=limit_extensions(LIMITS, page_size_cap=config.max_page_size),
    )
    try:
        yield lambda query, **variables: schema.execute(
            query, variable_values=variables, context_value=gateway.context(state, request)
        )
    finally:
        await gateway.stop()


async def test_cost_on_the_customer_graph(graph: Any) -> None:
    ok = await graph(PAGE, n=74)  # 1 + 74 x 67 = 4959
    assert ok.errors is None and ok.data == {"customers": {"edges": []}}

    message = rejected(await graph(PAGE, n=75), "cost")  # 1 + 75 x 67 = 5026
    assert "estimated cost is 5026" in message


async def test_an_oversized_page_stays_bad_user_input(graph: Any) -> None:
    # Counted at the graph's max_page_size (100): the resolver refuses it, as before.
    result = await graph("{ customers(first: 100000) { edges { cursor } } }")
    assert [e.extensions["code"] for e in result.errors] == ["BAD_USER_INPUT"]


def test_costs_are_remembered_by_the_variables_the_estimate_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph = small_schema(LIMITS)._schema
    text = "query Q($n: Int, $who: String) { item { children(first: $n) { name } } }"
    document = parse(text)
    real = CostEstimate.of_operation
    estimates: list[Any] = []

    def counting(*args: Any) -> int:
        estimates.append(args[3])
        return real(*args)

    monkeypatch.setattr(limits.CostEstimate, "of_operation", counting)
    cache = CostCache(per_document=2)

    def cost(doc: Any, **variables: Any) -> int:
        found = cache.cost(graph, doc, "Q", variables, 10, None)
        assert found == real(graph, doc, "Q", variables, 10, None)
        return found

    assert cost(document, n=3, who="a") == 1 + (1 + 3 * 1)  # item + children of n names
    assert cost(document, n=3, who="b") == 5  # `who` is no part of the cost: remembered
    assert len(estimates) == 1
    assert cost(document, n=50, who="a") == 1 + (1 + 50 * 1)
    assert cost(document, n=3) == 5
    assert cache.cost(graph, document, "Q", {"n": 3.0}, 10, None) == 5  # the Int 3: kept
    assert len(estimates) == 2
    # Not a value the executor will take (it refuses the request before anything runs):
    # estimated as if absent, and kept as that.
    absent = real(graph, document, "Q", {}, 10, None)
    assert cache.cost(graph, document, "Q", {"n": [3]}, 10, None) == absent
    assert cache.cost(graph, document, "Q", {"n": "3"}, 10, None) == absent
    assert len(estimates) == 3
    cost(document, n=7)  # a third combination: the document's entries start again
    cost(document, n=50)
    assert len(estimates) == 5
    cost(parse(text), n=3)  # another document (not the parser cache's): its own entry
    assert len(estimates) == 6
