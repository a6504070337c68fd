"""A person's rights requests as the access log holds them, for the console's list: each
`subjectReport`, `subjectErase` and `subjectRestrict` is a request's record (the report's
`audit_query`, the erasure's and restriction's `writes`), and its state follows from the
records alone. Never a value: the customer is a CUID, the requester a subject, the
systems names."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import strawberry

from resolvers.console_pages import RightsRequest as RightsRequestNode
from resolvers.console_pages import RightsRequestKind, RightsRequestStatus

Record = Mapping[str, Any]

REPORT = "report"
ERASE = "erase"
RESTRICT = "restrict"
LIFT = "lift"

COMPLETED = "completed"
OPEN = "open"  # a system could not be reached, or needs manual follow-up
FAILED = "failed"  # the request itself failed: nothing of it may have happened
IN_FORCE = "in_force"  # a restriction not lifted since
LIFTED = "lifted"  # a restriction lifted since, or the lift itself


@dataclass(frozen=True, slots=True)
class RightsRequest:
    id: str  # chain:seq of its record, and #n for the n-th request of one record
    at: dt.datetime
    order: tuple[str, str, int, int]  # (ts, chain, seq, n): the list's order, the cursor's
    kind: str
    customer: str
    requester: str | None
    roles: tuple[str, ...]
    purpose: str | None
    client: str | None
    request_id: str | None
    status: str
    erased: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()  # refused or down during an erasure: erase again
    manual: tuple[str, ...] = ()  # hold records but declare no erase: by hand
    unavailable: tuple[str, ...] = ()  # down during a report: the report is incomplete

    @property
    def open(self) -> bool:
        return self.status in (OPEN, FAILED)


def is_rights_record(record: Record) -> bool:
    """The same condition as the PostgreSQL sink's `RIGHTS_REQUEST` index."""
    if (record.get("audit_query") or {}).get("view") == "subject-report":
        return True
    return any(
        isinstance(w, Mapping) and w.get("mutation") in ("subjectErase", "subjectRestrict")
        for w in record.get("writes") or ()
    )


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def rights_requests(records: Iterable[Record]) -> list[RightsRequest]:
    """Every rights request of these records, newest first. A restriction is in force
    until a later lift of the same customer; records of other kinds are ignored."""
    found: list[RightsRequest] = []
    for record in records:
        if not is_rights_record(record):
            continue
        ts, chain, seq = str(record["ts"]), str(record["chain"]), int(record["seq"])
        at = dt.datetime.fromisoformat(ts)
        common: dict[str, Any] = {
            "at": at,
            "requester": record.get("subject"),
            "roles": tuple(record.get("roles") or ()),
            "purpose": record.get("purpose"),
            "client": record.get("client"),
            "request_id": record.get("request_id"),
        }
        base = f"{chain}:{seq}"
        failed_request = record.get("outcome") in ("error", "rejected")
        query = record.get("audit_query") or {}
        n = 0
        if query.get("view") == "subject-report" and query.get("customer"):
            down = tuple(
                sorted(
                    name
                    for name, use in (record.get("sources") or {}).items()
                    if isinstance(use, Mapping) and use.get("errors")
                )
            )
            status = FAILED if failed_request else (OPEN if down else COMPLETED)
            found.append(
                RightsRequest(
                    id=base,
                    order=(ts, chain, seq, n),
                    kind=REPORT,
                    customer=str(query["customer"]),
                    status=status,
                    unavailable=down,
                    **common,
                )
            )
            n += 1
        for write in record.get("writes") or ():
            if not isinstance(write, Mapping) or not write.get("customer"):
                continue
            mutation = write.get("mutation")
            if mutation == "subjectErase":
                erased, failed = _names(write.get("erased")), _names(write.get("failed"))
                manual = _names(write.get("manual"))
                done = "erased" in write  # written once every system was asked
                if failed_request or not done:
                    status = FAILED
                else:
                    status = OPEN if failed or manual else COMPLETED
                kind = ERASE
                extra: dict[str, Any] = {"erased": erased, "failed": failed, "manual": manual}
            elif mutation == "subjectRestrict":
                kind = RESTRICT if write.get("restricted") else LIFT
                status = FAILED if failed_request else (IN_FORCE if kind == RESTRICT else LIFTED)
                extra = {}
            else:
                continue
            found.append(
                RightsRequest(
                    id=base if n == 0 else f"{base}#{n}",
                    order=(ts, chain, seq, n),
                    kind=kind,
                    customer=str(write["customer"]),
                    status=status,
                    **extra,
                    **common,
                )
            )
            n += 1
    found.sort(key=lambda r: (r.at, r.order[1:]), reverse=True)
    # Newest first: a restriction is lifted by a lift of the same customer after it.
    lifted: set[str] = set()
    for index, request in enumerate(found):
        if request.kind == LIFT and request.status != FAILED:
            lifted.add(request.customer)
        elif request.status == IN_FORCE and request.customer in lifted:
            found[index] = dataclasses.replace(request, status=LIFTED)
    return found


def request_node(request: RightsRequest) -> RightsRequestNode:
    return RightsRequestNode(
        id=strawberry.ID(request.id),
        at=request.at,
        kind=RightsRequestKind(request.kind),
        customer=strawberry.ID(request.customer),
        requester=request.requester,
        roles=list(request.roles),
        purpose=request.purpose,
        client=request.client,
        request_id=request.request_id,
        status=RightsRequestStatus(request.status),
        erased=list(request.erased),
        failed=list(request.failed),
        manual=list(request.manual),
        unavailable=list(request.unavailable),
        order=request.order,
    )
