"""The demo world: deterministic, valid where it must be, and messy where real systems are."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from demo.people import DemoWorld, generate, national_id_check_char


@pytest.fixture(scope="module")
def world() -> DemoWorld:
    return generate()


def _clean(email: str) -> str:
    return email.strip().lower()


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone).removeprefix("86")


def _fingerprint(world: DemoWorld) -> str:
    # repr covers every field of every record (and not the lookup caches).
    return hashlib.sha256(repr(world).encode()).hexdigest()


def test_same_seed_gives_identical_world(world: DemoWorld) -> None:
    again = generate(42)
    assert again == world
    assert _fingerprint(again) == _fingerprint(world)


def test_same_seed_is_identical_in_another_process(world: DemoWorld) -> None:
    # Another hash seed changes set and dict-of-str orders: the data must not depend on them.
    script = (
        "import hashlib; from demo.people import generate; "
        "print(hashlib.sha256(repr(generate(42)).encode()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        env=os.environ | {"PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out.strip() == _fingerprint(world)


def test_another_seed_gives_another_world(world: DemoWorld) -> None:
    other = generate(7)
    assert other != world
    assert {p.email for p in other.persons} != {p.email for p in world.persons}


def test_size_follows_customers() -> None:
    small = generate(42, customers=50)
    assert sum(p.is_customer for p in small.persons) == 50
    with pytest.raises(ValueError, match="customers"):
        generate(42, customers=0)


def test_counts_are_about_as_described(world: DemoWorld) -> None:
    customers = [p for p in world.persons if p.is_customer]
    assert len(customers) == 1000
    assert 800 <= sum(p.requester_id is not None for p in customers) <= 900  # ~85%
    assert 760 <= sum(p.contact_id is not None for p in customers) <= 840  # ~80%
    assert 4500 <= len(world.sales.orders) <= 5500
    assert 280 <= len(world.sales.opportunities) <= 400  # ~1 per 3 customers
    assert 18 <= len(world.sales.reps) <= 22
    assert sum(r.is_manager for r in world.sales.reps) == 3
    per_requester = len(world.service.tickets) / len(world.service.requesters)
    assert 2.5 <= per_requester <= 3.5


def test_national_ids_have_valid_check_digits(world: DemoWorld) -> None:
    for p in world.persons:
        nid = p.national_id
        assert re.fullmatch(r"[1-6]\d{5}(19[5-9]\d|200[0-5])\d{4}\d{3}[\dX]", nid), nid
        assert nid[17] == national_id_check_char(nid[:17])
        assert nid[6:14] == p.birth_date.strftime("%Y%m%d")
        assert date(1950, 1, 1) <= p.birth_date <= date(2005, 12, 31)
    assert len({p.national_id for p in world.persons}) == len(world.persons)
    assert any(p.national_id.endswith("X") for p in world.persons)
    assert {c.national_id for c in world.sales.customers} <= {p.national_id for p in world.persons}


def test_check_digit_against_a_known_id() -> None:
    # The worked example of GB 11643-1999.
    assert national_id_check_char("11010519491231002") == "X"


def test_names_are_mixed_chinese_and_latin(world: DemoWorld) -> None:
    names = [p.name for p in world.persons]
    assert sum(bool(re.fullmatch(r"[\u4e00-\u9fff]{2,4}", n)) for n in names) > 300
    assert sum(n.isascii() for n in names) > 150
    assert any(n.startswith(("欧阳", "司马", "诸葛", "上官")) for n in names)
    assert any("'" in n for n in names)  # O'Brien
    assert any(not n.isascii() and " " in n for n in names)  # Müller, García


def test_emails_are_unique_and_a_few_are_not_ascii(world: DemoWorld) -> None:
    emails = [p.email for p in world.persons]
    assert len(set(emails)) == len(emails)
    assert all(e == _clean(e) and e.count("@") == 1 for e in emails)
    non_ascii = [e for e in emails if not e.isascii()]
    assert 3 <= len(non_ascii) <= 5
    assert any(not e.split("@")[1].isascii() for e in non_ascii)  # an IDN domain


def test_phones_are_mainland_mobiles(world: DemoWorld) -> None:
    phones = [p.phone for p in world.persons]
    assert all(re.fullmatch(r"1[3-9]\d{9}", ph) for ph in phones)
    assert len(set(phones)) == len(phones)


def test_sales_emails_are_messy(world: DemoWorld) -> None:
    emails = [c.email for c in world.sales.customers]
    spaced = [e for e in emails if e != e.strip()]
    cased = [e for e in emails if e.strip() != e.strip().lower()]
    messy = [e for e in emails if e != _clean(e)]
    assert spaced
    assert cased
    assert 0.22 <= len(messy) / len(emails) <= 0.38
    for c in world.sales.customers:
        person = world.person_by_email(c.email)
        assert person is not None
        assert c.id in person.sales_ids


def test_each_system_formats_phones_its_own_way(world: DemoWorld) -> None:
    sales = [c.phone for c in world.sales.customers]
    spaced = [ph for ph in sales if re.fullmatch(r"\+86 1\d{2} \d{4} \d{4}", ph)]
    dashed = [ph for ph in sales if re.fullmatch(r"1\d{2}-\d{4}-\d{4}", ph)]
    assert spaced
    assert dashed
    assert len(spaced) + len(dashed) == len(sales)
    assert all(re.fullmatch(r"1[3-9]\d{9}", r.phone) for r in world.service.requesters)
    marketing = [c.phone for c in world.marketing.contacts]
    assert all(ph and re.fullmatch(r"\+861[3-9]\d{9}", ph) for ph in marketing)


def test_sales_ids_start_at_10001_in_no_person_order(world: DemoWorld) -> None:
    ids = [c.id for c in world.sales.customers]
    assert ids == list(range(10001, 10001 + len(ids)))
    first_ids = [p.sales_ids[0] for p in world.persons if p.is_customer]
    assert first_ids != sorted(first_ids)


def test_about_one_percent_of_persons_are_in_sales_twice(world: DemoWorld) -> None:
    by_id = {c.id: c for c in world.sales.customers}
    twice = [p for p in world.persons if len(p.sales_ids) == 2]
    assert 5 <= len(twice) <= 15
    assert len(world.sales.customers) == 1000 + len(twice)
    for p in twice:
        original, duplicate = (by_id[i] for i in p.sales_ids)
        assert original.email.strip() != duplicate.email.strip()
        assert _clean(original.email) == _clean(duplicate.email) == p.email
        assert original.phone[0] != duplicate.phone[0]  # "+86 …" against "138-…"
        assert _digits(original.phone) == _digits(duplicate.phone) == p.phone
        assert original.national_id == duplicate.national_id
        assert duplicate.created_at > original.created_at


def test_lifetime_value_is_the_sum_of_order_totals(world: DemoWorld) -> None:
    totals: Counter[int] = Counter()
    sums: dict[int, Decimal] = {}
    for o in world.sales.orders:
        sums[o.customer_id] = sums.get(o.customer_id, Decimal(0)) + o.total
        totals[o.customer_id] += 1
    for c in world.sales.customers:
        assert c.lifetime_value == sums.get(c.id, Decimal(0))
        assert c.lifetime_value.as_tuple().exponent == -2
    assert any(c.lifetime_value == 0 for c in world.sales.customers)


def test_orders_and_opportunities_look_like_a_crm(world: DemoWorld) -> None:
    customer_ids = {c.id for c in world.sales.customers}
    rep_ids = {r.id for r in world.sales.reps}
    assert all(re.fullmatch(r"rep-\d{2}", r) for r in rep_ids)
    assert {c.owner_rep for c in world.sales.customers} <= rep_ids
    assert len({o.id for o in world.sales.orders}) == len(world.sales.orders)
    statuses = Counter(o.status for o in world.sales.orders)
    assert set(statuses) == {"paid", "shipped", "delivered", "refunded", "cancelled"}
    for o in world.sales.orders:
        assert re.fullmatch(r"SO-\d{7}", o.id)
        assert o.customer_id in customer_ids
        assert o.placed_at.tzinfo is UTC
        assert datetime(2022, 1, 1, tzinfo=UTC) <= o.placed_at < datetime(2027, 1, 1, tzinfo=UTC)
        assert o.total > 0
        assert o.total.as_tuple().exponent == -2
    stages = {o.stage for o in world.sales.opportunities}
    assert stages == {"prospecting", "proposal", "negotiation", "won", "lost"}
    for opp in world.sales.opportunities:
        assert re.fullmatch(r"OP-\d{6}", opp.id)
        assert opp.customer_id in customer_ids
        assert opp.owner_rep in rep_ids


def test_service_knows_most_persons_in_its_own_format(world: DemoWorld) -> None:
    requesters = world.service.requesters
    assert all(re.fullmatch(r"req_[0-9a-f]{10}", r.id) for r in requesters)
    assert [r.id for r in requesters] == sorted(r.id for r in requesters)
    odd_case = [r for r in requesters if r.email != r.email.lower()]
    assert 0.05 <= len(odd_case) / len(requesters) <= 0.15
    assert all(r.email == r.email.strip() for r in requesters)
    walk_ins = [p for p in world.persons if not p.is_customer]
    assert 15 <= len(walk_ins) <= 25
    assert all(p.requester_id for p in walk_ins)
    sales_emails = {_clean(c.email) for c in world.sales.customers}
    assert all(p.email not in sales_emails for p in walk_ins)


def test_tickets_follow_the_helpdesk_rules(world: DemoWorld) -> None:
    requester_ids = {r.id for r in world.service.requesters}
    per_requester = Counter(t.requester_id for t in world.service.tickets)
    assert max(per_requester.values()) <= 6
    assert len(per_requester) < len(requester_ids)  # some have none
    statuses = Counter(t.status for t in world.service.tickets)
    assert set(statuses) == {"open", "pending", "closed"}
    csats = [t.csat for t in world.service.tickets if t.status == "closed"]
    assert 0.6 <= sum(c is not None for c in csats) / len(csats) < 1
    iso = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+08:00"
    for t in world.service.tickets:
        assert re.fullmatch(r"T-\d{6}", t.id)
        assert t.requester_id in requester_ids
        assert re.fullmatch(iso, t.created_at)
        if t.status == "closed":
            assert t.closed_at
            assert re.fullmatch(iso, t.closed_at)
            assert datetime.fromisoformat(t.closed_at) >= datetime.fromisoformat(t.created_at)
            assert t.csat is None or 1 <= t.csat <= 5
        else:
            assert t.closed_at is None
            assert t.csat is None


def test_marketing_is_partial_and_conflicting(world: DemoWorld) -> None:
    contacts = world.marketing.contacts
    assert all(re.fullmatch(r"MC-\d{6}", c.id) for c in contacts)
    assert all(c.email is None or c.email == _clean(c.email) for c in contacts)
    phone_only = [c for c in contacts if c.email is None]
    assert 1 <= len(phone_only) <= 30
    assert {c.segment for c in contacts} == {"vip", "loyal", "new", "dormant", "churn-risk"}

    sales_phone = {_clean(c.email): _digits(c.phone) for c in world.sales.customers}
    conflicts = [
        c
        for c in contacts
        if c.email in sales_phone and _digits(c.phone or "") != sales_phone[c.email]
    ]
    assert 3 <= len(conflicts) <= 5
    flagged = {p.contact_id for p in world.persons if p.marketing_conflict}
    assert flagged == {c.id for c in conflicts}


def test_consents_per_channel(world: DemoWorld) -> None:
    email_consents = []
    for c in world.marketing.contacts:
        channels = [k.channel for k in c.consents]
        assert channels == sorted(set(channels), key=["email", "sms", "phone"].index)
        assert c.email is not None or "email" not in channels
        for k in c.consents:
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", k.updated_at)
        email_consents += [k for k in c.consents if k.channel == "email"]
    full = sum(len(c.consents) == 3 for c in world.marketing.contacts)
    assert 0.7 <= full / len(world.marketing.contacts) < 1
    withdrawn = sum(not k.granted for k in email_consents) / len(email_consents)
    assert 0.18 <= withdrawn <= 0.32


def test_address_city_is_recoverable(world: DemoWorld) -> None:
    chinese = [p for p in world.persons if "市" in p.address]
    latin = [p for p in world.persons if "市" not in p.address]
    assert chinese
    assert latin
    for p in chinese:
        assert p.address[: p.address.index("市") + 1] == p.city
    for p in latin:
        last = p.address.rsplit(", ", 1)[1]
        assert re.fullmatch(r".+ \d{6}", last), p.address
        assert last.rsplit(" ", 1)[0] == p.city


def test_person_crosswalk_points_at_their_records(world: DemoWorld) -> None:
    requesters = {r.id: r for r in world.service.requesters}
    contacts = {c.id: c for c in world.marketing.contacts}
    customers = {c.id: c for c in world.sales.customers}
    for p in world.persons:
        for sid in p.sales_ids:
            assert customers[sid].full_name == p.name
            assert world.person_by_sales_id(sid) is p
        if p.requester_id:
            r = requesters[p.requester_id]
            assert (_clean(r.email), r.phone) == (p.email, p.phone)
            assert world.person_by_requester_id(r.id) is p
        if p.contact_id:
            c = contacts[p.contact_id]
            assert c.email in (p.email, None)
            assert (_digits(c.phone or "") == p.phone) != p.marketing_conflict
            assert world.person_by_contact_id(c.id) is p
    assert len(requesters) == sum(p.requester_id is not None for p in world.persons)
    assert len(contacts) == sum(p.contact_id is not None for p in world.persons)
