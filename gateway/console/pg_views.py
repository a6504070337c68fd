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
from sqlalchemy import Text, and_, cast, distinct, func, literal, select, tuple_, union
from sqlalchemy.dialects.postgresql import TIMESTAMP

from gateway.audit.sinks import (
    PostgresSink,
    customer_table,
    decision_hourly_table,
    hourly_table,
    subject_customer_table,
    subject_day_table,
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


def _pairs_in(since: dt.datetime, until: dt.datetime) -> Any:
    """The distinct (subject, customer) pairs of a past range: the per-day read model for
    its whole UTC days, customer rows only for the partial day at either end."""
    rows, days = customer_table, subject_day_table

    def read(start: dt.datetime, end: dt.datetime) -> Any:
        return (
            select(rows.c.subject, rows.c.customer)
            .where(rows.c.ts >= start, rows.c.ts < end)
            .where(rows.c.subject.is_not(None))
        )

    since_utc, until_utc = since.astimezone(dt.UTC), until.astimezone(dt.UTC)
    midnight = dt.time(0, tzinfo=dt.UTC)
    first = since_utc.date() + dt.timedelta(days=0 if since_utc.time() == dt.time(0) else 1)
    last = until_utc.date()  # whole days are [first, last)
    if first >= last:
        return read(since, until).distinct().subquery()
    whole_start = dt.datetime.combine(first, midnight)
    whole_end = dt.datetime.combine(last, midnight)
    whole = select(days.c.subject, days.c.customer).where(days.c.day >= first, days.c.day < last)
    return union(whole, read(since, whole_start), read(whole_end, until)).subquery()


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
        decisions = decision_hourly_table
        per_decision = (
            select(decisions.c.field, decisions.c.decision, func.sum(decisions.c.n))
            .where(
                decisions.c.subject == subject,
                decisions.c.hour >= window.since,
                decisions.c.hour < window.until,
            )
            .group_by(decisions.c.field, decisions.c.decision)
            .order_by(decisions.c.field, decisions.c.decision)
        )
        async with self.sink.engine.connect() as connection:
            customers = {day: n for day, n in await connection.execute(per_day)}
            distinct_customers = customers.pop(None, 0)  # the grand total's row
            requests = {day: n for day, n in await connection.execute(requests_per_day)}
            denied_requests = (await connection.execute(denied)).scalar_one()
            fields = list(await connection.execute(per_decision))
        return FootprintSummary(
            requests=sum(requests.values()),
            customers=int(distinct_customers),
            denied_requests=int(denied_requests),
            days=[
                DayCount(day=day, customers=int(customers.get(day, 0)), requests=int(n))
                for day, n in sorted(requests.items())
            ],
            decisions=[
                FieldDecisionCount(field=name, decision=decision, count=int(n))
                for name, decision, n in fields
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
        hourly, decisions = hourly_table, decision_hourly_table
        by_role = (
            select(hourly.c.hour, hourly.c.roles, func.sum(hourly.c.requests))
            .where(hourly.c.hour >= window.since, hourly.c.hour < window.until)
            .group_by(hourly.c.hour, hourly.c.roles)
        )
        by_decision = (
            select(
                decisions.c.hour, decisions.c.decision, decisions.c.field, func.sum(decisions.c.n)
            )
            .where(decisions.c.hour >= window.since, decisions.c.hour < window.until)
            .group_by(decisions.c.hour, decisions.c.decision, decisions.c.field)
        )
        if window.until >= dt.datetime.now(dt.UTC):
            # Nothing is newer than the range's end: a customer was read in the range
            # exactly when the subject's last read of them is in it.
            last = subject_customer_table
            ranked = (
                select(last.c.subject, func.count())
                .where(last.c.last_ts >= window.since)
                .group_by(last.c.subject)
                .order_by(func.count().desc(), last.c.subject)
                .limit(top)
            )
        else:
            pairs = _pairs_in(window.since, window.until)
            ranked = (
                select(pairs.c.subject, func.count())
                .group_by(pairs.c.subject)
                .order_by(func.count().desc(), pairs.c.subject)
                .limit(top)
            )
        async with self.sink.engine.connect() as connection:
            role_counts = list(await connection.execute(by_role))
            decision_counts = list(await connection.execute(by_decision))
            leaders = list(await connection.execute(ranked))
            names = [subject for subject, _ in leaders]
            requests: dict[str, int] = {}
            if names:
                per_subject = (
                    select(hourly.c.subject, func.sum(hourly.c.requests))
                    .where(
                        hourly.c.subject.in_(names),
                        hourly.c.hour >= window.since,
                        hourly.c.hour < window.until,
                    )
                    .group_by(hourly.c.subject)
                )
                requests = {s: int(n) for s, n in await connection.execute(per_subject)}
        per_hour: Counter[tuple[dt.datetime, str]] = Counter()
        shares: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for hour, decision, name, n in decision_counts:
            per_hour[hour, decision] += int(n)
            shares[name][decision] += int(n)
        return AccessOverview(
            since=window.since,
            until=window.until,
            time_zone=window.time_zone,
            by_role=[HourCount(hour=h, key=k, count=int(n)) for h, k, n in sorted(role_counts)],
            by_decision=[
                HourCount(hour=h, key=k, count=n) for (h, k), n in sorted(per_hour.items())
            ],
            top_subjects=[
                SubjectCount(subject=s, customers=int(n), requests=requests.get(s, 0))
                for s, n in leaders
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
