"""The console's questions answered from the PostgreSQL sink's read models
(`c360_access_customer`, the hourly tables): each is an index range scan or a sum over
hourly rows, so a view stays fast on a log of millions of records. Same answers as
`jsonl_views`, which is the reference."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import strawberry
from sqlalchemy import Text, and_, cast, distinct, func, literal, select, tuple_
from sqlalchemy.dialects.postgresql import TIMESTAMP

from gateway.audit import reach
from gateway.audit.sinks import (
    RIGHTS_REQUEST,
    PostgresSink,
    Rollup,
    customer_table,
    decision_hourly_table,
    hourly_table,
)
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
DENY_BIT = 4


class PostgresViews:
    def __init__(self, sink: PostgresSink) -> None:
        self.sink = sink
        self.log = sink.table

    async def footprint(self, subject: str, window: Window) -> FootprintSummary:
        rows, log = customer_table, self.log
        mine = and_(rows.c.subject == subject, rows.c.ts >= window.since, rows.c.ts < window.until)
        local_day = func.date(func.timezone(window.time_zone, rows.c.ts))
        # One pass over the subject's rows: distinct customers per day, and in all.
        per_day = (
            select(local_day, func.count(distinct(rows.c.customer)))
            .where(mine)
            .group_by(func.grouping_sets(tuple_(local_day), tuple_()))
        )
        log_day = func.date(func.timezone(window.time_zone, log.c.ts))
        requests_per_day = (
            select(log_day, func.count())
            .where(
                log.c.subject == subject,
                log.c.kind == "access",
                log.c.ts >= window.since,
                log.c.ts < window.until,
            )
            .group_by(log_day)
        )
        denied = select(func.count()).select_from(
            select(rows.c.chain, rows.c.seq)
            .where(mine, rows.c.effects.op("&")(DENY_BIT) != 0)
            .distinct()
            .subquery()
        )
        # Decisions: the hourly counts for whole hours, the subject's customer rows for the
        # minutes at either end.
        decisions = decision_hourly_table
        first, last = reach.whole_hours(window.since, window.until)
        per_decision = (
            select(decisions.c.field, decisions.c.decision, func.sum(decisions.c.n))
            .where(
                decisions.c.subject == subject,
                decisions.c.hour >= first,
                decisions.c.hour < max(first, last),
            )
            .group_by(decisions.c.field, decisions.c.decision)
        )
        edges = [
            select(rows.c.decisions).where(mine, rows.c.ts >= start, rows.c.ts < end)
            for start, end in reach.leftovers(window.since, window.until)
        ]
        async with self.sink.engine.connect() as connection:
            customers = {day: n for day, n in await connection.execute(per_day)}
            distinct_customers = customers.pop(None, 0)  # the grand total's row
            requests = {day: n for day, n in await connection.execute(requests_per_day)}
            denied_requests = (await connection.execute(denied)).scalar_one()
            fields: Counter[tuple[str, str]] = Counter()
            for name, decision, n in await connection.execute(per_decision):
                fields[name, decision] += int(n)
            for edge in edges:
                for (decided,) in await connection.execute(edge):
                    fields.update(tuple(pair.rsplit(":", 1)) for pair in decided)
        return FootprintSummary(
            requests=sum(requests.values()),
            customers=int(distinct_customers),
            denied_requests=int(denied_requests),
            days=[
                DayCount(day=day, customers=int(customers.get(day, 0)), requests=int(n))
                for day, n in sorted(requests.items())
            ],
            decisions=[
                FieldDecisionCount(field=name, decision=decision, count=n)
                for (name, decision), n in sorted(fields.items())
            ],
        )

    async def footprint_customers(
        self, subject: str, window: Window, first: int, after: tuple[str, str] | None
    ) -> list[CustomerSeen]:
        rows = customer_table
        last = func.max(rows.c.ts)
        statement = (
            select(rows.c.customer, func.count(), last)
            .where(rows.c.subject == subject, rows.c.ts >= window.since, rows.c.ts < window.until)
            .group_by(rows.c.customer)
            .order_by(last.desc(), rows.c.customer.desc())
            .limit(first)
        )
        if after is not None:
            moment = literal(dt.datetime.fromisoformat(after[0]), TIMESTAMP(timezone=True))
            statement = statement.having(
                tuple_(last, rows.c.customer) < tuple_(moment, literal(after[1]))
            )
        async with self.sink.engine.connect() as connection:
            found = list(await connection.execute(statement))
        return [
            CustomerSeen(customer=strawberry.ID(customer), accesses=int(n), last_seen=seen)
            for customer, n, seen in found
        ]

    async def overview(self, window: Window, top: int) -> AccessOverview:
        """Whole hours from the hourly tables and the reach bitmaps; the minutes before the
        first whole hour and after the last from their own records."""
        hourly, decisions, log = hourly_table, decision_hourly_table, self.log
        first, last = reach.whole_hours(window.since, window.until)
        whole = (first, last) if first < last else (first, first)  # empty when no hour is
        by_role = (
            select(hourly.c.hour, hourly.c.roles, func.sum(hourly.c.requests))
            .where(hourly.c.hour >= whole[0], hourly.c.hour < whole[1])
            .group_by(hourly.c.hour, hourly.c.roles)
        )
        by_decision = (
            select(
                decisions.c.hour, decisions.c.decision, decisions.c.field, func.sum(decisions.c.n)
            )
            .where(decisions.c.hour >= whole[0], decisions.c.hour < whole[1])
            .group_by(decisions.c.hour, decisions.c.decision, decisions.c.field)
        )
        per_role: Counter[tuple[dt.datetime, str]] = Counter()
        per_hour: Counter[tuple[dt.datetime, str]] = Counter()
        shares: defaultdict[str, Counter[str]] = defaultdict(Counter)
        edges = Rollup()
        at_edges: defaultdict[str, set[str]] = defaultdict(set)
        async with self.sink.engine.connect() as connection:
            for hour, roles, n in await connection.execute(by_role):
                per_role[hour, roles] += int(n)
            for hour, decision, name, n in await connection.execute(by_decision):
                per_hour[hour, decision] += int(n)
                shares[name][decision] += int(n)
            for start, end in reach.leftovers(window.since, window.until):
                found = select(log.c.record).where(
                    log.c.kind == "access", log.c.ts >= start, log.c.ts < end
                )
                for (record,) in await connection.execute(found):
                    edges.add(record)
                    if record.get("subject"):
                        at_edges[record["subject"]].update(record.get("customers") or [])
            reached = await reach.reach_in(
                connection, reach.whole_spans(window.since, window.until)
            )
            numbers = await reach.known_numbers(connection, set().union(*at_edges.values()))
            for subject, customers in at_edges.items():
                edge = reach.bitmap(numbers[customer] for customer in customers)
                reached[subject] = reached.get(subject, 0) | edge
            counts = {subject: bits.bit_count() for subject, bits in reached.items() if bits}
            leaders = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
            requests: Counter[str] = Counter()
            if leaders:
                per_subject = (
                    select(hourly.c.subject, func.sum(hourly.c.requests))
                    .where(
                        hourly.c.subject.in_([subject for subject, _ in leaders]),
                        hourly.c.hour >= whole[0],
                        hourly.c.hour < whole[1],
                    )
                    .group_by(hourly.c.subject)
                )
                for subject, n in await connection.execute(per_subject):
                    requests[subject] += int(n)
        for (hour, subject, roles, _), n in edges.requests.items():
            per_role[hour, roles] += n
            requests[subject] += n
        for (hour, _, name, decision), n in edges.decisions.items():
            per_hour[hour, decision] += n
            shares[name][decision] += n
        return AccessOverview(
            since=window.since,
            until=window.until,
            time_zone=window.time_zone,
            by_role=[HourCount(hour=h, key=k, count=n) for (h, k), n in sorted(per_role.items())],
            by_decision=[
                HourCount(hour=h, key=k, count=n) for (h, k), n in sorted(per_hour.items())
            ],
            top_subjects=[
                SubjectCount(subject=s, customers=n, requests=requests[s]) for s, n in leaders
            ],
            fields=[
                FieldShare(field=name, allow=c["allow"], mask=c["mask"], deny=c["deny"])
                for name, c in sorted(shares.items())
            ],
        )

    async def alerts(self, query: AlertQuery) -> list[tuple[Record, Record | None]]:
        log = self.log
        acks = log.alias("acks")
        alert_id = log.c.chain + ":" + cast(log.c.seq, Text)
        conditions = [log.c.kind == "alert"]
        if query.subject is not None:
            conditions.append(log.c.subject == query.subject)
        if query.since is not None:
            conditions.append(log.c.ts >= query.since)
        if query.until is not None:
            conditions.append(log.c.ts < query.until)
        if query.after is not None:
            ts, chain, seq = query.after
            moment = literal(dt.datetime.fromisoformat(ts), TIMESTAMP(timezone=True))
            conditions.append(
                tuple_(log.c.ts, log.c.chain, log.c.seq)
                < tuple_(moment, literal(chain), literal(seq))
            )
        if query.acknowledged is not None:
            acked = (
                select(acks.c.seq)
                .where(acks.c.kind == "ack", acks.c.record["alert_id"].astext == alert_id)
                .exists()
            )
            conditions.append(acked if query.acknowledged else ~acked)
        statement = (
            select(log.c.record)
            .where(*conditions)
            .order_by(log.c.ts.desc(), log.c.chain.desc(), log.c.seq.desc())
            .limit(query.first)
        )
        async with self.sink.engine.connect() as connection:
            found = [row[0] for row in await connection.execute(statement)]
            ids = [f"{r['chain']}:{r['seq']}" for r in found]
            first_ack: dict[str, Record] = {}
            if ids:
                ack_rows = await connection.execute(
                    select(log.c.record)
                    .where(log.c.kind == "ack", log.c.record["alert_id"].astext.in_(ids))
                    .order_by(log.c.ts, log.c.chain, log.c.seq)
                )
                for (record,) in ack_rows:
                    first_ack.setdefault(str(record.get("alert_id")), record)
        return [(record, first_ack.get(f"{record['chain']}:{record['seq']}")) for record in found]

    async def rights_records(self) -> list[Record]:
        log = self.log
        # The condition the partial index `ix_c360_access_rights` is built on, verbatim.
        statement = select(log.c.record).where(RIGHTS_REQUEST)
        async with self.sink.engine.connect() as connection:
            return [row[0] for row in await connection.execute(statement)]

    async def find(self, chain: str, seq: int) -> Record | None:
        log = self.log
        async with self.sink.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(log.c.record).where(log.c.chain == chain, log.c.seq == seq)
                )
            ).first()
        return None if row is None else row[0]

    async def acknowledgement(self, alert_id: str) -> Record | None:
        log = self.log
        statement = (
            select(log.c.record)
            .where(log.c.kind == "ack", log.c.record["alert_id"].astext == alert_id)
            .order_by(log.c.ts, log.c.chain, log.c.seq)
            .limit(1)
        )
        async with self.sink.engine.connect() as connection:
            row = (await connection.execute(statement)).first()
        return None if row is None else row[0]
