"""The records of the two extra department systems, drawn from the demo world.

Pure and deterministic: each system draws from its own `random.Random` seeded with the
world's seed, so the demo world itself is untouched. Every record belongs to a person
of the world; each system writes emails and phones its own way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from demo.people import DemoWorld, Person

__all__ = [
    "LoyaltyMember",
    "Redemption",
    "StoreShopper",
    "StoreVisit",
    "loyalty_members",
    "store_shoppers",
    "tier_of",
]

_FROM = datetime(2021, 1, 1, tzinfo=UTC)
_UNTIL = datetime(2026, 11, 1, tzinfo=UTC)
_CST = timezone(timedelta(hours=8))

_REWARDS = (
    "Coffee voucher",
    "免运费券",
    "10% off coupon",
    "生日礼包",
    "Cinema ticket",
    "会员专享礼品",
    "Free gift wrap",
)
_STORES = (
    "Beijing Sanlitun",
    "上海南京东路店",
    "Guangzhou Tianhe",
    "深圳华强北店",
    "Hangzhou Xihu",
    "成都春熙路店",
    "Nanjing Xinjiekou",
)


@dataclass(frozen=True, slots=True)
class Redemption:
    id: str  # "RD-" + 7 digits
    reward: str
    points: int
    redeemed_at: str  # ISO 8601 UTC, "Z"


@dataclass(frozen=True, slots=True)
class LoyaltyMember:
    id: str  # "LM-000123"
    person: int  # Person.index: the truth, for tests; not served
    email: str | None
    phone: str  # "+86 138-0013-8000"
    points: int
    tier: str  # "G" | "S" | "B"
    joined_at: str  # ISO date
    redemptions: tuple[Redemption, ...]


@dataclass(frozen=True, slots=True)
class StoreVisit:
    visit_no: str  # "V-" + 8 digits, increasing with visited_at
    shopper_no: str
    store: str
    amount_cents: int
    visited_at: str  # ISO 8601 with +08:00


@dataclass(frozen=True, slots=True)
class StoreShopper:
    shopper_no: str  # "S-00042"
    person: int  # Person.index: the truth, for tests; not served
    mail: str | None
    mobile: str  # "0086-13800138000"
    visits: tuple[StoreVisit, ...]


def tier_of(points: int) -> str:
    """The loyalty system's own tier codes: Gold, Silver, Bronze."""
    return "G" if points >= 20_000 else "S" if points >= 5_000 else "B"


def _time(rng: random.Random, start: datetime, end: datetime) -> datetime:
    return start + timedelta(seconds=rng.randrange(int((end - start).total_seconds())))


def _loyalty_phone(digits: str) -> str:
    return f"+86 {digits[:3]}-{digits[3:7]}-{digits[7:]}"


def loyalty_members(world: DemoWorld) -> tuple[LoyaltyMember, ...]:
    """About 40% of the world's people are members, each with 0-4 redemptions; ordered by id."""
    rng = random.Random(f"loyalty:{world.seed}")
    numbers = rng.sample(range(1, 1_000_000), len(world.persons))
    redemption_numbers = iter(rng.sample(range(1_000_000, 10_000_000), 5 * len(world.persons)))
    members: list[LoyaltyMember] = []
    for person, number in zip(world.persons, numbers, strict=True):
        if rng.random() >= 0.40:
            continue
        joined = _time(rng, _FROM, _UNTIL - timedelta(days=30))
        redemptions = []
        for _ in range(rng.randint(0, 4)):
            redeemed = _time(rng, joined, _UNTIL)
            redemptions.append(
                Redemption(
                    id=f"RD-{next(redemption_numbers)}",
                    reward=rng.choice(_REWARDS),
                    points=rng.choice((500, 1_000, 2_000, 5_000)),
                    redeemed_at=redeemed.strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
            )
        redemptions.sort(key=lambda r: r.redeemed_at)
        points = rng.choice(
            (rng.randint(0, 4_999), rng.randint(5_000, 19_999), rng.randint(0, 60_000))
        )
        email = None if rng.random() < 0.08 else _spelled(rng, person)
        members.append(
            LoyaltyMember(
                id=f"LM-{number:06d}",
                person=person.index,
                email=email,
                phone=_loyalty_phone(person.phone),
                points=points,
                tier=tier_of(points),
                joined_at=joined.date().isoformat(),
                redemptions=tuple(redemptions),
            )
        )
    return tuple(sorted(members, key=lambda m: m.id))


def _spelled(rng: random.Random, person: Person) -> str:
    """As the member typed it at the till: sometimes upper case, sometimes a trailing space."""
    r = rng.random()
    if r < 0.10:
        return person.email.upper()
    if r < 0.15:
        return person.email + " "
    return person.email


def store_shoppers(world: DemoWorld) -> tuple[StoreShopper, ...]:
    """About 30% of the world's people shop in the stores, with 0-6 visits; ordered by number."""
    rng = random.Random(f"stores:{world.seed}")
    numbers = rng.sample(range(1, 100_000), len(world.persons))
    picked: list[tuple[Person, int, int]] = []
    for person, number in zip(world.persons, numbers, strict=True):
        if rng.random() < 0.30:
            picked.append((person, number, rng.randint(0, 6)))
    visits: list[tuple[datetime, str, str, int]] = []
    for _person, number, count in picked:
        for _ in range(count):
            visits.append(
                (
                    _time(rng, _FROM, _UNTIL),
                    f"S-{number:05d}",
                    rng.choice(_STORES),
                    rng.randint(990, 300_000),
                )
            )
    visits.sort()
    by_shopper: dict[str, list[StoreVisit]] = {}
    for n, (at, shopper_no, store, cents) in enumerate(visits):
        by_shopper.setdefault(shopper_no, []).append(
            StoreVisit(
                visit_no=f"V-{20_000_000 + 7 * n:08d}",
                shopper_no=shopper_no,
                store=store,
                amount_cents=cents,
                visited_at=at.astimezone(_CST).isoformat(),
            )
        )
    shoppers = [
        StoreShopper(
            shopper_no=f"S-{number:05d}",
            person=person.index,
            mail=None if rng.random() < 0.05 else _spelled(rng, person),
            mobile=f"0086-{person.phone}",
            visits=tuple(by_shopper.get(f"S-{number:05d}", ())),
        )
        for person, number, _ in picked
    ]
    return tuple(sorted(shoppers, key=lambda s: s.shopper_no))
