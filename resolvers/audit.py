"""`accessLog`: the access log through the graph, for the `security` role (policy
`audit.read`). Its own use is recorded like any other request, with what was looked for."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import strawberry
from strawberry.types import Info

from connectors.identity.keys import is_cuid
from policies.masks import mask_redact
from resolvers.context import GraphContext
from resolvers.guard import policy_field
from resolvers.types import PageInfo, bad_input, page_size


@dataclass(frozen=True, slots=True)
class AuditQuery:
    customer: str | None = None
    subject: str | None = None
    field: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    kind: str | None = None
    first: int = 50
    after: tuple[str, str, int] | None = None
    decision: str | None = None


DECISIONS = ("allow", "mask", "deny")
KINDS = ("access", "write", "alert", "ack")


def checked_customer(value: str, argument: str, name: str = "customer") -> str:
    """A customer is named by CUID only: what a console query looked for is copied into
    its own access record, and an email or a name must never reach the log that way."""
    if not is_cuid(value):
        raise bad_input(argument, f"'{name}' is a customer id (cus_ and 16 characters)")
    return value


def checked_field(value: str, argument: str, known: Collection[str], name: str = "field") -> str:
    """A field is one of Customer's (`known`: the graph's), for the same reason: no free
    text into the log."""
    if value not in known:
        raise bad_input(argument, f"'{name}' is a Customer field name, e.g. nationalId")
    return value


def searched_subject(ctx: GraphContext, value: str) -> str:
    """A subject a console query looked for, as the request's record keeps it: the keyed
    pseudonym of the policies' `hash` mask (`[policies] hash_key`: `h1:<key id>:…`), never
    the text. A subject is free text (an email typed into the search would otherwise be
    at rest in the log); the same subject under the same key gives the same pseudonym, so
    who looked for whom can still be matched. Without a keyed mask, redacted."""
    return ctx.guard.masks.get("hash", mask_redact)(value)


class AuditReader(Protocol):
    async def search(self, query: AuditQuery) -> Sequence[Mapping[str, Any]]: ...


@strawberry.type
class FieldAccess:
    customer: strawberry.ID
    field: str
    decision: str
    policy: str | None


@strawberry.type
class SourceUseRecord:
    source: str
    calls: int
    cache_hits: int
    errors: int


@strawberry.type
class AccessAlert:
    type: str
    distinct_customers: int | None
    denied_fields: int | None
    threshold: int
    window_seconds: float


@strawberry.type(description="A change a request made (kind write): never a value.")
class WriteAccess:
    customer: strawberry.ID | None
    mutation: str
    system: str
    fields: list[str]
    outcome: str


@strawberry.type(description="One access-log record: a request, or an alert it raised.")
class AccessRecord:
    id: strawberry.ID
    kind: str
    ts: dt.datetime
    request_id: str | None
    trace_id: str | None
    subject: str | None
    roles: list[str]
    purpose: str | None
    client: str | None
    operation: str | None
    outcome: str | None
    status: int | None
    duration_ms: float | None
    customers: list[strawberry.ID]
    sources: list[SourceUseRecord]
    alert: AccessAlert | None
    chain: str
    seq: int
    alert_id: strawberry.ID | None = strawberry.field(
        description="For an acknowledgement (kind ack): the alert it acknowledges."
    )
    record: strawberry.Private[Mapping[str, Any]]

    @strawberry.field(
        description="Each field decision of the request; with `customer`, that customer's only."
    )
    def fields(self, customer: strawberry.ID | None = None) -> list[FieldAccess]:
        if customer is not None:
            checked_customer(customer, "customer")
        policies: Mapping[str, str] = self.record.get("policies") or {}
        decided: Mapping[str, Mapping[str, str]] = self.record.get("fields") or {}
        chosen = [(customer, decided.get(customer) or {})] if customer else decided.items()
        return [
            FieldAccess(
                customer=strawberry.ID(who),
                field=name,
                decision=decision,
                policy=policies.get(name),
            )
            for who, seen in chosen
            for name, decision in seen.items()
        ]

    @strawberry.field(
        description="The changes of a write (kind write); with `customer`, that customer's."
    )
    def writes(self, customer: strawberry.ID | None = None) -> list[WriteAccess]:
        if customer is not None:
            checked_customer(customer, "customer")
        return [
            WriteAccess(
                customer=strawberry.ID(w["customer"]) if w.get("customer") else None,
                mutation=str(w.get("mutation", "")),
                system=str(w.get("system") or ",".join(w.get("systems") or ())),
                fields=[str(f) for f in w.get("fields") or ()],
                outcome=str(w.get("outcome", "")),
            )
            for w in self.record.get("writes") or ()
            if customer is None or w.get("customer") == customer
        ]


@strawberry.type
class AccessRecordEdge:
    cursor: str
    node: AccessRecord


@strawberry.type
class AccessRecordConnection:
    edges: list[AccessRecordEdge]
    page_info: PageInfo


def record_cursor(record: Mapping[str, Any]) -> str:
    raw = f"{record['ts']}|{record['chain']}|{record['seq']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_record_cursor(cursor: str) -> tuple[str, str, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, chain, seq = raw.rsplit("|", 2)
        dt.datetime.fromisoformat(ts)
        return ts, chain, int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise bad_input("after", "'after' is not a cursor this API issued") from error


def access_node(record: Mapping[str, Any]) -> AccessRecord:
    alert = None
    if record.get("kind") == "alert":
        alert = AccessAlert(
            type=str(record.get("alert")),
            distinct_customers=record.get("distinct_customers"),
            denied_fields=record.get("denied_fields"),
            threshold=int(record.get("threshold") or 0),
            window_seconds=float(record.get("window_s") or 0),
        )
    return AccessRecord(
        id=strawberry.ID(f"{record['chain']}:{record['seq']}"),
        kind=str(record.get("kind", "access")),
        ts=dt.datetime.fromisoformat(str(record["ts"])),
        request_id=record.get("request_id"),
        trace_id=record.get("trace_id"),
        subject=record.get("subject"),
        roles=list(record.get("roles") or []),
        purpose=record.get("purpose"),
        client=record.get("client"),
        operation=record.get("operation"),
        outcome=record.get("outcome"),
        status=record.get("status"),
        duration_ms=record.get("duration_ms"),
        customers=[strawberry.ID(c) for c in record.get("customers") or []],
        sources=[
            SourceUseRecord(
                source=name,
                calls=int(use.get("calls", 0)),
                cache_hits=int(use.get("cache_hits", 0)),
                errors=int(use.get("errors", 0)),
            )
            for name, use in (record.get("sources") or {}).items()
        ],
        alert=alert,
        chain=str(record["chain"]),
        seq=int(record["seq"]),
        alert_id=record.get("alert_id"),
        record=record,
    )


@strawberry.type
class AuditQueries:
    @policy_field(
        "audit.read",
        description="Access-log records, newest first. Security only; each use is itself logged.",
    )
    async def access_log(
        self,
        info: Info[GraphContext, None],
        customer: strawberry.ID | None = None,
        subject: str | None = None,
        field: str | None = None,
        kind: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        first: int | None = 50,
        after: str | None = None,
        decision: str | None = None,
    ) -> AccessRecordConnection | None:
        ctx = info.context
        limit = page_size(first, "first", 500, 50)
        # Checked before anything is noted: the arguments go into this request's record.
        if customer is not None:
            checked_customer(customer, "customer")
        if field is not None:
            checked_field(field, "field", ctx.graph.field_names)
        if kind is not None and kind not in KINDS:
            raise bad_input("kind", "'kind' is access, write, alert or ack")
        if decision is not None and decision not in DECISIONS:
            raise bad_input("decision", "'decision' is allow, mask or deny")
        query = AuditQuery(
            customer=customer,
            subject=subject,
            field=field,
            since=since,
            until=until,
            kind=kind,
            first=limit + 1,
            after=decode_record_cursor(after) if after else None,
            decision=decision,
        )
        ctx.audit_query = {
            key: value.isoformat() if isinstance(value, dt.datetime) else value
            for key, value in (
                ("customer", customer),
                ("subject", searched_subject(ctx, subject) if subject is not None else None),
                ("field", field),
                ("decision", decision),
                ("kind", kind),
                ("since", since),
                ("until", until),
            )
            if value is not None
        }
        records = list(await ctx.audit.search(query))
        edges = [
            AccessRecordEdge(cursor=record_cursor(r), node=access_node(r)) for r in records[:limit]
        ]
        return AccessRecordConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=len(records) > limit,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )
