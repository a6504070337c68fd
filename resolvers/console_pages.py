"""The console's pages beyond the access log's views: which pages a principal may open,
the rights requests (policy `rights.requests`) and data quality (policy `quality.read`).
Each use is recorded in the request's access record, as the audit views' are; nothing
here carries a personal value (customers by CUID, records by system id)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
from collections.abc import Sequence

import strawberry
from strawberry.types import Info

from policies.engine import Decision
from resolvers.audit_views import note_audit_use
from resolvers.context import GraphContext
from resolvers.decisions import decided, refused, static_rule
from resolvers.guard import default_policy_field, forbidden, policy_field
from resolvers.types import PageInfo, bad_input, page_size

RIGHTS_POLICY = "rights.requests"
QUALITY_POLICY = "quality.read"
# The console's pages, each with the policy that opens it.
PAGES = {
    "overview": "audit.read",
    "timeline": "audit.read",
    "footprint": "audit.read",
    "alerts": "audit.read",
    "integrity": "audit.read",
    "rights": RIGHTS_POLICY,
    "quality": QUALITY_POLICY,
}
# What a caller no page opens is refused with: the overview's denial (decided without any
# record, as every page's is); this one only names the policy should it not be.
DENIED_OVERVIEW = Decision("deny", PAGES["overview"], None, None, "no console page opened")


@strawberry.enum
class RightsRequestKind(enum.Enum):
    REPORT = "report"
    ERASE = "erase"
    RESTRICT = "restrict"
    LIFT = "lift"


@strawberry.enum
class RightsRequestStatus(enum.Enum):
    COMPLETED = "completed"
    OPEN = "open"
    FAILED = "failed"
    IN_FORCE = "in_force"
    LIFTED = "lifted"


@strawberry.type(description="One rights request, from its access record.")
class RightsRequest:
    id: strawberry.ID = strawberry.field(description="chain:seq of its record.")
    at: dt.datetime
    kind: RightsRequestKind
    customer: strawberry.ID = strawberry.field(description="The person, by CUID.")
    requester: str | None = strawberry.field(description="Who asked: the token's subject.")
    roles: list[str]
    purpose: str | None
    client: str | None
    request_id: str | None
    status: RightsRequestStatus = strawberry.field(
        description="OPEN: an erasure left systems to erase again (failed) or by hand "
        "(manual), or a report missed a system (unavailable). IN_FORCE / LIFTED: a "
        "restriction, lifted by a later request or not."
    )
    erased: list[str]
    failed: list[str]
    manual: list[str]
    unavailable: list[str]
    order: strawberry.Private[tuple[str, str, int, int]]


@strawberry.type
class RightsRequestEdge:
    cursor: str
    node: RightsRequest


@strawberry.type
class RightsRequestConnection:
    edges: list[RightsRequestEdge]
    page_info: PageInfo
    open: int = strawberry.field(description="Requests open or failed, over every page.")
    total: int


@strawberry.type
class QualitySystemFigures:
    system: str
    records: int | None
    match_rate: float | None
    duplicates: int | None
    conflicts: int | None
    unlinkable: int | None
    missing: int | None = strawberry.field(description="Null in a stored run's figures.")
    error: str | None


@strawberry.type
class QualityFieldFigures:
    system: str
    field: str
    check: str | None
    completeness: float | None
    validity: float | None
    records: int | None = strawberry.field(description="Null in a stored run's figures.")
    filled: int | None
    invalid: int | None


@strawberry.type(description="The figures of one quality run.")
class QualityRunFigures:
    ran_at: dt.datetime
    systems: list[QualitySystemFigures]
    fields: list[QualityFieldFigures]


@strawberry.type(description="A record to fix first: by system and id, never a value.")
class QualityWorstRecord:
    system: str
    id: str
    customer: strawberry.ID | None
    failed: list[str] = strawberry.field(
        description="The fields whose check it fails, then its crosswalk issues."
    )


@strawberry.type
class DataQuality:
    running: bool = strawberry.field(description="A run started here has not finished.")
    latest: QualityRunFigures | None
    trend: list[QualityRunFigures] = strawberry.field(description="Stored runs, oldest first.")
    worst: list[QualityWorstRecord] = strawberry.field(
        description="From the last run this gateway made (a stored run keeps no record)."
    )
    worst_ran_at: dt.datetime | None


# A record's seq is a PostgreSQL bigint: a cursor past it was not issued here.
SEQ_LIMIT = 2**63


def _cursor(order: tuple[str, str, int, int]) -> str:
    raw = "|".join(str(part) for part in order)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[dt.datetime, str, int, int]:
    """The place a cursor this API issued stands for. Anything else, however it was made,
    is BAD_USER_INPUT: only a cursor that encodes back to itself, with a timestamp that
    carries its timezone (the log's do; a naive one cannot be ordered among them) and
    numbers a record of the log can have."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, chain, seq, n = raw.rsplit("|", 3)
        order = (ts, chain, int(seq), int(n))
        at = dt.datetime.fromisoformat(ts)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as error:
        raise bad_input("after", "'after' is not a cursor this API issued") from error
    issued = at.utcoffset() is not None and all(0 <= part < SEQ_LIMIT for part in order[2:])
    if not issued or _cursor(order) != cursor:
        raise bad_input("after", "'after' is not a cursor this API issued")
    return at, chain, order[2], order[3]


def _placed(request: RightsRequest) -> tuple[dt.datetime, str, int, int]:
    _, chain, seq, n = request.order
    return request.at, chain, seq, n


def page_of(
    found: Sequence[RightsRequest], open_only: bool | None, first: int, after: str | None
) -> RightsRequestConnection:
    """`found` newest first; a page of them after the cursor."""
    is_open = {RightsRequestStatus.OPEN, RightsRequestStatus.FAILED}
    chosen = [r for r in found if open_only is None or (r.status in is_open) == open_only]
    if after is not None:
        bound = _decode(after)
        chosen = [r for r in chosen if _placed(r) < bound]
    edges = [RightsRequestEdge(cursor=_cursor(r.order), node=r) for r in chosen[:first]]
    return RightsRequestConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=len(chosen) > first,
            end_cursor=edges[-1].cursor if edges else None,
        ),
        open=sum(r.status in is_open for r in found),
        total=len(found),
    )


@strawberry.type
class ConsolePageQueries:
    @default_policy_field(
        description="The console pages the caller's policies open, decided from the policy "
        "file alone (nothing of the log is read); FORBIDDEN (the console's own policy, "
        "`audit.read`) when they open none, so that a refused sign-in is on the record."
    )
    def console_pages(self, info: Info[GraphContext, None]) -> list[str] | None:
        opened = [
            page for page, policy in PAGES.items() if not refused(static_rule(info.context, policy))
        ]
        if not opened:
            refusal = static_rule(info.context, PAGES["overview"])
            # Every page refused whatever the record: the overview's is a decided denial.
            raise forbidden(refusal if decided(refusal) else DENIED_OVERVIEW)
        return opened

    @policy_field(
        RIGHTS_POLICY,
        description="The rights requests in the access log (subject reports, erasures, "
        "restrictions), newest first, with their state: security and the privacy office; "
        "logged.",
    )
    async def rights_requests(
        self,
        info: Info[GraphContext, None],
        open: bool | None = None,
        first: int | None = 50,
        after: str | None = None,
    ) -> RightsRequestConnection | None:
        ctx = info.context
        limit = page_size(first, "first", 500, 50)
        note_audit_use(ctx, "rights-requests", open=open)
        found = await ctx.audit.rights_requests()
        return page_of(found, open, limit, after)

    @policy_field(
        QUALITY_POLICY,
        description="Data quality per system and field, its trend over the stored runs and "
        "the records to fix first (by system and id, never a value); logged.",
    )
    async def data_quality(
        self, info: Info[GraphContext, None], runs: int | None = 30
    ) -> DataQuality | None:
        ctx = info.context
        last = page_size(runs, "runs", 365, 30)
        note_audit_use(ctx, "quality", runs=last)
        result: DataQuality = await ctx.audit.data_quality(last)
        return result


@strawberry.type
class ConsolePageMutations:
    @policy_field(
        QUALITY_POLICY,
        description="Start a data-quality run in the background (it reads every system's "
        "records); false when one is running already. Logged.",
    )
    def start_data_quality_run(self, info: Info[GraphContext, None]) -> bool | None:
        ctx = info.context
        started: bool = ctx.audit.start_quality_run()
        note_audit_use(ctx, "quality-run", started=started)
        return started
