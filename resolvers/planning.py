"""Loads started before execution.

Once an operation has passed validation and the limits, what its `customer(id:)` fields
will load is known from the syntax tree and the variables alone: which customer, which of
its fields, and so (with the request's policy decisions) which systems. `PlanAhead`, an
extension on strawberry's `on_execute` seam placed after the limits, starts those loads
and yields once, so that their requests are out before graphql-core walks the operation
(strawberry's and graphql-core's set-up, the resolver's arguments and the root field's
guard: tests/test_planning.py, bench (a) overhead). The resolver then takes the load it
finds for its response key instead of starting one (`take`, resolvers/schema.py).

Only an operation whose every root field is `customer` (or `__typename`) is planned:
nothing else at the root can then keep a planned resolver from running (a failing non-null
root field would), so no system is asked for what the answer will not use. Anything out
of the ordinary (variables that do not coerce, an id that is no customer's, a root policy
that does not simply allow) leaves the operation unplanned, to run exactly as it always
did. A load that no resolver took (the request was cancelled) is cancelled with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLSchema,
    OperationType,
    get_operation_ast,
)
from graphql.execution.values import get_argument_values, get_variable_values
from strawberry.extensions import SchemaExtension

from connectors.identity.keys import is_cuid
from resolvers.context import GraphContext
from resolvers.decisions import allowed_at_root
from resolvers.loading import CustomerLoad
from resolvers.selection import Selection, field_names, included_fields, selection_below
from resolvers.upstream import core_schema

PLANNED = "customer"
HARMLESS = frozenset({PLANNED, "__typename"})


def plan_loads(
    ctx: GraphContext,
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    raw_variables: Mapping[str, Any],
) -> dict[str, CustomerLoad]:
    """The loads of the operation's `customer` fields, started, by response key; none
    unless the whole operation qualifies (module docstring)."""
    operation = get_operation_ast(document, operation_name)
    query_type = schema.query_type
    if operation is None or operation.operation != OperationType.QUERY or query_type is None:
        return {}
    if not isinstance(raw_variables, Mapping):  # execution will refuse them
        return {}
    if not allowed_at_root(ctx):
        return {}
    fragments = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    # Most operations that cannot be planned show it by their root fields' names alone,
    # before their variables are coerced (which graphql-core does again to execute).
    if not HARMLESS.issuperset(field_names(operation.selection_set, fragments)):
        return {}
    variables = get_variable_values(
        schema, operation.variable_definitions or (), dict(raw_variables)
    )
    if isinstance(variables, list):  # errors: execution will report them, and not start
        return {}
    roots: dict[str, list[FieldNode]] = {}
    for node in included_fields(operation.selection_set, fragments, variables.coerced):
        roots.setdefault((node.alias or node.name).value, []).append(node)
    field = query_type.fields[PLANNED]
    loads: dict[str, CustomerLoad] = {}
    for key, nodes in roots.items():
        if nodes[0].name.value != PLANNED:
            continue
        cuid = get_argument_values(field, nodes[0], variables).get("id")
        if not isinstance(cuid, str) or not is_cuid(cuid) or ctx.identity.links(cuid) is None:
            continue
        fields = selection_below(nodes, fragments, variables.coerced)
        loads[key] = CustomerLoad(ctx, [cuid], fields, _path_below(key))
    return loads


def _path_below(key: str) -> Any:
    return lambda _index, field_key: [key, field_key]


def take(ctx: GraphContext, key: str, cuid: str, fields: Selection) -> CustomerLoad | None:
    """The load planned for the root field at `key`, if it is the one the resolver would
    start itself (by construction it is; otherwise it is dropped, unused)."""
    load = ctx.planned.pop(key, None)
    if load is None:
        return None
    if load.cuids == [cuid] and load.fields.same_as(fields):
        return load
    load.cancel()
    return None


class PlanAhead(SchemaExtension):
    """Starts the planned loads once the operation may execute (the limits, before it
    among the extensions, have not answered in its place), and cancels any left."""

    async def on_execute(self) -> AsyncIterator[None]:
        execution = self.execution_context
        ctx = execution.context
        if not isinstance(ctx, GraphContext):
            yield
            return
        document = execution.graphql_document
        if execution.result is None and document is not None:
            ctx.planned = plan_loads(
                ctx,
                core_schema(execution.schema),
                document,
                execution.operation_name,
                execution.variables or {},
            )
            if ctx.planned:
                await asyncio.sleep(0)  # the loads' calls run now: their requests go out
        try:
            yield
        finally:
            for load in ctx.planned.values():
                load.cancel()
            ctx.planned = {}
