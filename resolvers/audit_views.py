"""The security console's questions to the access log: a subject's footprint, an overview
of a time range, the alerts with their acknowledgements, and the integrity of the chains.
Each is under policy `audit.read` and each use is recorded like `accessLog`'s."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import strawberry
from strawberry.types import Info

from connectors.identity.keys import is_cuid
from resolvers.audit import (
    AccessRecord,
    access_node,
    decode_record_cursor,
    record_cursor,
    searched_subject,
)
from resolvers.context import GraphContext
from resolvers.guard import policy_field
from resolvers.types import PageInfo, bad_input, page_size

MAX_SPAN = dt.timedelta(days=92)
HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Window:
    """A time range in whole hours (the hourly read models answer it exactly), and the
    viewer's time zone, in which days begin."""

    since: dt.datetime
    until: dt.datetime
    time_zone: str

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def days(self) -> list[dt.date]:
        first = self.since.astimezone(self.zone).date()
        last = (self.until - dt.timedelta(microseconds=1)).astimezone(self.zone).date()
        return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


@strawberry.type
class DayCount:
    day: dt.date
    customers: int
    requests: int


@strawberry.type
class FieldDecisionCount:
    field: str
    decision: str
    count: int


@strawberry.type
class HourCount:
    hour: dt.datetime
    key: str = strawberry.field(description="A role (comma-joined roles), or a decision.")
    count: int


@strawberry.type
class SubjectCount:
    subject: str
    customers: int = strawberry.field(description="Distinct customers read in the range.")
    requests: int


@strawberry.type
class FieldShare:
    field: str
    allow: int
    mask: int
    deny: int


@strawberry.type
class CustomerSeen:
    customer: strawberry.ID
    accesses: int
    last_seen: dt.datetime


@strawberry.type
class CustomerSeenEdge:
    cursor: str
    node: CustomerSeen


@strawberry.type
class CustomerSeenConnection:
    edges: list[CustomerSeenEdge]
    page_info: PageInfo


@dataclass(frozen=True, slots=True)
class FootprintSummary:
    requests: int
    customers: int
    denied_requests: int
    days: Sequence[DayCount]  # only days with requests; the resolver adds the empty ones
    decisions: Sequence[FieldDecisionCount]


@strawberry.type
class AccessOverview:
    since: dt.datetime
    until: dt.datetime
    time_zone: str
    by_role: list[HourCount] = strawberry.field(description="Requests per UTC hour and role.")
    by_decision: list[HourCount] = strawberry.field(
        description="Field decisions (one per customer and field) per UTC hour."
    )
    top_subjects: list[SubjectCount]
    fields: list[FieldShare]


@strawberry.type
class AlertAcknowledgement:
    id: strawberry.ID = strawberry.field(description="The acknowledgement's own record.")
    alert_id: strawberry.ID
    by: str | None
    at: dt.datetime
    resolution: str


@strawberry.type
class AccessAlertEdge:
    cursor: str
    node: AccessRecord
    acknowledgement: AlertAcknowledgement | None


@strawberry.type
class AccessAlertConnection:
    edges: list[AccessAlertEdge]
    page_info: PageInfo


@strawberry.type
class ChainState:
    chain: str
    last_seq: int = strawberry.field(description="The last record verified in order.")


@strawberry.type
class ChainBreak:
    chain: str
    seq: int | None
    location: str
    problem: str


@strawberry.type
class CheckpointChain:
    chain: str
    size: int = strawberry.field(description="Records of the chain the checkpoint covers.")
    root: str = strawberry.field(description="The chain's Merkle tree root (hex), RFC 6962.")


@strawberry.type(description="What of the log no longer matches the checkpoint.")
class CheckpointFinding:
    chain: str
    kind: str = strawberry.field(
        description="truncated, rewritten, inserted, deleted, broken, forged or pruned."
    )
    message: str
    fatal: bool = strawberry.field(description="False for a note (its records were pruned).")


@strawberry.type(
    description="The newest signed checkpoint (`c360 audit verify --checkpoint latest`'s), "
    "and whether the log verifies against it."
)
class CheckpointState:
    file: str
    scope: str = strawberry.field(description="log, chain (a writer's own) or cut (a prune's).")
    timestamp: dt.datetime
    key_id: str = strawberry.field(description="The id of the key that signed it.")
    tree_size: int = strawberry.field(description="Records it covers, over all its chains.")
    chains: list[CheckpointChain]
    signature_valid: bool = strawberry.field(
        description="A configured checkpoint key signed exactly this checkpoint."
    )
    signature_problem: str | None
    log_verifies: bool | None = strawberry.field(
        description="The log is intact and holds the checkpoint's records unchanged; null "
        "until a check compared them (or when the signature does not verify)."
    )
    compared_at: dt.datetime | None
    findings: list[CheckpointFinding]


@strawberry.type(description="What `c360 audit verify` reports, from the gateway's last check.")
class AccessLogIntegrity:
    checking: bool = strawberry.field(description="A check is running; ask again shortly.")
    checked_at: dt.datetime | None
    intact: bool | None = strawberry.field(description="Null until a first check finished.")
    records: int
    chains: list[ChainState]
    breaks: list[ChainBreak]
    torn_tail: str | None = strawberry.field(
        description="An incomplete last record (a crash), ignored as verify ignores it."
    )
    checkpoints_configured: bool = strawberry.field(
        default=False, description="An `audit.checkpoint_key` is configured."
    )
    checkpoint: CheckpointState | None = strawberry.field(
        default=None, description="Null when no checkpoint was written yet."
    )


@dataclass(frozen=True, slots=True)
class AlertQuery:
    subject: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    acknowledged: bool | None = None
    first: int = 50
    after: tuple[str, str, int] | None = None


class AccessViews(Protocol):
    """What the console's queries ask of the access log (the gateway implements it for
    each sink)."""

    async def footprint(self, subject: str, window: Window) -> FootprintSummary: ...

    async def footprint_customers(
        self, subject: str, window: Window, first: int, after: tuple[str, str] | None
    ) -> Sequence[CustomerSeen]: ...

    async def overview(self, window: Window, top: int) -> AccessOverview: ...

    async def alerts(
        self, query: AlertQuery
    ) -> Sequence[tuple[Mapping[str, Any], Mapping[str, Any] | None]]: ...

    async def integrity(self, refresh: bool) -> AccessLogIntegrity: ...

    async def find(self, chain: str, seq: int) -> Mapping[str, Any] | None: ...

    async def acknowledgement(self, alert_id: str) -> Mapping[str, Any] | None:
        """The first `ack` record naming the alert (chain:seq)."""
        ...

    async def append(self, record: dict[str, Any]) -> Mapping[str, Any]: ...


def note_audit_use(ctx: GraphContext, view: str, **params: Any) -> None:
    """Record what a console query looked for in the request's access record. A request
    may ask several: the first is the record's `audit_query`, the others go in `also`.
    Each parameter is an id, a name, a time, a count or a state, or a subject as its
    pseudonym (`searched_subject`): never free text."""
    entry: dict[str, Any] = {"view": view}
    for key, value in params.items():
        if value is not None:
            entry[key] = value.isoformat() if isinstance(value, dt.datetime | dt.date) else value
    if ctx.audit_query is None:
        ctx.audit_query = entry
    else:
        ctx.audit_query.setdefault("also", []).append(entry)


def window(
    since: dt.datetime | None, until: dt.datetime | None, time_zone: str, default: dt.timedelta
) -> Window:
    """Whole hours: `since` down, `until` up; by default the `default` span up to now."""
    try:
        zoneinfo.ZoneInfo(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise bad_input("timeZone", "'timeZone' is not an IANA time zone name") from error
    end = _aware(until) if until is not None else dt.datetime.now(dt.UTC)
    start = _aware(since) if since is not None else end - default
    start = start.replace(minute=0, second=0, microsecond=0)
    floor = end.replace(minute=0, second=0, microsecond=0)
    end = floor if floor == end else floor + HOUR
    if end <= start:
        raise bad_input("until", "'until' must be after 'since'")
    if end - start > MAX_SPAN:
        raise bad_input("since", f"the range is at most {MAX_SPAN.days} days")
    return Window(start.astimezone(dt.UTC), end.astimezone(dt.UTC), time_zone)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _customer_cursor(seen: CustomerSeen) -> str:
    raw = f"{seen.last_seen.isoformat()}|{seen.customer}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_customer_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, customer = raw.rsplit("|", 1)
        dt.datetime.fromisoformat(ts)
        if not is_cuid(customer):
            raise ValueError("not a customer id")
        return ts, customer
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise bad_input("after", "'after' is not a cursor this API issued") from error


@strawberry.type(description="What one subject read over a time range.")
class AccessFootprint:
    subject: str
    since: dt.datetime
    until: dt.datetime
    time_zone: str
    requests: int
    customers: int = strawberry.field(description="Distinct customers touched.")
    denied_requests: int = strawberry.field(description="Requests with a denied field.")
    days: list[DayCount] = strawberry.field(description="Every day of the range, in its zone.")
    decisions: list[FieldDecisionCount]
    views: strawberry.Private[AccessViews]
    window: strawberry.Private[Window]

    @strawberry.field(description="The customers touched, the most recently seen first.")
    async def customers_seen(
        self, first: int | None = 50, after: str | None = None
    ) -> CustomerSeenConnection:
        limit = page_size(first, "first", 500, 50)
        start = _decode_customer_cursor(after) if after else None
        found = list(
            await self.views.footprint_customers(self.subject, self.window, limit + 1, start)
        )
        edges = [CustomerSeenEdge(cursor=_customer_cursor(s), node=s) for s in found[:limit]]
        return CustomerSeenConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=len(found) > limit,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )


def acknowledgement(record: Mapping[str, Any]) -> AlertAcknowledgement:
    return AlertAcknowledgement(
        id=strawberry.ID(f"{record['chain']}:{record['seq']}"),
        alert_id=strawberry.ID(str(record.get("alert_id"))),
        by=record.get("subject"),
        at=dt.datetime.fromisoformat(str(record["ts"])),
        resolution=str(record.get("resolution") or "reviewed"),
    )


def _subject(value: str, argument: str = "subject") -> str:
    if not value or len(value) > 256 or not value.isprintable():
        raise bad_input(argument, f"'{argument}' is not a subject name")
    return value


@strawberry.type
class ConsoleQueries:
    @policy_field(
        "audit.read",
        description=(
            "The CUID of the customer with this email, for the console's timeline: security "
            "only, and the request's record names the CUID found, never the email."
        ),
    )
    def audit_customer_by_email(
        self, info: Info[GraphContext, None], email: str
    ) -> strawberry.ID | None:
        # Unlike the graph's lookups (which answer a refusal to a caller who may not read
        # the email, found or not), this one is the audit policy's: finding whose timeline
        # to review is what the console is for, and each use is on the record.
        if len(email) > 320 or "@" not in email:
            raise bad_input("email", "'email' is not an email address")
        cuid = info.context.identity.find_email(email)
        note_audit_use(info.context, "find-customer", customer=cuid, found=cuid is not None)
        return strawberry.ID(cuid) if cuid is not None else None

    @policy_field("audit.read", description="What one subject read: security only, logged.")
    async def access_footprint(
        self,
        info: Info[GraphContext, None],
        subject: str,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        time_zone: str = "UTC",
    ) -> AccessFootprint | None:
        ctx = info.context
        span = window(since, until, time_zone, dt.timedelta(days=7))
        note_audit_use(
            ctx,
            "footprint",
            subject=searched_subject(ctx, _subject(subject)),
            since=span.since,
            until=span.until,
        )
        summary = await ctx.audit.footprint(subject, span)
        known = {day.day: day for day in summary.days}
        return AccessFootprint(
            subject=subject,
            since=span.since,
            until=span.until,
            time_zone=time_zone,
            requests=summary.requests,
            customers=summary.customers,
            denied_requests=summary.denied_requests,
            days=[
                known.get(day) or DayCount(day=day, customers=0, requests=0) for day in span.days()
            ],
            decisions=list(summary.decisions),
            views=ctx.audit,
            window=span,
        )

    @policy_field(
        "audit.read",
        description="Requests per hour by role and by decision, top subjects by distinct "
        "customers, masked and denied shares per field. Security only; logged.",
    )
    async def access_overview(
        self,
        info: Info[GraphContext, None],
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        time_zone: str = "UTC",
        top: int | None = 10,
    ) -> AccessOverview | None:
        ctx = info.context
        span = window(since, until, time_zone, dt.timedelta(hours=24))
        note_audit_use(ctx, "overview", since=span.since, until=span.until)
        result: AccessOverview = await ctx.audit.overview(span, page_size(top, "top", 50, 10))
        return result

    @policy_field(
        "audit.read",
        description="Bulk-access and denied-burst alerts, newest first, with their "
        "acknowledgements. Security only; logged.",
    )
    async def access_alerts(
        self,
        info: Info[GraphContext, None],
        subject: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        acknowledged: bool | None = None,
        first: int | None = 50,
        after: str | None = None,
    ) -> AccessAlertConnection | None:
        ctx = info.context
        limit = page_size(first, "first", 500, 50)
        note_audit_use(
            ctx,
            "alerts",
            subject=subject and searched_subject(ctx, _subject(subject)),
            since=since,
            until=until,
            acknowledged=acknowledged,
        )
        query = AlertQuery(
            subject=subject,
            since=since,
            until=until,
            acknowledged=acknowledged,
            first=limit + 1,
            after=decode_record_cursor(after) if after else None,
        )
        found = list(await ctx.audit.alerts(query))
        edges = [
            AccessAlertEdge(
                cursor=record_cursor(alert),
                node=access_node(alert),
                acknowledgement=acknowledgement(ack) if ack else None,
            )
            for alert, ack in found[:limit]
        ]
        return AccessAlertConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=len(found) > limit,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )

    @policy_field(
        "audit.read",
        description="The hash chains' integrity, as `c360 audit verify` reports it, from a "
        "check the gateway runs in the background (`refresh` starts a new one).",
    )
    async def access_log_integrity(
        self, info: Info[GraphContext, None], refresh: bool = False
    ) -> AccessLogIntegrity | None:
        ctx = info.context
        note_audit_use(ctx, "integrity")
        result: AccessLogIntegrity = await ctx.audit.integrity(refresh)
        return result
