"""What a reviewer does in the console, as mutations that leave a trace in the access log:
acknowledging an alert (an `ack` record of its own, policy `audit.ack`) and exporting a
view as CSV (recorded in the request's own record, policy `audit.read`). Neither records
free text (a subject filter is kept as its keyed pseudonym), so no personal value can
reach the log through them."""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable, Collection
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.types import Info

from resolvers.audit import DECISIONS, checked_customer, checked_field, searched_subject
from resolvers.audit_views import AlertAcknowledgement, acknowledgement, note_audit_use
from resolvers.context import GraphContext
from resolvers.guard import policy_field
from resolvers.types import bad_input

log = logging.getLogger("c360.console")


@strawberry.enum
class AlertResolution(enum.Enum):
    REVIEWED = "reviewed"
    EXPECTED = "expected"
    ESCALATED = "escalated"
    FALSE_POSITIVE = "false_positive"


@strawberry.enum
class ConsoleView(enum.Enum):
    TIMELINE = "timeline"
    FOOTPRINT = "footprint"
    ALERTS = "alerts"
    OVERVIEW = "overview"


@strawberry.enum(description="Which of a view's tables was exported.")
class ConsoleTable(enum.Enum):
    TIMELINE = "timeline"
    FOOTPRINT_CUSTOMERS = "footprint_customers"
    FOOTPRINT_DECISIONS = "footprint_decisions"
    FOOTPRINT_DENIED = "footprint_denied"
    ALERTS = "alerts"
    TOP_SUBJECTS = "top_subjects"
    FIELD_SHARES = "field_shares"


VIEW_OF_TABLE = {
    ConsoleTable.TIMELINE: ConsoleView.TIMELINE,
    ConsoleTable.FOOTPRINT_CUSTOMERS: ConsoleView.FOOTPRINT,
    ConsoleTable.FOOTPRINT_DECISIONS: ConsoleView.FOOTPRINT,
    ConsoleTable.FOOTPRINT_DENIED: ConsoleView.FOOTPRINT,
    ConsoleTable.ALERTS: ConsoleView.ALERTS,
    ConsoleTable.TOP_SUBJECTS: ConsoleView.OVERVIEW,
    ConsoleTable.FIELD_SHARES: ConsoleView.OVERVIEW,
}


ALERT_STATES = {False: "open", True: "acknowledged", None: "all"}


@strawberry.input
class ConsoleExportFilters:
    customer: strawberry.ID | None = None
    subject: str | None = None
    field: str | None = None
    decision: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    # Left out: no filter of that kind. Null, as in `accessAlerts`: acknowledged or not,
    # recorded as state "all", so an export of every alert says so too.
    acknowledged: bool | None = strawberry.field(
        default=strawberry.UNSET,
        description="The alerts' state: false open, true acknowledged, null both.",
    )


@strawberry.type
class ConsoleExportReceipt:
    request_id: str | None = strawberry.field(description="The request whose record holds it.")
    view: ConsoleView
    rows: int


def _alert_id(value: str) -> tuple[str, int]:
    chain, _, seq = value.rpartition(":")
    if not chain or not seq.isdigit():
        raise bad_input("id", "'id' is an alert id (chain:seq)")
    return chain, int(seq)


def _filters(
    filters: ConsoleExportFilters | None,
    known: Collection[str],
    pseudonym: Callable[[str], str],
) -> dict[str, Any]:
    """The filters as the log keeps them, each checked to be an id, a name, a time or a
    state, and a subject kept as its `pseudonym`: a filter is never a place for a
    customer's email or name."""
    if filters is None:
        return {}
    kept: dict[str, Any] = {}
    if filters.customer is not None:
        kept["customer"] = checked_customer(filters.customer, "filters")
    if filters.subject is not None:
        if not filters.subject or len(filters.subject) > 256 or not filters.subject.isprintable():
            raise bad_input("filters", "'subject' is not a subject name")
        kept["subject"] = pseudonym(filters.subject)
    if filters.field is not None:
        kept["field"] = checked_field(filters.field, "filters", known)
    if filters.decision is not None:
        if filters.decision not in DECISIONS:
            raise bad_input("filters", "'decision' is allow, mask or deny")
        kept["decision"] = filters.decision
    for key, moment in (("since", filters.since), ("until", filters.until)):
        if moment is not None:
            kept[key] = moment.isoformat()
    if filters.acknowledged is not strawberry.UNSET:
        kept["state"] = ALERT_STATES[filters.acknowledged]
    return kept


@strawberry.type
class ConsoleMutations:
    @policy_field(
        "audit.ack",
        description="Acknowledge an alert: writes an `ack` record naming the alert into the "
        "access log. Acknowledging twice returns the first acknowledgement.",
    )
    async def acknowledge_access_alert(
        self,
        info: Info[GraphContext, None],
        id: strawberry.ID,
        resolution: AlertResolution = AlertResolution.REVIEWED,
    ) -> AlertAcknowledgement | None:
        ctx = info.context
        chain, seq = _alert_id(id)
        note_audit_use(ctx, "ack", alert=id, resolution=resolution.value)
        alert = await ctx.audit.find(chain, seq)
        if alert is None or alert.get("kind") != "alert":
            raise bad_input("id", "no alert has this id")
        earlier = await ctx.audit.acknowledgement(f"{chain}:{seq}")
        if earlier is not None:  # acknowledged already: the first acknowledgement stands
            return acknowledgement(earlier)
        principal = ctx.guard.principal
        record = {
            "kind": "ack",
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": ctx.request_id,
            "subject": principal.subject,
            "roles": sorted(principal.roles),
            "purpose": principal.purpose,
            "customers": [],
            "fields": {},
            "alert_id": f"{chain}:{seq}",
            "alert_subject": alert.get("subject"),
            "resolution": resolution.value,
        }
        try:
            written = await ctx.audit.append(record)
        except Exception as error:
            # The log could not make it durable (fail_closed), so nothing was acknowledged;
            # the reason goes to the gateway's log, not to the client.
            log.warning("acknowledgement not recorded", extra={"reason": type(error).__name__})
            raise GraphQLError(
                "The access log cannot record the acknowledgement; try again.",
                extensions={"code": "AUDIT_UNAVAILABLE"},
            ) from error
        return acknowledgement(written)

    @policy_field(
        "audit.read",
        description="Record that the reviewer exported a console view as CSV (the export "
        "itself happens in the browser, from rows fetched through this API).",
    )
    def record_console_export(
        self,
        info: Info[GraphContext, None],
        view: ConsoleView,
        rows: int,
        filters: ConsoleExportFilters | None = None,
        table: ConsoleTable | None = None,
    ) -> ConsoleExportReceipt | None:
        ctx = info.context
        if rows < 0 or rows > 10_000_000:
            raise bad_input("rows", "'rows' is a count of exported rows")
        if table is not None and VIEW_OF_TABLE[table] is not view:
            raise bad_input("table", f"'table' is not a table of the {view.name} view")
        kept = _filters(filters, ctx.graph.field_names, lambda s: searched_subject(ctx, s))
        if table is not None:  # a view with several tables: which one left the console
            kept = {"table": table.value, **kept}
        note_audit_use(ctx, "export", export=view.value, rows=rows, **kept)
        return ConsoleExportReceipt(
            request_id=ctx.request_id,
            view=view,
            rows=rows,
        )
