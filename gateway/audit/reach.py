"""Which customers each subject reached, per UTC hour and per UTC day, as bitmaps: the
read model behind "distinct customers per subject" over any range.

Every customer the log mentions gets a small number (`c360_access_customer_number`); a
subject's reach in an hour or a day is a bitmap of those numbers (bit n set: customer n
was read), stored zlib-compressed. A range's distinct customers per subject is then the
OR of a few bitmaps (its whole days, the whole hours at either end) and a popcount:
exact, and a week costs a few hundred small rows where a scan of the reads would dedupe a
million. The minutes before the range's first whole hour and after its last are read
from the customer rows by the caller (`gateway.console.pg_views`).

Written in the log's own transaction, as the other read models are. OR is idempotent, so
a replayed record changes nothing; concurrent writers lock the rows they change in one
order.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Identity,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP, insert
from sqlalchemy.ext.asyncio import AsyncConnection

Record = Mapping[str, Any]
HOUR, DAY = 1, 24  # a bitmap's span, in hours
Span = tuple[int, dt.datetime, dt.datetime]  # (span, first bitmap start, end)

metadata = MetaData()
customer_number_table = Table(
    "c360_access_customer_number",
    metadata,
    Column("customer", Text, primary_key=True),
    Column("number", Integer, Identity(start=0, minvalue=0), nullable=False, unique=True),
)
reach_table = Table(
    "c360_access_reach",
    metadata,
    Column("hours", SmallInteger, primary_key=True),  # HOUR or DAY
    Column("start", TIMESTAMP(timezone=True), primary_key=True),  # UTC, on the span
    Column("subject", Text, primary_key=True),
    Column("bits", LargeBinary, nullable=False),  # zlib of the little-endian bitmap
)


def encode(bits: int) -> bytes:
    return zlib.compress(bits.to_bytes((bits.bit_length() + 7) // 8, "little"), 1)


def decode(data: bytes) -> int:
    return int.from_bytes(zlib.decompress(data), "little")


def bitmap(numbers: Iterable[int]) -> int:
    """The bitmap with exactly these bits set, built in one pass over a byte array."""
    chosen = sorted(numbers)
    if not chosen:
        return 0
    raw = bytearray(chosen[-1] // 8 + 1)
    for n in chosen:
        raw[n >> 3] |= 1 << (n & 7)
    return int.from_bytes(raw, "little")


def _hour(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


async def known_numbers(connection: AsyncConnection, customers: Iterable[str]) -> dict[str, int]:
    """The numbers these customers have (a customer the log never mentioned has none)."""
    table = customer_number_table
    wanted = table.c.customer == any_(bindparam("names", type_=ARRAY(Text)))
    lookup = select(table.c.customer, table.c.number).where(wanted)
    found = await connection.execute(lookup, {"names": sorted(set(customers))})
    return {customer: int(number) for customer, number in found}


async def numbers_of(connection: AsyncConnection, customers: Iterable[str]) -> dict[str, int]:
    """Each customer's number, giving the new ones theirs."""
    names = set(customers)
    known = await known_numbers(connection, names)
    missing = sorted(names - known.keys())
    if missing:
        await connection.execute(
            insert(customer_number_table).on_conflict_do_nothing(index_elements=["customer"]),
            [{"customer": name} for name in missing],
        )
        known.update(await known_numbers(connection, missing))
    return known


async def write_reach(connection: AsyncConnection, records: Sequence[Record]) -> None:
    """Set the bits of the customers these records read in their subjects' hour and day
    bitmaps, inside the caller's transaction."""
    reached: defaultdict[tuple[int, dt.datetime, str], set[str]] = defaultdict(set)
    for record in records:
        subject, customers = record.get("subject"), record.get("customers")
        if not subject or not customers:
            continue
        hour = _hour(dt.datetime.fromisoformat(str(record["ts"])))
        reached[HOUR, hour, subject].update(customers)
        reached[DAY, hour.replace(hour=0), subject].update(customers)
    if not reached:
        return
    numbers = await numbers_of(connection, set().union(*reached.values()))
    keys = sorted(reached)  # one lock order for all writers
    table = reach_table
    await connection.execute(
        insert(table).on_conflict_do_nothing(index_elements=["hours", "start", "subject"]),
        [{"hours": h, "start": s, "subject": subject, "bits": b""} for h, s, subject in keys],
    )
    changed = []
    for at in range(0, len(keys), 1000):  # bound the statement's parameters
        current = (
            select(table.c.hours, table.c.start, table.c.subject, table.c.bits)
            .where(tuple_(table.c.hours, table.c.start, table.c.subject).in_(keys[at : at + 1000]))
            .order_by(table.c.hours, table.c.start, table.c.subject)
            .with_for_update()
        )
        for hours, start, subject, data in await connection.execute(current):
            before = decode(data) if data else 0
            after = before | bitmap(numbers[c] for c in reached[hours, start, subject])
            if after != before:
                key = {"k_hours": hours, "k_start": start, "k_subject": subject}
                changed.append({**key, "bits": encode(after)})
    if changed:
        same = and_(
            table.c.hours == bindparam("k_hours"),
            table.c.start == bindparam("k_start"),
            table.c.subject == bindparam("k_subject"),
        )
        await connection.execute(update(table).where(same), changed)


def whole_hours(since: dt.datetime, until: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The whole UTC hours inside [since, until), as [first, last): none when first >= last."""
    first = _hour(since)
    if first < since:
        first += dt.timedelta(hours=1)
    return first, _hour(until)


def leftovers(since: dt.datetime, until: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """What is left of [since, until) around its whole hours: less than an hour at either
    end, which only the records themselves can answer."""
    first, last = whole_hours(since, until)
    if first >= last:
        return [(since, until)]
    return [(start, end) for start, end in ((since, first), (last, until)) if start < end]


def whole_spans(since: dt.datetime, until: dt.datetime) -> list[Span]:
    """The bitmaps covering the whole hours of [since, until), coarsest first: (span,
    first start, end) for its whole UTC days, then for the whole hours either side."""
    first, last = whole_hours(since, until)
    if first >= last:
        return []
    first_day = first.replace(hour=0)
    if first_day < first:
        first_day += dt.timedelta(days=1)
    last_day = last.replace(hour=0)
    if first_day >= last_day:
        return [(HOUR, first, last)]
    spans = [(DAY, first_day, last_day), (HOUR, first, first_day), (HOUR, last_day, last)]
    return [(hours, start, end) for hours, start, end in spans if start < end]


async def reach_in(connection: AsyncConnection, spans: Sequence[Span]) -> dict[str, int]:
    """Each subject's bitmap over these spans of whole hours or days."""
    table = reach_table
    if not spans:
        return {}
    chosen = or_(
        *(
            and_(table.c.hours == hours, table.c.start >= start, table.c.start < end)
            for hours, start, end in spans
        )
    )
    reached: defaultdict[str, int] = defaultdict(int)
    for subject, data in await connection.execute(
        select(table.c.subject, table.c.bits).where(chosen)
    ):
        if data:
            reached[subject] |= decode(data)
    return dict(reached)
