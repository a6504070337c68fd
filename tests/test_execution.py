"""The plain-field executor answers exactly what graphql-core's own executor answers.

Each operation runs twice, through `PlainFieldExecutor` and through strawberry's default
execution context, and the two responses (data, errors, their paths and order) must be
equal: first on a small schema built to hit every irregular case (null in a non-null
field, an error value, a value the scalar refuses, a list that is not one, an interface),
then on the gateway itself over the demo systems, as several roles, with a system down.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest
import strawberry
from graphql import GraphQLError
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from demo import GRAPH_FILE
from gateway.audit.sinks import JsonlSink
from harness import RunningGateway, SourceAdmin
from resolvers.execution import (
    Irregular,
    PlainFieldExecutor,
    _constant,
    _Never,
    _object,
    _prepared_getter,
    _Read,
    _same,
    basic_field,
    leaf_completion,
)
from resolvers.graphs import load_graph
from resolvers.schema import build_schema


@strawberry.interface
class Named:
    name: str | None


@strawberry.type
class Tag:
    label: str
    weight: int | None = None


@strawberry.type
class Item(Named):
    id: strawberry.ID
    count: int
    tags: list[Tag] | None = None
    required_tags: list[Tag] = strawberry.field(default_factory=list)
    scores: list[int] | None = None
    note: str | None = None

    @strawberry.field
    def computed(self, times: int = 2) -> list[Tag]:
        return [Tag(label=f"{self.id}-{n}") for n in range(times)]


def _items() -> list[Any]:
    return [
        Item(id=strawberry.ID("1"), name="a", count=1, tags=[Tag(label="x", weight=1)]),
        Item(id=strawberry.ID("2"), name=None, count=2, tags=[], scores=[1, 2]),
        # A plain field holding an error value, as the policy guard leaves a denied one.
        Item(id=strawberry.ID("3"), name="c", count=3, note=GraphQLError("denied")),  # type: ignore[arg-type]
        # Null in a non-null field: the error and the null go up to the nullable list item.
        Item(id=strawberry.ID("4"), name="d", count=None),  # type: ignore[arg-type]
        # A value the Int scalar refuses, and a "list" that is not one.
        Item(id=strawberry.ID("5"), name="e", count="many", scores=7),  # type: ignore[arg-type]
        Item(id=strawberry.ID("6"), name="f", count=6, required_tags=[Tag(label=None)]),  # type: ignore[arg-type]
        # Errors below the item, in a nullable leaf of a list's object, and as a nullable
        # list: each becomes null and an error at its own path, the rest stays.
        Item(
            id=strawberry.ID("7"),
            name="g",
            count=7,
            tags=[Tag(label="y"), Tag(label="z", weight=GraphQLError("hidden"))],  # type: ignore[arg-type]
            scores=GraphQLError("no scores"),  # type: ignore[arg-type]
            note=GraphQLError("denied again"),  # type: ignore[arg-type]
        ),
    ]


@strawberry.type
class Query:
    @strawberry.field
    def items(self) -> list[Item | None]:
        return _items()

    @strawberry.field
    def named(self) -> list[Named]:
        return _items()[:2]

    @strawberry.field
    def first(self) -> Item:
        return _items()[0]

    @strawberry.field
    def broken(self) -> Item:
        return _items()[3]


SMALL = strawberry.Schema(query=Query, types=[Item])

SMALL_OPERATIONS = [
    "{ items { id name count note tags { label weight } scores } }",
    "{ items { n1: note id n2: note tags { w: weight label weight } scores s: scores } }",
    "{ first { tags { weight } } items { ...on Item { tags { label } } note } }",
    "{ items { __typename id renamed: name again: name name count } }",
    "{ items { ...F } } fragment F on Item { id tags { __typename label } }",
    "{ items { id requiredTags { label } } }",
    "{ items { id computed(times: 1) { label } computed2: computed { label weight } } }",
    "{ named { __typename name ... on Item { count } } }",
    "{ first { id count tags { label } } }",
    "{ broken { id count } }",
    "query($skip: Boolean!) { items { id name @skip(if: $skip) count @include(if: $skip) } }",
]


def _both(schema: strawberry.Schema, query: str, **kwargs: Any) -> tuple[Any, Any]:
    results = []
    for executor in (PlainFieldExecutor, StrawberryGraphQLCoreExecutionContext):
        schema.execution_context_class = executor
        result = schema.execute_sync(query, variable_values={"skip": True}, **kwargs)
        results.append((result.data, [e.formatted for e in result.errors or []]))
    return results[0], results[1]


@pytest.mark.parametrize("query", SMALL_OPERATIONS)
def test_the_same_response_as_graphql_core(query: str) -> None:
    fast, reference = _both(SMALL, query)
    assert fast == reference
    assert fast[0] is not None or fast[1]


def test_irregular_values_are_reported_as_graphql_core_reports_them() -> None:
    (data, errors), _ = _both(SMALL, SMALL_OPERATIONS[0])
    messages = " | ".join(error["message"] for error in errors)
    assert "denied" in messages
    assert "Cannot return null for non-nullable field Item.count." in messages
    assert "Int cannot represent non-integer value: 'many'" in messages
    assert data["items"][3] is None and data["items"][4] is None  # nulled by the errors
    assert data["items"][0]["tags"] == [{"label": "x", "weight": 1}]


class _Text(str):
    pass


_LEAF_VALUES: list[Any] = [
    *("", "x", _Text("sub"), True, False, 0, 1, -7, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1),
    *(1.5, -0.0, float("inf"), float("-inf"), float("nan"), 2.0**40, None, [], object()),
]


@pytest.mark.parametrize("type_name", ["String", "ID", "Boolean", "Float", "Int", "TicketStatus"])
def test_leaves_complete_as_their_type_coerces(type_name: str) -> None:
    # The fast paths (a value of the scalar's own Python type as itself, an enum member
    # by identity) answer what the coercion answers, or give up (graphql-core completes).
    graph = load_graph(GRAPH_FILE)
    type_ = build_schema(graph)._schema.type_map[type_name]
    values = [*_LEAF_VALUES, *graph.enums["TicketStatus"].type, "OPEN"]
    for non_null in (False, True):
        fast = leaf_completion(type_, non_null=non_null)
        for value in values:
            try:
                reference = type_.coerce_output_value(value)  # type: ignore[union-attr]
            except Exception:
                reference = Irregular
            if value is None:
                reference = Irregular if non_null else None
            elif reference is None:
                reference = Irregular
            try:
                answer = fast(value)
            except Exception:
                answer = Irregular
            assert answer == reference, (type_name, value)
            assert type(answer) is type(reference), (type_name, value)


def test_plain_selections_skip_the_per_field_machinery(monkeypatch: pytest.MonkeyPatch) -> None:
    infos: list[str] = []
    build = StrawberryGraphQLCoreExecutionContext.build_resolve_info

    def counting(self: Any, field_def: Any, nodes: Any, parent: Any, path: Any) -> Any:
        infos.append(f"{parent.name}.{nodes[0].name.value}")
        return build(self, field_def, nodes, parent, path)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "build_resolve_info", counting)
    query = "{ items { id name tags { label } } first { computed { label } } }"
    seen = {}
    for executor in (PlainFieldExecutor, StrawberryGraphQLCoreExecutionContext):
        SMALL.execution_context_class = executor
        infos.clear()
        assert not SMALL.execute_sync(query).errors
        seen[executor] = list(infos)
    # Only the fields with resolvers (this selection reads no irregular value).
    assert seen[PlainFieldExecutor] == ["Query.items", "Query.first", "Item.computed"]
    assert len(seen[StrawberryGraphQLCoreExecutionContext]) > 20  # one per field and item


def test_errors_in_nullable_fields_stay_in_the_compiled_completion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal the parent settled (an error value in a nullable field) is reported at
    its path and nulled by the compiled completion itself, so the object holding it does
    not fall back to graphql-core's per-field completion."""
    completed: list[str] = []
    complete = StrawberryGraphQLCoreExecutionContext.complete_object_value

    def counting(self: Any, return_type: Any, *args: Any) -> Any:
        completed.append(return_type.name)
        return complete(self, return_type, *args)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "complete_object_value", counting)
    SMALL.execution_context_class = PlainFieldExecutor
    result = SMALL.execute_sync("{ items { id note tags { label weight } scores } }")
    assert [(e.message, e.path) for e in result.errors or []] == [
        ("denied", ["items", 2, "note"]),
        (
            "Expected Iterable, but did not find one for field 'Item.scores'.",
            ["items", 4, "scores"],
        ),
        ("denied again", ["items", 6, "note"]),
        ("hidden", ["items", 6, "tags", 1, "weight"]),
        ("no scores", ["items", 6, "scores"]),
    ]
    assert result.data is not None
    assert result.data["items"][6] == {
        "id": "7",
        "note": None,
        "tags": [{"label": "y", "weight": None}, {"label": "z", "weight": None}],
        "scores": None,
    }
    # Items are graphql-core's to complete (Item implements an interface); the tag with
    # the refused weight is not: its list stayed compiled.
    assert "Item" in completed and "Tag" not in completed


def test_a_compiled_object_reads_inline_or_through_its_reader() -> None:
    class Source:
        label = "a label"
        count = 2
        prepared: ClassVar[dict[str, Any]] = {"later": 7}

    complete = _object(
        [
            ("__typename", _constant("Thing"), str, _same),
            ("label", _Read(lambda source: "never called", "value.label"), str, str.upper),
            ("upper", _Read(lambda source: source.label.upper().encode()), str, bytes.decode),
            ("count", _Read(lambda source: source.count * 2), _Never, lambda value: value + 1),
            ("later", _prepared_getter("later"), _Never, str),
        ]
    )
    completed = complete(Source())
    assert completed == {
        "__typename": "Thing",
        "label": "a label",  # read inline, and a str completes as itself
        "upper": "A LABEL",  # through its reader, and bytes through its completion
        "count": 5,
        "later": "7",
    }
    assert list(completed) == ["__typename", "label", "upper", "count", "later"]
    assert complete(None) is None
    with pytest.raises(Irregular):
        complete(GraphQLError("an error value where an object belongs"))
    Source.prepared = {}
    with pytest.raises(KeyError):  # not settled by the parent: the resolver runs
        complete(Source())


def test_only_attribute_reads_count_as_basic() -> None:
    fields = SMALL._schema.type_map["Item"].fields  # type: ignore[attr-defined]
    assert basic_field(fields["name"]) is not None
    assert basic_field(fields["computed"]) is None


@pytest.fixture
def each_executor(gateway: RunningGateway) -> Iterator[list[type]]:
    schema = gateway.gateway.schema
    original = schema.execution_context_class
    assert original is PlainFieldExecutor
    yield [PlainFieldExecutor, StrawberryGraphQLCoreExecutionContext]
    schema.execution_context_class = original


FIELDS = """id name email phone nationalId address lifetimeValue segment satisfaction
    consents { channel granted updatedAt __typename }
    tickets(first: 2) { id subject status openedAt closedAt satisfaction }
    orders(first: 2) { id total status placedAt }
    opportunities { id stage amount owner }"""

GATEWAY_OPERATIONS = [
    "{ customers(first: 30) { edges { cursor node { " + FIELDS + " } } "
    "pageInfo { hasNextPage endCursor } } }",
    "{ customers(first: 10) { edges { n: node { ...C k: id } } } } "
    "fragment C on Customer { __typename id e: email name name tickets(status: CLOSED) { id } }",
    '{ customer(id: "c_does_not_exist") { id name } }',
    "{ customers(first: 5) { edges { node { id name @skip(if: true) email @include(if: false) "
    "... on Customer @skip(if: false) { phone tickets @include(if: true) { id } } } } } }",
]


async def last_record(gateway: RunningGateway) -> dict[str, Any]:
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    return [r for _, r in sink.lines() if r is not None and r["kind"] == "access"][-1]


@pytest.mark.parametrize("role", ["sales", "service", "marketing", "sales_manager", "security"])
@pytest.mark.parametrize("operation", range(len(GATEWAY_OPERATIONS)))
async def test_the_gateway_answers_the_same_through_either_executor(
    gateway: RunningGateway, each_executor: list[type], role: str, operation: int
) -> None:
    replies, logged = [], []
    for executor in each_executor:
        gateway.gateway.schema.execution_context_class = executor
        reply = await gateway.query(GATEWAY_OPERATIONS[operation], headers=gateway.as_role(role))
        assert reply.status == 200
        replies.append(reply.body)
        logged.append(await last_record(gateway))
    assert replies[0] == replies[1]
    # The same decision on every field of every customer in the access log, whether the
    # parent settled a field for all siblings or each customer's resolver decided it.
    for key in ("fields", "customers", "policies", "outcome"):
        assert logged[0][key] == logged[1][key]


async def test_the_same_answer_for_a_rep_who_owns_some_of_the_page(
    gateway: RunningGateway, each_executor: list[type]
) -> None:
    """`opportunities` as a sales rep: allowed on the accounts the rep owns, FORBIDDEN on
    the others, so siblings differ from the customer whose resolver settled the field."""
    page = "{ customers(first: 30) { edges { node { id opportunities { id owner } } } } }"
    everything = await gateway.query(page, headers=gateway.as_role("sales_manager"))
    owners = Counter(
        opportunity["owner"]
        for edge in everything.data["customers"]["edges"]
        for opportunity in edge["node"]["opportunities"] or []
    )
    rep = owners.most_common(1)[0][0]
    replies, logged = [], []
    for executor in each_executor:
        gateway.gateway.schema.execution_context_class = executor
        reply = await gateway.query(page, headers=gateway.as_role("sales", subject=rep))
        replies.append(reply.body)
        logged.append(await last_record(gateway))
    opportunities = [
        edge["node"]["opportunities"] for edge in replies[0]["data"]["customers"]["edges"]
    ]
    assert any(opportunities) and None in opportunities  # owned and not, on one page
    assert replies[0] == replies[1]
    assert logged[0]["fields"] == logged[1]["fields"]


async def test_the_same_partial_answer_with_a_system_down(
    gateway: RunningGateway, each_executor: list[type], sources: SourceAdmin
) -> None:
    await sources.fault("service", "error")
    replies = []
    for executor in each_executor:
        gateway.gateway.schema.execution_context_class = executor
        reply = await gateway.query(GATEWAY_OPERATIONS[0])
        replies.append(reply.body)
    assert "SOURCE_UNAVAILABLE" in str(replies[0]["errors"])
    assert replies[0] == replies[1]


async def test_a_skipped_field_is_neither_fetched_nor_decided(gateway: RunningGateway) -> None:
    query = """query($skip: Boolean!) { customers(first: 3) { edges { node {
        id segment nationalId @skip(if: $skip) ...F } } } }
        fragment F on Customer { phone @include(if: false) }"""
    reply = await gateway.query(query, {"skip": True})
    assert reply.status == 200 and not reply.errors
    fields = (await last_record(gateway))["fields"]
    assert len(fields) == 3
    assert all(set(decided) == {"segment"} for decided in fields.values())


@pytest.mark.parametrize("arguments", ["", "(first: 5)"])  # settled by the parent, or not
async def test_timestamps_are_parsed_only_where_selected_or_sorted_by(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch, arguments: str
) -> None:
    """A ticket's openedAt orders the list, so it is always read; its closedAt and a
    consent's updatedAt only when the query selects them (under any alias or fragment)."""
    parsed: list[Any] = []

    def counting(parse: Any) -> Any:
        def count(value: Any) -> Any:
            parsed.append(value)
            return parse(value)

        return count

    for record in gateway.gateway.graph.records.values():
        for name in [f.name for f in record.decl.fields if f.type.name == "DateTime"]:
            monkeypatch.setitem(record.base, name, counting(record.base[name]))
        monkeypatch.setattr(record, "_readers", {})
    page = "{ customers(first: 30) { edges { node { id tickets" + arguments + " { id %s }"
    page += " consents { channel %s } } } } }"
    counts, replies = [], []
    for below in (("", ""), ("closedAt", "... on Consent { when: updatedAt }")):
        parsed.clear()
        reply = await gateway.query(page % below)
        assert reply.status == 200 and not reply.errors
        counts.append(len(parsed))
        replies.append([edge["node"] for edge in reply.data["customers"]["edges"]])
    plain, dated = replies
    closed = [t["closedAt"] for c in dated for t in c["tickets"] or [] if t["closedAt"]]
    consents = [c for customer in dated for c in customer["consents"] or []]
    assert closed and consents and all(isinstance(c["when"], str) for c in consents)
    assert counts[1] - counts[0] >= len(closed) + len(consents)
    assert plain == [
        {
            "id": c["id"],
            "tickets": [{"id": t["id"]} for t in c["tickets"]] if c["tickets"] else c["tickets"],
            "consents": [{"channel": k["channel"]} for k in c["consents"] or []] or c["consents"],
        }
        for c in dated
    ]


async def test_plans_are_compiled_once_per_document_unless_variables_shape_it(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[str] = []
    compile_ = PlainFieldExecutor._compile

    def counting(self: PlainFieldExecutor, type_: Any, field_details: Any) -> Any:
        compiled.append(str(type_))
        return compile_(self, type_, field_details)

    monkeypatch.setattr(PlainFieldExecutor, "_compile", counting)
    fixed = "{ customers(first: 4) { edges { node { id consents { channel } } } } }"
    shaped = (
        "query($s: Boolean!) { customers(first: 4) { edges { node { id "
        "consents @skip(if: $s) { channel } } } } }"
    )
    counts = []
    for query, variables in [(fixed, None), (fixed, None), (shaped, {"s": False})] * 2:
        compiled.clear()
        reply = await gateway.query(query, variables)
        assert reply.status == 200 and not reply.errors
        counts.append(len(compiled))
    first, again, conditional, third, _, conditional_again = counts
    assert first > 0 and again == 0 and third == 0
    assert conditional > 0 and conditional_again > 0


async def test_a_page_leaves_its_customers_to_reference_counting(gateway: RunningGateway) -> None:
    """Nothing of a page waits for the cyclic collector (whose full passes stalled the
    gateway 60-90 ms when every page did): the context lets go of it once answered."""
    query = "{ customers(first: 20) { edges { node { id name tickets { id } } } } }"
    await gateway.query(query)
    await asyncio.sleep(0.05)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        reply = await gateway.query(query)
        assert reply.status == 200 and not reply.errors
        await asyncio.sleep(0.05)
        gc.collect()
        kinds = {type(garbage).__name__ for garbage in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not kinds & {"Customer", "Ticket", "CustomerBatch", "Request"}


BARE = "{ %s { id tickets { id status openedAt } orders { id placedAt } opportunities { id } } }"
SPELLED = (
    "{ %s { id tickets(status: null, first: 10) { id status openedAt } "
    "orders(first: 10) { id placedAt } opportunities { id: id } } }"
)


@pytest.mark.parametrize("role", ["sales", "marketing", "sales_manager"])
@pytest.mark.parametrize("root", ['customer(id: "%s")', "customers(first: 12) { edges { node"])
async def test_a_parent_settles_fields_without_arguments_as_their_resolvers_would(
    gateway: RunningGateway, role: str, root: str
) -> None:
    """Bare `tickets`/`orders` are settled by the parent; spelled with the same
    arguments, by the first customer's resolver (and, on a page, its siblings)."""
    if root.startswith("customer("):
        page = await gateway.query(
            "{ customers(first: 30) { edges { node { id tickets { id } orders { id } } } } }"
        )
        nodes = [edge["node"] for edge in page.data["customers"]["edges"]]
        root = root % next(n["id"] for n in nodes if n["tickets"] and n["orders"])
        close = ""
    else:
        close = " } } "
    replies, logged = [], []
    for template in (BARE, SPELLED):
        query = (template % root).replace(" } } }", " } }" + close + " }", 1)
        reply = await gateway.query(query, headers=gateway.as_role(role, subject="rep-003"))
        assert reply.status == 200
        for error in reply.body.get("errors", []):
            error.pop("locations")  # the two texts differ
        replies.append(reply.body)
        logged.append(await last_record(gateway))
    assert replies[0] == replies[1]
    assert logged[0]["fields"] == logged[1]["fields"]
    shown = orjson.dumps(replies[0]["data"]).decode()
    if role == "marketing":  # tickets and orders denied: a FORBIDDEN error each
        assert {e["path"][-1] for e in replies[0]["errors"]} >= {"tickets", "orders"}
    else:
        assert '"status":"' in shown and '"placedAt":"' in shown


async def test_denied_fields_are_reported_without_running_their_resolvers(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As marketing, nationalId, tickets and orders are denied outright: the parent
    settles the refusal for every customer and the executor reports it at each path,
    so no Customer field of the page needs its resolver (nor a ResolveInfo)."""
    infos: Counter[str] = Counter()
    build = StrawberryGraphQLCoreExecutionContext.build_resolve_info

    def counting(self: Any, field_def: Any, nodes: Any, parent: Any, path: Any) -> Any:
        infos[f"{parent.name}.{nodes[0].name.value}"] += 1
        return build(self, field_def, nodes, parent, path)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "build_resolve_info", counting)
    query = (
        "{ customers(first: 20) { edges { node { id phone nationalId "
        "tickets { id } orders(first: 2) { id } } } } }"
    )
    reply = await gateway.query(query, headers=gateway.as_role("marketing"))
    refused = Counter(error["path"][-1] for error in reply.errors)
    assert refused == {"nationalId": 20, "tickets": 20, "orders": 20}
    assert {e["extensions"]["code"] for e in reply.errors} == {"FORBIDDEN"}
    assert not [name for name in infos if name.startswith("Customer.")]
    fields = (await last_record(gateway))["fields"]
    assert all(
        decided == {"phone": "mask", "nationalId": "deny", "tickets": "deny", "orders": "deny"}
        for decided in fields.values()
    ), fields
