"""The Query and Mutation types and the schema factory."""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
from collections.abc import Sequence
from typing import Any, Optional

import strawberry
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from connectors.base import SourceUnavailable
from connectors.identity.index import page_after
from connectors.identity.keys import is_cuid
from policies.engine import Decision
from resolvers.audit import AuditQueries
from resolvers.audit_actions import ConsoleMutations
from resolvers.audit_views import ConsoleQueries
from resolvers.console_pages import ConsolePageMutations, ConsolePageQueries
from resolvers.context import GraphContext
from resolvers.decisions import decided, field_rule
from resolvers.declaration import Lookup
from resolvers.execution import PlainFieldExecutor
from resolvers.guard import PolicyGuard, policies_of
from resolvers.loading import CustomerLoad, load_customers
from resolvers.planning import PlanAhead, take
from resolvers.rights import RightsMutations, RightsQueries
from resolvers.selection import selected_fields
from resolvers.types import Graph, bad_input, page_size, with_signature
from resolvers.writes import build_mutations

CURSOR_PREFIX = "c360:"


def encode_cursor(cuid: str) -> str:
    return base64.urlsafe_b64encode((CURSOR_PREFIX + cuid).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    cuid = raw.removeprefix(CURSOR_PREFIX)
    if not raw.startswith(CURSOR_PREFIX) or not is_cuid(cuid):
        raise bad_input("after", "'after' is not a cursor this API issued")
    return cuid


async def _one(info: Info[GraphContext, None], cuid: str | None) -> Any:
    if cuid is None or info.context.identity.links(cuid) is None:
        return None
    fields = selected_fields(info)
    here = info.path.as_list()
    load = take(info.context, str(here[0]), cuid, fields) if len(here) == 1 else None
    if load is None:
        load = CustomerLoad(info.context, [cuid], fields, lambda _, key: [*here, key])
    [customer] = await load.done()
    return customer


async def _members(ctx: GraphContext, name: str, value: str) -> list[str] | None:
    """CUIDs of a page filter's members (a marketing segment's, say), in CUID order;
    None when the source failed."""
    binding = ctx.bindings.filters[name]
    record = (await ctx.fetch_many(binding.source, binding.entity, [value])).get(value)
    if isinstance(record, SourceUnavailable):
        ctx.fail(record, ["customers"])
        return None
    members = binding.pick(record) or []
    cuids = {
        cuid
        for member in members
        if (cuid := ctx.identity.by_record.get((binding.source, str(member)))) is not None
    }
    return sorted(cuids)


async def _customers(
    info: Info[GraphContext, None],
    first: int | None,
    after: str | None,
    filters: dict[str, Any],
) -> Any:
    ctx = info.context
    graph = ctx.graph
    limit = page_size(first, "first", ctx.max_page_size, 20)
    start = decode_cursor(after) if after is not None else None
    chosen = {name: value for name, value in filters.items() if value is not None}
    if not chosen:
        cuids, has_next = ctx.identity.page(start, limit)
    else:
        members: set[str] | None = None
        for name, value in sorted(chosen.items()):
            found = await _members(ctx, name, str(value))
            found_set = set(found or [])
            members = found_set if members is None else members & found_set
        cuids, has_next = page_after(sorted(members or ()), start, limit)
    fields = selected_fields(info, ("edges", "node"))
    here = info.path.as_list()
    customers = await load_customers(
        ctx, cuids, fields, lambda index, key: [*here, "edges", index, "node", key]
    )
    edges = [graph.edge(cursor=encode_cursor(c.id), node=c) for c in customers]
    return graph.connection(
        edges=edges,
        page_info=graph.page_info(
            has_next_page=has_next, end_cursor=edges[-1].cursor if edges else None
        ),
    )


def _customers_field(graph: Graph) -> Any:
    filters = graph.declaration.page_filters

    async def customers(
        self: Any,
        info: Info[GraphContext, None],
        first: int | None = 20,
        after: str | None = None,
        **given: Any,
    ) -> Any:
        return await _customers(info, first, after, given)

    python = {name: reader.type for name, reader in graph.enums.items()}
    parameters: list[tuple[str, Any, Any]] = [
        ("first", Optional[int], 20),  # noqa: UP045
        ("after", Optional[str], None),  # noqa: UP045
    ]
    for argument in filters:
        kind = python.get(argument.type.name, str)
        parameters.append((argument.name, Optional[kind], None))  # noqa: UP045
    description = graph.declaration.customers_description or (
        "Customers in CUID order"
        + (", optionally filtered by " + ", ".join(a.name for a in filters) if filters else "")
        + "."
    )
    return strawberry.field(
        resolver=with_signature(customers, parameters, graph.connection),
        name="customers",
        description=description,
        extensions=[PolicyGuard(None)],
    )


def _lookup_field(graph: Graph, lookup: Lookup) -> Any:
    """A root field finding one customer by a key. A caller who may not read the key's
    field (denied, masked, or only for some records) is refused whether or not the key
    exists, so a lookup never tells who is a customer (an enumeration oracle)."""
    argument = lookup.argument.name
    policy = graph.policies.get(lookup.guard_field) if lookup.guard_field else None
    guard_field = lookup.guard_field
    by = lookup.by
    key_type: Any = strawberry.ID if lookup.argument.type.name == "ID" else str

    async def resolve(self: Any, info: Info[GraphContext, None], **given: Any) -> Any:
        ctx = info.context
        value = given[argument]
        if guard_field is not None:
            rule = field_rule(ctx, guard_field)
            if not rule.allowed:
                refusal = rule.static if decided(rule.static) else None
                raise forbidden_lookup(refusal, policy, guard_field)
        if not isinstance(value, str) or len(value) > 320:
            raise bad_input(argument, f"'{argument}' is not a {by} key")
        if by == "email":
            if "@" not in value:
                raise bad_input(argument, f"'{argument}' is not an email address")
            cuid = ctx.identity.find_email(value)
        elif by == "phone":
            cuid = ctx.identity.find_phone(value)
        else:
            cuid = ctx.identity.by_record.get((by, value.strip()))
        return await _one(info, cuid)

    return strawberry.field(
        resolver=with_signature(
            resolve,
            [(argument, key_type, inspect.Parameter.empty)],
            Optional[graph.customer],  # noqa: UP045
        ),
        name=lookup.name,
        description=lookup.description,
        extensions=[PolicyGuard(None)],
    )


def forbidden_lookup(
    decision: Decision | None, policy: str | None, field: str | None
) -> GraphQLError:
    name = decision.policy if decision is not None else policy
    return GraphQLError(
        f"Looking up by {field} needs read access to it (policy '{name}').",
        extensions={"code": "FORBIDDEN", "policy": name},
    )


def build_query(graph: Graph) -> Any:
    """The Query type of a graph: the core's `customer` and `customers`, the declared
    lookups and page filters, and the security console's queries."""
    by_id = with_signature(
        _customer_by_id,
        [("id", strawberry.ID, inspect.Parameter.empty)],
        Optional[graph.customer],  # noqa: UP045
    )
    namespace: dict[str, Any] = {
        "customer": strawberry.field(
            resolver=by_id,
            name="customer",
            description="One customer by CUID; null when unknown.",
            extensions=[PolicyGuard(None)],
        )
    }
    for lookup in graph.declaration.lookups:
        namespace[lookup.name] = _lookup_field(graph, lookup)
    namespace["customers"] = _customers_field(graph)
    return strawberry.type(
        type("Query", (AuditQueries, ConsoleQueries, ConsolePageQueries, RightsQueries), namespace)
    )


async def _customer_by_id(self: Any, info: Info[GraphContext, None], **given: Any) -> Any:
    cuid = given["id"]
    if not is_cuid(cuid):
        raise bad_input("id", "'id' is not a customer id (expected cus_ and 16 characters)")
    return await _one(info, cuid)


class GraphReport(SchemaExtension):
    """What a request reports besides its data, in one extension (each costs every
    request its hooks): one SOURCE_UNAVAILABLE error per failing department system, at
    the first path it left null, however many fields and customers it affected;
    `extensions.stale` when records were served from the cache past their TTL because
    their system failed (which source and entity, the oldest record's age); and, for the
    access log, the operation's name and type and a hash of its document (never the
    document: its literals may be personal data)."""

    def on_operation(self) -> Any:
        try:
            yield
        finally:  # a refused document (syntax, token limit) is recorded too
            self._capture()

    def _capture(self) -> None:
        execution = self.execution_context
        ctx = execution.context
        if not isinstance(ctx, GraphContext):
            return
        try:
            operation_type = execution.operation_type.value
        except Exception:
            operation_type = None
        query = execution.query or ""
        ctx.operation = {
            "name": execution.operation_name,
            "type": operation_type,
            "document_hash": hashlib.sha256(query.encode()).hexdigest() if query else None,
        }

    def on_execute(self) -> Any:
        yield
        ctx = self.execution_context.context
        result = self.execution_context.result
        if not isinstance(ctx, GraphContext) or result is None:
            return
        if not ctx.failures:
            return
        errors = list(result.errors or [])
        for failure in ctx.failures.values():
            errors.append(
                GraphQLError(
                    f"The {failure.source} system is unavailable; its fields are null.",
                    path=failure.path,
                    extensions={"code": "SOURCE_UNAVAILABLE", "source": failure.source},
                )
            )
        result.errors = errors

    def get_results(self) -> dict[str, Any]:
        ctx = self.execution_context.context
        if not isinstance(ctx, GraphContext) or not ctx.stale_ages:
            return {}
        return {
            "stale": [
                {"source": source, "entity": entity, "ageSeconds": round(age, 1)}
                for (source, entity), age in sorted(ctx.stale_ages.items())
            ]
        }


class GatewaySchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # strawberry's default logs each error with the query document, whose literals may
        # be personal data. Client mistakes are not server errors, and unexpected ones are
        # logged (without the document) where the response masks them (gateway/view.py).
        return None


class SubgraphSchema(strawberry.federation.Schema):
    """The gateway's schema as a Federation 2 subgraph (`[federation] subgraph = true`):
    also `_service { sdl }` and `_entities`, for a router's supergraph."""

    process_errors = GatewaySchema.process_errors


def build_mutation(graph: Graph) -> Any:
    """The Mutation type: the graph's declared writes and the security console's actions."""
    return strawberry.type(
        type(
            "Mutation",
            (ConsoleMutations, ConsolePageMutations, RightsMutations),
            build_mutations(graph),
        )
    )


def schema_policies(graph: Graph) -> set[str]:
    """Every policy a field of the schema names: the policy file must define them all."""
    return (
        set(graph.policies.values())
        | set(policies_of(AuditQueries).values())
        | set(policies_of(ConsoleQueries).values())
        | set(policies_of(ConsoleMutations).values())
        | set(policies_of(ConsolePageQueries).values())
        | set(policies_of(ConsolePageMutations).values())
        | set(policies_of(RightsQueries).values())
        | set(policies_of(RightsMutations).values())
        | {w.policy for w in graph.declaration.writes if w.policy}
    )


def build_schema(
    graph: Graph, extensions: Sequence[Any] = (), max_batch: int = 0
) -> strawberry.Schema:
    """The schema of a built graph. `max_batch`: operations allowed in one array-batched
    request (0: no batching)."""
    config = StrawberryConfig(
        batching_config={"max_operations": max_batch} if max_batch > 0 else None
    )
    schema_class = SubgraphSchema if graph.federation else GatewaySchema
    return schema_class(
        query=build_query(graph),
        mutation=build_mutation(graph),
        # PlanAhead last: it starts loads only for what the limits let execute.
        extensions=[GraphReport, *extensions, PlanAhead],
        config=config,
        execution_context_class=PlainFieldExecutor,
    )
