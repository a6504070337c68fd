"""The unified types: Customer and the records nested in it.

A Customer holds its CUID, the system keys the crosswalk gave for it, and the source
records its parent resolver fetched in advance. Each field reads its binding's record;
a field whose source failed is null, and the failure is reported once per source.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import operator
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.types import Info

from connectors.base import SourceUnavailable
from policies.directive import Policy
from resolvers.bindings import Binding
from resolvers.context import GraphContext
from resolvers.execution import PREPARED_FIELD
from resolvers.guard import policy_field
from resolvers.selection import names_below


def bad_input(argument: str, message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": "BAD_USER_INPUT", "argument": argument})


def page_size(value: int | None, argument: str, maximum: int, default: int) -> int:
    if value is None:
        return default
    if value < 0:
        raise bad_input(argument, f"'{argument}' must not be negative")
    if value > maximum:
        raise bad_input(argument, f"'{argument}' must be at most {maximum}")
    return value


@strawberry.enum
class TicketStatus(enum.Enum):
    OPEN = "OPEN"
    PENDING = "PENDING"
    CLOSED = "CLOSED"


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("not a timestamp")
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _optional_timestamp(value: Any) -> dt.datetime | None:
    return None if value is None else _timestamp(value)


def _unread(value: Any) -> Any:
    """For a field the request does not select (nor sorts by): left unparsed, as None."""
    return None


Wanted = AbstractSet[str] | None  # the graph fields a request may read of a type (None: all)


def _if_wanted(wanted: Wanted, field: str, parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`parse` for a field the request may read, `_unread` for one it does not."""
    return parse if wanted is None or field in wanted else _unread


def _number(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


@strawberry.type
class Order:
    id: strawberry.ID
    placed_at: dt.datetime
    total: float
    status: str


@strawberry.type
class Ticket:
    id: strawberry.ID
    subject: str
    status: TicketStatus
    satisfaction: int | None
    opened_at: dt.datetime
    closed_at: dt.datetime | None


@strawberry.type
class Opportunity:
    id: strawberry.ID
    stage: str
    amount: float
    owner: str = strawberry.field(description="The owning sales rep.")
    updated_at: dt.datetime


@strawberry.type
class Consent:
    channel: str
    granted: bool
    updated_at: dt.datetime


def record_keys(ctx: GraphContext, type_name: str, fields: tuple[str, ...]) -> tuple[str, ...]:
    """The record keys that hold these graph fields, through the configured renames:
    looked up once per request and field (each `*_of` below is made once), not per
    customer, record and field."""
    return ctx.bindings.record_keys(type_name, fields)


# Spellings of ticket statuses seen (a helpdesk writes "open" or " Closed "), each read
# through the enum's constructor once; bounded, since the spellings come from a system.
_TICKET_STATUSES = {status.value: status for status in TicketStatus}


def _ticket_status(value: Any) -> TicketStatus:
    found = _TICKET_STATUSES.get(value) if value.__class__ is str else None
    if found is None:
        found = TicketStatus(str(value).strip().upper())
        if value.__class__ is str and len(_TICKET_STATUSES) < 64:
            _TICKET_STATUSES[value] = found
    return found


# Each `*_of(ctx)` reads a customer's list of records into graph objects; made once per
# request and field, it is called once per customer. `wanted`, where given: the graph
# fields the request may read of them (None: all); a timestamp nothing reads or sorts by
# is not parsed (nor checked), and left None.


def orders_of(ctx: GraphContext) -> Callable[[Any], list[Order]]:
    id_, placed_at, total, status = record_keys(ctx, "Order", ("id", "placedAt", "total", "status"))
    return lambda records: [
        Order(
            id=strawberry.ID(str(r.get(id_))),
            placed_at=_timestamp(r.get(placed_at)),
            total=_number(r.get(total)),
            status=str(r.get(status)),
        )
        for r in _records_of(records)
    ]


def tickets_of(ctx: GraphContext, wanted: Wanted = None) -> Callable[[Any], list[Ticket]]:
    id_, subject, status, csat, opened_at, closed_at = record_keys(
        ctx, "Ticket", ("id", "subject", "status", "satisfaction", "openedAt", "closedAt")
    )
    closed = _if_wanted(wanted, "closedAt", _optional_timestamp)
    return lambda records: [
        Ticket(
            id=strawberry.ID(str(r.get(id_))),
            subject=str(r.get(subject)),
            status=_ticket_status(r.get(status)),
            satisfaction=None if (score := r.get(csat)) is None else int(score),
            opened_at=_timestamp(r.get(opened_at)),
            closed_at=closed(r.get(closed_at)),
        )
        for r in _records_of(records)
    ]


def opportunities_of(
    ctx: GraphContext, wanted: Wanted = None
) -> Callable[[Any], list[Opportunity]]:
    id_, stage, amount, owner, updated_at = record_keys(
        ctx, "Opportunity", ("id", "stage", "amount", "owner", "updatedAt")
    )
    parse = _if_wanted(wanted, "updatedAt", _timestamp)
    return lambda records: [
        Opportunity(
            id=strawberry.ID(str(r.get(id_))),
            stage=str(r.get(stage)),
            amount=_number(r.get(amount)),
            owner=str(r.get(owner)),
            updated_at=parse(r.get(updated_at)),
        )
        for r in _records_of(records)
    ]


def _text(value: Any) -> str | None:
    return None if value is None else str(value).strip() or None


# Fetched records (or the failure) per (source, entity), filled by the parent resolver.
Records = dict[tuple[str, str], Any]


def _records_of(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        raise TypeError("expected a list of records")
    return value


def satisfaction_of(ctx: GraphContext, wanted: Wanted = None) -> Callable[[Any], float | None]:
    """Mean satisfaction score of the customer's closed tickets (read off the records:
    only two of a ticket's fields matter here)."""
    status, csat = record_keys(ctx, "Ticket", ("status", "satisfaction"))

    def mean(records: Any) -> float | None:
        scores = [
            int(score)
            for r in _records_of(records)
            if (score := r.get(csat)) is not None
            and _ticket_status(r.get(status)) is TicketStatus.CLOSED
        ]
        return round(sum(scores) / len(scores), 2) if scores else None

    return mean


def consents_of(ctx: GraphContext, wanted: Wanted = None) -> Callable[[Any], list[Consent]]:
    channel, granted, updated_at = record_keys(ctx, "Consent", ("channel", "granted", "updatedAt"))
    parse = _if_wanted(wanted, "updatedAt", _timestamp)
    return lambda records: [
        Consent(
            channel=str(r.get(channel)),
            granted=bool(r.get(granted)),
            updated_at=parse(r.get(updated_at)),
        )
        for r in _records_of(records)
    ]


Shape = Callable[[Any], Any]  # a bound value -> the field's value


def _as_is(shape: Shape) -> Callable[[GraphContext, Wanted], Shape]:
    return lambda ctx, wanted: shape


# Customer fields without arguments, computed for all customers at once by the parent
# (resolvers/loading.py): graph field -> (python attribute, the request's shape of the
# bound value, given what it selects below the field). They are plain attributes, so an
# allowed value costs the executor nothing extra.
PLAIN_FIELDS: dict[str, tuple[str, Callable[[GraphContext, Wanted], Shape]]] = {
    "name": ("name", _as_is(_text)),
    "email": ("email", _as_is(_text)),
    "phone": ("phone", _as_is(_text)),
    "nationalId": ("national_id", _as_is(_text)),
    "address": ("address", _as_is(_text)),
    "lifetimeValue": ("lifetime_value", _as_is(_number)),
    "segment": ("segment", _as_is(_text)),
    "satisfaction": ("satisfaction", satisfaction_of),
    "consents": ("consents", consents_of),
}


_PLACED_AT = operator.attrgetter("placed_at")
_OPENED_AT = operator.attrgetter("opened_at")


def orders_shape(
    ctx: GraphContext, first: int | None = 10, *, wanted: Wanted = None
) -> Callable[[Any], list[Order]]:
    limit = page_size(first, "first", ctx.max_page_size, 10)
    read = orders_of(ctx)

    def shape(records: Any) -> list[Order]:
        orders = read(records)
        orders.sort(key=_PLACED_AT, reverse=True)
        return orders[:limit]

    return shape


def tickets_shape(
    ctx: GraphContext,
    status: TicketStatus | None = None,
    first: int | None = 10,
    *,
    wanted: Wanted = None,
) -> Callable[[Any], list[Ticket]]:
    limit = page_size(first, "first", ctx.max_page_size, 10)
    read = tickets_of(ctx, wanted)

    def shape(records: Any) -> list[Ticket]:
        tickets = read(records)
        if status is not None:
            tickets = [ticket for ticket in tickets if ticket.status == status]
        tickets.sort(key=_OPENED_AT, reverse=True)
        return tickets[:limit]

    return shape


def opportunities_shape(
    ctx: GraphContext, *, wanted: Wanted = None
) -> Callable[[Any], list[Opportunity]]:
    return opportunities_of(ctx, wanted)


# Customer fields with arguments: graph field -> its shape for given arguments. The
# resolvers pass theirs; a parent settles a field selected without arguments itself, with
# these defaults (the resolvers' own, which a test holds equal), for all its customers.
ARGUMENT_FIELDS: dict[str, Callable[..., Callable[[Any], Any]]] = {
    "orders": orders_shape,
    "tickets": tickets_shape,
    "opportunities": opportunities_shape,
}


def guarded(policy: str, description: str | None = None) -> Any:
    """A plain Customer field under a policy: the directive security reads, a value the
    parent decided, fetched and masked in bulk (or the FORBIDDEN error it returned)."""
    return strawberry.field(default=None, directives=[Policy(name=policy)], description=description)


@strawberry.type
class Customer:
    id: strawberry.ID
    name: str | None = guarded("customer.name")
    email: str | None = guarded("customer.email")
    phone: str | None = guarded("customer.phone")
    national_id: str | None = guarded(
        "customer.nationalId", "18-character PRC resident identity number."
    )
    address: str | None = guarded("customer.address")
    lifetime_value: float | None = guarded("customer.lifetimeValue")
    satisfaction: float | None = guarded(
        "customer.tickets", "Mean satisfaction score (1-5) of the customer's closed tickets."
    )
    segment: str | None = guarded("customer.segment")
    consents: list[Consent] | None = guarded("customer.segment")
    links: strawberry.Private[Mapping[str, str]] = dataclasses.field(default_factory=dict)
    records: strawberry.Private[Records] = dataclasses.field(default_factory=dict)
    # Fields with arguments that a sibling settled for this customer, by response key,
    # read by the executor instead of calling the resolver (resolvers/execution.py).
    prepared: strawberry.Private[dict[str, Any]] = dataclasses.field(default_factory=dict)

    def _resolve(
        self, info: Info[GraphContext, None], field: str, shape: Callable[[Any], Any]
    ) -> Any:
        """A field with arguments: its value, or an awaitable of it when the parent did
        not prefetch its records."""
        ctx = info.context
        binding = ctx.bindings.customer.get(field)
        if binding is None:
            return None
        if binding.slot in self.records:
            value = self._shape(ctx, info, binding, self.records[binding.slot], shape)
            siblings = ctx.siblings.get(id(self))
            if siblings is not None:
                siblings.prepare(ctx, field, str(info.path.key), shape, self)
            return value
        return self._load(ctx, info, binding, shape)

    async def _load(
        self,
        ctx: GraphContext,
        info: Info[GraphContext, None],
        binding: Binding,
        shape: Callable[[Any], Any],
    ) -> Any:
        key = self.links.get(binding.source)
        fetched: Any = None
        if key is not None:
            try:
                fetched = await ctx.loader(*binding.slot).load(key)
            except SourceUnavailable as error:
                fetched = error
        self.records[binding.slot] = fetched
        return self._shape(ctx, info, binding, fetched, shape)

    @staticmethod
    def _shape(
        ctx: GraphContext,
        info: Info[GraphContext, None],
        binding: Binding,
        fetched: Any,
        shape: Callable[[Any], Any],
    ) -> Any:
        value, failure = shape_value(binding, fetched, shape)
        if failure is not None:
            ctx.fail(failure, info.path.as_list())
        return value

    @policy_field("customer.orders", description="Newest first.", metadata=PREPARED_FIELD)
    def orders(self, info: Info[GraphContext, None], first: int | None = 10) -> list[Order] | None:
        return self._resolve(info, "orders", orders_shape(info.context, first))

    @policy_field("customer.tickets", description="Newest first.", metadata=PREPARED_FIELD)
    def tickets(
        self,
        info: Info[GraphContext, None],
        status: TicketStatus | None = None,
        first: int | None = 10,
    ) -> list[Ticket] | None:
        shape = tickets_shape(info.context, status, first, wanted=names_below(info))
        return self._resolve(info, "tickets", shape)

    @policy_field(
        "opportunity.owned",
        description="Open and past deals; a sales rep sees those of the accounts they own.",
        metadata=PREPARED_FIELD,
    )
    def opportunities(self, info: Info[GraphContext, None]) -> list[Opportunity] | None:
        shape = opportunities_shape(info.context, wanted=names_below(info))
        return self._resolve(info, "opportunities", shape)


def shape_value(
    binding: Binding, fetched: Any, shape: Callable[[Any], Any]
) -> tuple[Any, SourceUnavailable | None]:
    """A field's value from its source's record, or the failure to report: the system
    failed, or answered something that does not fit the field."""
    if fetched is None:
        return None, None
    if isinstance(fetched, SourceUnavailable):
        return None, fetched
    attribute = binding.attribute  # binding.pick, without a call per customer and field
    value = fetched if attribute is None else fetched.get(attribute)
    if value is None:
        return None, None
    try:
        return shape(value), None
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        # The exception's text may quote the value; only its type goes to the log.
        reason = f"malformed {binding.entity} record ({type(error).__name__})"
        return None, SourceUnavailable(binding.source, reason)


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class CustomerEdge:
    cursor: str
    node: Customer


@strawberry.type(description="A Relay cursor connection over customers, in CUID order.")
class CustomerConnection:
    edges: list[CustomerEdge]
    page_info: PageInfo
