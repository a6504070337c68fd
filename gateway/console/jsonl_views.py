"""The console's questions answered over a JSON Lines log, by reading it through: the
JSONL sink is the single-instance, modest-volume choice, and this is the reference
meaning of each answer that the PostgreSQL read models reproduce with indexes."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from gateway.audit.sinks import JsonlSink, sort_key
from gateway.console.rights import is_rights_record
from resolvers.audit_views import (
    AccessOverview,
    AlertQuery,
    CustomerSeen,
    DayCount,
    FieldDecisionCount,
    FieldShare,
    FootprintSummary,
    HourCount,
    SubjectCount,
    Window,
)

Record = Mapping[str, Any]


def moment(record: Record) -> dt.datetime:
    return dt.datetime.fromisoformat(str(record["ts"]))


def in_window(records: Iterator[Record], window: Window) -> Iterator[Record]:
    for record in records:
        if (
            record.get("kind", "access") == "access"
            and window.since <= moment(record) < window.until
        ):
            yield record


def decisions_of(record: Record) -> Iterator[tuple[str, str, str]]:
    """(customer, field, decision) of every field decision in the record."""
    for customer, seen in (record.get("fields") or {}).items():
        for name, decision in seen.items():
            yield customer, name, decision


def summarise_footprint(
    records: Iterator[Record], subject: str, window: Window
) -> FootprintSummary:
    zone = window.zone
    requests: Counter[dt.date] = Counter()
    customers: defaultdict[dt.date, set[str]] = defaultdict(set)
    decisions: Counter[tuple[str, str]] = Counter()
    everyone: set[str] = set()
    denied = 0
    for record in in_window(records, window):
        if record.get("subject") != subject:
            continue
        day = moment(record).astimezone(zone).date()
        requests[day] += 1
        touched = record.get("customers") or []
        customers[day].update(touched)
        everyone.update(touched)
        seen = list(decisions_of(record))
        decisions.update((name, decision) for _, name, decision in seen)
        denied += any(decision == "deny" for _, _, decision in seen)
    return FootprintSummary(
        requests=sum(requests.values()),
        customers=len(everyone),
        denied_requests=denied,
        days=[
            DayCount(day=day, customers=len(customers[day]), requests=n)
            for day, n in sorted(requests.items())
        ],
        decisions=[
            FieldDecisionCount(field=name, decision=decision, count=n)
            for (name, decision), n in sorted(decisions.items())
        ],
    )


def customers_seen(
    records: Iterator[Record],
    subject: str,
    window: Window,
    first: int,
    after: tuple[str, str] | None,
) -> list[CustomerSeen]:
    """Newest last access first; ties by CUID, descending (the cursor's order)."""
    counts: Counter[str] = Counter()
    last: dict[str, dt.datetime] = {}
    for record in in_window(records, window):
        if record.get("subject") != subject:
            continue
        when = moment(record)
        for customer in record.get("customers") or []:
            counts[customer] += 1
            if customer not in last or when > last[customer]:
                last[customer] = when
    order = sorted(last, key=lambda c: (last[c], c), reverse=True)
    if after is not None:
        bound = (dt.datetime.fromisoformat(after[0]), after[1])
        order = [c for c in order if (last[c], c) < bound]
    return [
        CustomerSeen(customer=c, accesses=counts[c], last_seen=last[c])  # type: ignore[arg-type]
        for c in order[:first]
    ]


def summarise_overview(records: Iterator[Record], window: Window, top: int) -> AccessOverview:
    by_role: Counter[tuple[dt.datetime, str]] = Counter()
    by_decision: Counter[tuple[dt.datetime, str]] = Counter()
    shares: defaultdict[str, Counter[str]] = defaultdict(Counter)
    subject_customers: defaultdict[str, set[str]] = defaultdict(set)
    subject_requests: Counter[str] = Counter()
    for record in in_window(records, window):
        hour = moment(record).astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
        by_role[hour, ",".join(sorted(record.get("roles") or []))] += 1
        subject = record.get("subject")
        if subject:
            subject_requests[subject] += 1
            subject_customers[subject].update(record.get("customers") or [])
        for _, name, decision in decisions_of(record):
            by_decision[hour, decision] += 1
            shares[name][decision] += 1
    ranked = sorted(subject_customers, key=lambda s: (-len(subject_customers[s]), s))[:top]
    return AccessOverview(
        since=window.since,
        until=window.until,
        time_zone=window.time_zone,
        by_role=[HourCount(hour=h, key=k, count=n) for (h, k), n in sorted(by_role.items())],
        by_decision=[
            HourCount(hour=h, key=k, count=n) for (h, k), n in sorted(by_decision.items())
        ],
        top_subjects=[
            SubjectCount(
                subject=s, customers=len(subject_customers[s]), requests=subject_requests[s]
            )
            for s in ranked
            if subject_customers[s]
        ],
        fields=[
            FieldShare(field=name, allow=c["allow"], mask=c["mask"], deny=c["deny"])
            for name, c in sorted(shares.items())
        ],
    )


def select_alerts(
    records: Sequence[Record], query: AlertQuery
) -> list[tuple[Record, Record | None]]:
    acks: dict[str, Record] = {}
    for record in sorted(records, key=sort_key):
        if record.get("kind") == "ack":
            acks.setdefault(str(record.get("alert_id")), record)  # the first one stands
    found = []
    for record in sorted(records, key=sort_key, reverse=True):
        if record.get("kind") != "alert":
            continue
        if query.subject is not None and record.get("subject") != query.subject:
            continue
        when = moment(record)
        if query.since is not None and when < query.since:
            continue
        if query.until is not None and when >= query.until:
            continue
        if query.after is not None and sort_key(record) >= query.after:
            continue
        ack = acks.get(f"{record['chain']}:{record['seq']}")
        if query.acknowledged is not None and (ack is not None) != query.acknowledged:
            continue
        found.append((record, ack))
        if len(found) >= query.first:
            break
    return found


class JsonlViews:
    def __init__(self, sink: JsonlSink) -> None:
        self.sink = sink

    async def _records(self) -> list[Record]:
        return await asyncio.to_thread(lambda: [r for _, r in self.sink.lines() if r is not None])

    async def footprint(self, subject: str, window: Window) -> FootprintSummary:
        return summarise_footprint(iter(await self._records()), subject, window)

    async def footprint_customers(
        self, subject: str, window: Window, first: int, after: tuple[str, str] | None
    ) -> list[CustomerSeen]:
        return customers_seen(iter(await self._records()), subject, window, first, after)

    async def overview(self, window: Window, top: int) -> AccessOverview:
        return summarise_overview(iter(await self._records()), window, top)

    async def alerts(self, query: AlertQuery) -> list[tuple[Record, Record | None]]:
        return select_alerts(await self._records(), query)

    async def find(self, chain: str, seq: int) -> Record | None:
        for record in await self._records():
            if record.get("chain") == chain and record.get("seq") == seq:
                return record
        return None

    async def rights_records(self) -> list[Record]:
        return [r for r in await self._records() if is_rights_record(r)]

    async def acknowledgement(self, alert_id: str) -> Record | None:
        acks = [
            r
            for r in await self._records()
            if r.get("kind") == "ack" and r.get("alert_id") == alert_id
        ]
        return min(acks, key=sort_key) if acks else None
