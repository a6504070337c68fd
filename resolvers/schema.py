"""The Query and Mutation types and the schema factory."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from connectors.base import SourceUnavailable
from connectors.identity.index import page_after
from connectors.identity.keys import is_cuid
from resolvers.audit import AuditQueries
from resolvers.audit_actions import ConsoleMutations
from resolvers.audit_views import ConsoleQueries
from resolvers.context import GraphContext
from resolvers.execution import PlainFieldExecutor
from resolvers.guard import default_policy_field, policies_of
from resolvers.loading import CUSTOMER_POLICIES, CustomerLoad, load_customers
from resolvers.planning import PlanAhead, take
from resolvers.selection import selected_fields
from resolvers.types import (
    Customer,
    CustomerConnection,
    CustomerEdge,
    PageInfo,
    bad_input,
    page_size,
)

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


async def _one(info: Info[GraphContext, None], cuid: str | None) -> Customer | None:
    if cuid is None or info.context.identity.links(cuid) is None:
        return None
    fields = selected_fields(info)
    here = info.path.as_list()
    load = take(info.context, str(here[0]), cuid, fields) if len(here) == 1 else None
    if load is None:
        load = CustomerLoad(info.context, [cuid], fields, lambda _, key: [*here, key])
    [customer] = await load.done()
    return customer


async def _segment_members(ctx: GraphContext, segment: str) -> list[str] | None:
    """CUIDs of a marketing segment, in CUID order; None when the source failed."""
    binding = ctx.bindings.filters.get("segment")
    if binding is None:
        raise bad_input("segment", "filtering by segment is not configured")
    record = (await ctx.fetch_many(binding.source, binding.entity, [segment])).get(segment)
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


@strawberry.type
class Query(AuditQueries, ConsoleQueries):
    @default_policy_field(description="One customer by CUID; null when unknown.")
    async def customer(self, info: Info[GraphContext, None], id: strawberry.ID) -> Customer | None:
        if not is_cuid(id):
            raise bad_input("id", "'id' is not a customer id (expected cus_ and 16 characters)")
        return await _one(info, id)

    @default_policy_field(
        description="One customer by email, matched through the identity crosswalk."
    )
    async def customer_by_email(
        self, info: Info[GraphContext, None], email: str
    ) -> Customer | None:
        if len(email) > 320 or "@" not in email:
            raise bad_input("email", "'email' is not an email address")
        return await _one(info, info.context.identity.find_email(email))

    @default_policy_field(description="Customers in CUID order, optionally one marketing segment.")
    async def customers(
        self,
        info: Info[GraphContext, None],
        first: int | None = 20,
        after: str | None = None,
        segment: str | None = None,
    ) -> CustomerConnection:
        ctx = info.context
        limit = page_size(first, "first", ctx.max_page_size, 20)
        start = decode_cursor(after) if after is not None else None
        if segment is None:
            cuids, has_next = ctx.identity.page(start, limit)
        else:
            members = await _segment_members(ctx, segment)
            cuids, has_next = page_after(members or [], start, limit)
        fields = selected_fields(info, ("edges", "node"))
        here = info.path.as_list()
        customers = await load_customers(
            ctx, cuids, fields, lambda index, key: [*here, "edges", index, "node", key]
        )
        edges = [CustomerEdge(cursor=encode_cursor(c.id), node=c) for c in customers]
        return CustomerConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=has_next, end_cursor=edges[-1].cursor if edges else None
            ),
        )


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


@strawberry.type
class Mutation(ConsoleMutations):
    """Only the security console's actions so far; writes to department systems come later."""


def schema_policies() -> set[str]:
    """Every policy a field of the schema names: the policy file must define them all."""
    return (
        set(CUSTOMER_POLICIES.values())
        | set(policies_of(Query).values())
        | set(policies_of(Mutation).values())
    )


def build_schema(extensions: Sequence[Any] = (), max_batch: int = 0) -> strawberry.Schema:
    """`max_batch`: operations allowed in one array-batched request (0: no batching)."""
    config = StrawberryConfig(
        batching_config={"max_operations": max_batch} if max_batch > 0 else None
    )
    return GatewaySchema(
        query=Query,
        mutation=Mutation,
        # PlanAhead last: it starts loads only for what the limits let execute.
        extensions=[GraphReport, *extensions, PlanAhead],
        config=config,
        execution_context_class=PlainFieldExecutor,
    )
