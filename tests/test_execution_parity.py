"""Random operations over the declared graph answer the same through either executor.

Hypothesis draws GraphQL operations from the graph declaration itself (demo/graph.graphql:
its types, fields, arguments and enums), with aliases (the same field twice under two
keys, with different arguments), inline and named fragments, @skip/@include on literals
and variables, variables for arguments (given, null, left out, defaulted), __typename,
and the roots `customers(first: N)`, `customer(id:)` and the declared lookups, with real
keys and unknown ones. Each operation runs through `PlainFieldExecutor` and through
strawberry's default execution context, as each demo role, and the gateway must answer
exactly the same: the response body, and the access record's decisions.

Hypothesis drives a sync test in a worker thread; each example's requests run on the
session's event loop (where the gateway serves), so a failure shrinks to a minimal
operation like any other property.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from demo import GRAPH_FILE
from gateway.audit.sinks import JsonlSink
from harness import RunningGateway, SourceAdmin
from resolvers.declaration import ROOT, FieldDecl, TypeRef, load_declaration
from resolvers.execution import PlainFieldExecutor

DECLARATION = load_declaration(GRAPH_FILE)
ROLES = ("sales", "service", "marketing", "sales_manager", "security")
EXECUTORS = (PlainFieldExecutor, StrawberryGraphQLCoreExecutionContext)
RECORDED = ("fields", "customers", "policies", "outcome")
UNKNOWN_CUID = "c_does_not_exist"

# Operations per role (and per system down), besides EXPLICIT: the file runs in ~30 s
# on 2 cores. A failure shrinks (up to a few minutes) to a minimal operation.
EXAMPLES = 150
EXAMPLES_SYSTEM_DOWN = 50


def _system(f: FieldDecl) -> str | None:
    """The system a Customer field comes from (`@from(path: "system.entity…")`, or the
    field a derived one reads)."""
    if f.derive is not None:
        source = DECLARATION.root.field(f.derive.source)
        return None if source is None else _system(source)
    return f.path.split(".")[0] if f.path and "." in f.path else None


def _fields(type_name: str) -> list[FieldDecl]:
    """A declared type's fields; on the root also the core's `id` (the CUID), which the
    demo does not declare."""
    fields = list(DECLARATION.types[type_name].fields)
    if type_name == ROOT and DECLARATION.root.field("id") is None:
        fields.insert(0, FieldDecl("id", TypeRef("ID", non_null=True), None))
    return fields


@dataclass
class Known:
    """Real values to look things up by, read from the gateway once."""

    cuids: list[str]
    keys: dict[str, list[str]]  # a lookup's guard field -> values customers have
    members: list[str]  # values of the page filters (segments)
    rep: str  # a sales rep owning some of the first page's accounts


@dataclass(frozen=True)
class Operation:
    text: str
    variables: Mapping[str, Any]
    subject: str

    def __repr__(self) -> str:  # as hypothesis reports a falsifying example
        variables = orjson.dumps(self.variables).decode()
        return f"Operation(subject={self.subject!r}, variables={variables},\n{self.text}\n)"


# Run first, as every role: the same field under two keys with different arguments
# (one of them bare, which the parent settles for the whole page), and variables.
EXPLICIT = (
    Operation(
        "{ customers(first: 12) { edges { node { id a: tickets(first: 1) { id } "
        "b: tickets(first: 3) { id status } tickets { id } } } } }",
        {},
        "tester",
    ),
    Operation(
        "query($n: Int, $s: TicketStatus, $skip: Boolean!) { customers(first: 5) { edges { "
        "node { ...C t: tickets(first: $n, status: $s) @skip(if: $skip) { id } } } } } "
        "fragment C on Customer { __typename name orders(first: 2) { id total } }",
        {"n": 2, "s": "CLOSED", "skip": False},
        "tester",
    ),
)


@dataclass
class _Document:
    """What an operation being drawn has declared so far."""

    # (parent type, response key) -> the field and arguments it stands for: a key means
    # one thing throughout the document, so merged selections never conflict.
    keys: dict[tuple[str, str], str] = field(default_factory=dict)
    fragments: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> type, text
    declared: list[str] = field(default_factory=list)  # "$v0: Int = 3"
    values: dict[str, Any] = field(default_factory=dict)
    fresh: int = 0
    favour: str | None = None  # a system whose Customer fields are drawn more often

    def key(self, parent: str, key: str, signature: str) -> str:
        if self.keys.setdefault((parent, key), signature) == signature:
            return key
        self.fresh += 1
        key = f"k{self.fresh}"
        self.keys[(parent, key)] = signature
        return key

    def variable(self, type_sdl: str, value: Any, how: str, default: str | None) -> str:
        """A variable: its value given (`value`), null (`null`), left out (`missing`,
        the argument's own default applies) or left to its declared default."""
        name = f"v{len(self.declared)}"
        if how == "default" and default is not None:
            self.declared.append(f"${name}: {type_sdl} = {default}")
            return "$" + name
        self.declared.append(f"${name}: {type_sdl}")
        if how in ("value", "null"):
            self.values[name] = value if how == "value" else None
        return "$" + name


def _literal(type_name: str, value: Any) -> str:
    if value is None:
        return "null"
    if type_name in DECLARATION.enums:
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    return str(value)


def _choices(type_name: str) -> st.SearchStrategy[Any]:
    if type_name in DECLARATION.enums:
        return st.sampled_from(DECLARATION.enums[type_name].values)
    if type_name == "Int":
        return st.sampled_from(range(-1, 13))  # -1: a refused limit, now and then
    if type_name == "Boolean":
        return st.booleans()
    if type_name == "Float":
        return st.floats(-10, 10, allow_nan=False)
    return st.text("ab@.1 ", max_size=6)


def _argument_value(
    draw: Callable[..., Any],
    doc: _Document,
    type_ref: TypeRef,
    choices: st.SearchStrategy[Any],
    *,
    may_omit: bool = True,
) -> str | None:
    """An argument's value as the operation spells it: a literal or a variable; None
    to leave the argument out."""
    nullable = not type_ref.non_null
    hows = ["literal", "literal", "variable", "variable"]
    if nullable:
        hows += ["null", *(["omit", "omit"] if may_omit else [])]
    how = draw(st.sampled_from(hows))
    if how == "omit":
        return None
    if how == "null":
        return "null"
    value = draw(choices)
    if how == "literal":
        return _literal(type_ref.name, value)
    if not nullable:
        return doc.variable(type_ref.name + "!", value, "value", None)
    spelled = draw(st.sampled_from(["value", "value", "non_null", "null", "missing", "default"]))
    if spelled == "non_null":
        return doc.variable(type_ref.name + "!", value, "value", None)
    default = _literal(type_ref.name, draw(choices)) if spelled == "default" else None
    return doc.variable(type_ref.name, value, spelled, default)


def _directives(draw: Callable[..., Any], doc: _Document) -> str:
    """Mostly none; else @skip and/or @include on a literal or a variable."""
    # Rare enough that many documents have none: only those share compiled plans.
    chosen = draw(st.sampled_from([()] * 20 + [("skip",), ("include",), ("skip", "include")]))
    spelled = []
    for name in chosen:
        if draw(st.booleans()):
            condition = _literal("Boolean", draw(st.booleans()))
        else:
            how = draw(st.sampled_from(["value", "default"]))
            type_sdl = "Boolean!" if how == "value" else "Boolean"
            default = _literal("Boolean", draw(st.booleans()))
            condition = doc.variable(type_sdl, draw(st.booleans()), how, default)
        spelled.append(f" @{name}(if: {condition})")
    return "".join(spelled)


KINDS = ("field",) * 6 + ("twins", "typename", "inline", "spread")


def _field(draw: Callable[..., Any], doc: _Document, parent: str, f: FieldDecl, depth: int) -> str:
    arguments = []
    for argument in f.arguments:
        value = _argument_value(draw, doc, argument.type, _choices(argument.type.name))
        if value is not None:
            arguments.append(f"{argument.name}: {value}")
    spelled = f"({', '.join(arguments)})" if arguments else ""
    others = [other.name for other in _fields(parent) if other.name != f.name]
    alias = draw(st.sampled_from([f.name] * 6 + ["a", "b", *others[:3]]))
    key = doc.key(parent, alias, f.name + spelled)
    below = ""
    if f.type.name in DECLARATION.types:
        below = " " + _selection(draw, doc, f.type.name, depth + 1)
    prefix = "" if key == f.name else f"{key}: "
    return f"{prefix}{f.name}{spelled}{_directives(draw, doc)}{below}"


def _selection(draw: Callable[..., Any], doc: _Document, type_name: str, depth: int = 0) -> str:
    fields = _fields(type_name)
    # Fields with arguments (lists of records) as often as the others together.
    shaped = [f for f in fields if f.arguments] or fields
    weighted = fields + shaped * max(1, len(fields) // len(shaped) // 2)
    favoured = [f for f in fields if doc.favour is not None and _system(f) == doc.favour]
    weighted += favoured * max(1, len(weighted) // (2 * len(favoured) or 1))
    items: list[str] = []
    # Small enough that the gateway's limits (aliases, depth, cost) rarely refuse one.
    for _ in range(draw(st.integers(1, (5, 3)[depth > 0] if depth < 3 else 2))):
        kind = draw(st.sampled_from(KINDS if depth < 2 else KINDS[:6]))
        if kind == "field":
            items.append(_field(draw, doc, type_name, draw(st.sampled_from(weighted)), depth))
        elif kind == "twins":  # one field under two keys, each with its own arguments
            f = draw(st.sampled_from(shaped))
            items += [_field(draw, doc, type_name, f, depth) for _ in range(2)]
        elif kind == "typename":
            alias = draw(st.sampled_from(["__typename", "__typename", "t"]))
            key = doc.key(type_name, alias, "__typename")
            prefix = "" if key == "__typename" else f"{key}: "
            items.append(f"{prefix}__typename{_directives(draw, doc)}")
        elif kind == "inline":
            condition = draw(st.sampled_from([f" on {type_name}", ""]))
            directives = _directives(draw, doc)
            items.append(
                f"...{condition}{directives} {_selection(draw, doc, type_name, depth + 1)}"
            )
        else:
            known = [name for name, (on, _) in doc.fragments.items() if on == type_name]
            if known and draw(st.booleans()):
                name = draw(st.sampled_from(known))
            else:
                body = _selection(draw, doc, type_name, depth + 1)
                name = f"{type_name}{len(doc.fragments)}"
                doc.fragments[name] = (type_name, f"fragment {name} on {type_name} {body}")
            items.append(f"...{name}{_directives(draw, doc)}")
    return "{ " + " ".join(items) + " }"


def _root(draw: Callable[..., Any], doc: _Document, known: Known) -> str:
    kind = draw(st.sampled_from(["customers", "customers", "customer", "lookup"]))
    if kind == "customers":
        first = _argument_value(draw, doc, TypeRef("Int"), st.integers(0, 12), may_omit=False)
        arguments = [f"first: {first}"]
        for argument in DECLARATION.page_filters:
            members = st.sampled_from([*known.members, "nobody"])
            if draw(st.booleans()):  # as often the whole population
                value = _argument_value(draw, doc, argument.type, members)
                if value is not None:
                    arguments.append(f"{argument.name}: {value}")
        node = f"node {_selection(draw, doc, ROOT)}"
        edge = draw(st.sampled_from(["", "", "cursor ", "__typename "])) + node
        page = draw(st.sampled_from(["", "", " pageInfo { hasNextPage endCursor }"]))
        name, spelled, below = (
            "customers",
            f"({', '.join(arguments)})",
            f"{{ edges {{ {edge} }}{page} }}",
        )
    elif kind == "customer":
        cuid = st.sampled_from([*known.cuids, *[UNKNOWN_CUID] * 3])
        value = _argument_value(draw, doc, TypeRef("ID", non_null=True), cuid)
        name, spelled, below = "customer", f"(id: {value})", _selection(draw, doc, ROOT)
    else:
        lookup = draw(st.sampled_from(DECLARATION.lookups))
        found = known.keys.get(lookup.guard_field or "", [])
        keys = st.sampled_from([*found, "nobody@example.com", "+86 000 0000 0000"])
        value = _argument_value(draw, doc, lookup.argument.type, keys)
        name, spelled = lookup.name, f"({lookup.argument.name}: {value})"
        below = _selection(draw, doc, ROOT)
    alias = draw(st.sampled_from([name, name, "r"]))
    key = doc.key("Query", alias, name + spelled)
    prefix = "" if key == name else f"{key}: "
    return f"{prefix}{name}{spelled}{_directives(draw, doc)} {below}"


def operations(
    known: Known, subjects: list[str], favour: str | None = None
) -> st.SearchStrategy[Operation]:
    @st.composite
    def operation(draw: Callable[..., Any]) -> Operation:
        doc = _Document(favour=favour)
        roots = [_root(draw, doc, known) for _ in range(draw(st.sampled_from([1, 1, 1, 2])))]
        if doc.declared:
            header = f"query Q({', '.join(doc.declared)}) "
        else:
            header = draw(st.sampled_from(["", "query ", "query Q "]))
        fragments = "".join(" " + text for _, text in doc.fragments.values())
        text = header + "{ " + " ".join(roots) + " }" + fragments
        return Operation(text, dict(doc.values), draw(st.sampled_from(subjects)))

    return operation()


# --- running an operation through both executors ---------------------------------


async def _record(gateway: RunningGateway, request_id: str) -> dict[str, Any] | None:
    """The access record of one request (the newest file, read from its end)."""
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    files = sink.files()
    if not files:
        return None
    lines = (await asyncio.to_thread(files[-1].read_bytes)).splitlines()
    for line in reversed(lines[-50:]):
        record = orjson.loads(line)
        if record.get("kind") == "access" and record.get("request_id") == request_id:
            return {key: record.get(key) for key in RECORDED}
    return None


def _settled(body: dict[str, Any]) -> dict[str, Any]:
    """The body with its errors grouped by root field, each root's in their order.
    graphql-core resolves the root fields of a query concurrently, so how the errors of
    two roots interleave depends on which system answered first, through either executor
    alike; the order of one root's errors does not."""
    errors = body.get("errors")
    if not errors:
        return body
    return {**body, "errors": sorted(errors, key=lambda e: str((e.get("path") or [""])[0]))}


def _too_complex(body: Mapping[str, Any]) -> bool:
    codes = {(e.get("extensions") or {}).get("code") for e in body.get("errors") or ()}
    return "data" not in body and codes == {"QUERY_TOO_COMPLEX"}


async def _answers(
    gateway: RunningGateway, operation: Operation, role: str
) -> list[tuple[int, dict[str, Any], dict[str, Any] | None]]:
    schema = gateway.gateway.schema
    original = schema.execution_context_class
    headers = gateway.as_role(role, subject=operation.subject)
    answers = []
    try:
        for executor in EXECUTORS:
            schema.execution_context_class = executor
            reply = await gateway.query(operation.text, operation.variables, headers)
            record = await _record(gateway, reply.headers["x-request-id"])
            answers.append((reply.status, _settled(reply.body), record))
    finally:
        schema.execution_context_class = original
    return answers


@pytest.fixture(scope="module")
async def known(gateway: RunningGateway) -> Known:
    keys = sorted({lookup.guard_field for lookup in DECLARATION.lookups} - {None})
    page = "{ customers(first: 30) { edges { node { id %s opportunities { owner } } } } }"
    reply = await gateway.query(
        page % " ".join(str(key) for key in keys), headers=gateway.as_role("sales_manager")
    )
    nodes = [edge["node"] for edge in reply.data["customers"]["edges"]]
    owners = collections.Counter(o["owner"] for n in nodes for o in n["opportunities"] or [])
    filters = " ".join(argument.name for argument in DECLARATION.page_filters)
    # A page filter's values, as a caller who may read the field of the same name sees them.
    members: set[str] = set()
    if filters:
        reply = await gateway.query(
            "{ customers(first: 60) { edges { node { " + filters + " } } } }",
            headers=gateway.as_role("marketing"),
        )
        members = {
            value
            for edge in reply.data["customers"]["edges"]
            for value in edge["node"].values()
            if isinstance(value, str)
        }
    return Known(
        cuids=[node["id"] for node in nodes[:6]],
        keys={
            str(key): [node[key] for node in nodes[:4] if isinstance(node[key], str)]
            for key in keys
        },
        members=sorted(members),
        rep=owners.most_common(1)[0][0],
    )


def _property(
    gateway: RunningGateway,
    loop: asyncio.AbstractEventLoop,
    strategy: st.SearchStrategy[Operation],
    role: str,
    examples: int,
    seen: collections.Counter[str],
) -> Callable[[], None]:
    """The property for one role: a sync hypothesis test, for a worker thread, whose
    requests run on `loop` (where the gateway serves)."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same operations on every run (and on CI)
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(operation=strategy)
    @example(operation=EXPLICIT[0])
    @example(operation=EXPLICIT[1])
    def parity(operation: Operation) -> None:
        future = asyncio.run_coroutine_threadsafe(_answers(gateway, operation, role), loop)
        (status, body, record), reference = future.result(timeout=60)
        assert (status, body, record) == reference, (role, operation)
        if _too_complex(body):  # refused before execution, by either executor alike
            seen["refused as too complex"] += 1
            assume(False)
        assert status == 200 and "data" in body, (role, operation, body)  # a valid operation
        assert record is not None, (role, operation)
        seen["operations"] += 1
        seen["with errors"] += bool(body.get("errors"))
        seen["with customers"] += bool(record["customers"])
        seen["with a system unavailable"] += "SOURCE_UNAVAILABLE" in str(body.get("errors"))

    return parity


async def _check_parity(
    gateway: RunningGateway, known: Known, role: str, examples: int, favour: str | None = None
) -> collections.Counter[str]:
    """Runs `examples` drawn operations as `role` through both executors (with the
    fields of system `favour` drawn more often); the counts of what the answers held."""
    seen: collections.Counter[str] = collections.Counter()
    subjects = ["tester", known.rep] if role == "sales" else ["tester"]
    strategy = operations(known, subjects, favour)
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(_property(gateway, loop, strategy, role, examples, seen))
    return seen


@pytest.mark.parametrize("role", ROLES)
async def test_random_operations_answer_the_same_through_either_executor(
    gateway: RunningGateway, known: Known, role: str
) -> None:
    seen = await _check_parity(gateway, known, role, EXAMPLES)
    assert seen["operations"] >= EXAMPLES
    assert seen["refused as too complex"] < EXAMPLES // 10
    assert seen["with customers"] > seen["operations"] // 3  # most read some customer


@pytest.mark.parametrize("system", ["service", "marketing"])
async def test_random_operations_answer_the_same_with_a_system_down(
    gateway: RunningGateway, known: Known, sources: SourceAdmin, system: str
) -> None:
    await sources.fault(system, "error")
    seen = await _check_parity(gateway, known, "sales_manager", EXAMPLES_SYSTEM_DOWN, system)
    assert seen["operations"] >= EXAMPLES_SYSTEM_DOWN
    assert seen["with a system unavailable"] >= EXAMPLES_SYSTEM_DOWN // 4
