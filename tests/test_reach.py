"""The reach read model's pure parts: how a range is cut into bitmaps and leftovers, and
the bitmaps themselves. (Its answers against the log: tests/test_console_api.py.)"""

from __future__ import annotations

import datetime as dt
import random

from gateway.audit.reach import DAY, HOUR, bitmap, decode, encode, leftovers, whole_spans

MINUTE = dt.timedelta(minutes=1)


def minutes(start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    count = int((end - start) / MINUTE)
    return [start + n * MINUTE for n in range(count)]


def covered(since: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    """Every minute the cut of [since, until) covers, once per piece that covers it."""
    found: list[dt.datetime] = []
    for hours, first, end in whole_spans(since, until):
        assert hours in (HOUR, DAY)
        step = dt.timedelta(hours=hours)
        start = first
        while start < end:
            assert start.astimezone(dt.UTC).minute == 0
            assert hours == HOUR or start.astimezone(dt.UTC).hour == 0
            found += minutes(start, start + step)
            start += step
    for start, end in leftovers(since, until):
        assert end - start < dt.timedelta(hours=1) or not whole_spans(since, until)
        found += minutes(start, end)
    return found


def test_a_range_is_cut_into_whole_days_whole_hours_and_minutes_each_covered_once() -> None:
    rng = random.Random(7)
    base = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    shanghai = dt.timezone(dt.timedelta(hours=8))
    ranges = [
        (base, base + dt.timedelta(days=3)),  # whole days only
        (base + 17 * MINUTE, base + 43 * MINUTE),  # inside one hour
        (base + dt.timedelta(hours=23, minutes=5), base + dt.timedelta(hours=25)),
    ]
    for _ in range(300):
        since = base + rng.randrange(4 * 24 * 60) * MINUTE
        ranges.append((since, since + rng.randrange(1, 5 * 24 * 60) * MINUTE))
    for since, until in ranges:
        for zone in (dt.UTC, shanghai):  # the same instants, written in another offset
            start, end = since.astimezone(zone), until.astimezone(zone)
            assert sorted(covered(start, end)) == minutes(since, until), (since, until)


def test_a_long_range_reads_few_bitmaps() -> None:
    since = dt.datetime(2026, 11, 1, 13, 20, tzinfo=dt.UTC)
    spans = whole_spans(since, since + dt.timedelta(days=7))
    days = [(start, end) for hours, start, end in spans if hours == DAY]
    assert days == [
        (dt.datetime(2026, 11, 2, tzinfo=dt.UTC), dt.datetime(2026, 11, 8, tzinfo=dt.UTC))
    ]
    assert sorted(
        (end - start) / dt.timedelta(hours=1) for hours, start, end in spans if hours == HOUR
    ) == [10, 13]


def test_bitmaps_hold_exactly_their_numbers() -> None:
    assert decode(encode(0)) == 0 == bitmap([])
    chosen = {0, 7, 8, 63, 64, 19_999}
    bits = bitmap(chosen)
    assert {n for n in range(20_000) if bits >> n & 1} == chosen
    assert decode(encode(bits)) == bits
    assert (bits | bitmap({7, 20_000})).bit_count() == len(chosen) + 1
