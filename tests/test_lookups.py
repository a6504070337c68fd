"""Declared lookups (by email, by phone), the enumeration oracle they must not be, and a
system whose identity sync never completed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from demo.people import DemoWorld
from demo.systems import DemoSystems
from harness import RunningGateway, running_gateway

BY_EMAIL = "query($k: String!) { customerByEmail(email: $k) { id name } }"
BY_PHONE = "query($k: String!) { customerByPhone(phone: $k) { id name } }"


def _person(world: DemoWorld) -> Any:
    return next(p for p in world.persons if p.sales_ids and p.requester_id)


async def test_lookups_by_email_and_any_spelling_of_the_phone(
    gateway: RunningGateway, demo_world: DemoWorld
) -> None:
    person = _person(demo_world)
    by_email = await gateway.query(BY_EMAIL, {"k": "  " + person.email.upper() + " "})
    assert not by_email.errors and by_email.data["customerByEmail"]["id"].startswith("cus_")
    digits = "".join(ch for ch in person.phone if ch.isdigit())[-11:]
    spelled = f"+86 {digits[:3]}-{digits[3:7]}-{digits[7:]}"
    by_phone = await gateway.query(BY_PHONE, {"k": spelled})
    assert not by_phone.errors, by_phone.errors
    assert by_phone.data["customerByPhone"]["id"] == by_email.data["customerByEmail"]["id"]
    unknown = await gateway.query(BY_PHONE, {"k": "+86 199 0000 0000"})
    assert not unknown.errors and unknown.data["customerByPhone"] is None


@pytest.mark.parametrize(
    ("role", "purpose"),
    [("security", "audit"), ("marketing", "sales"), ("marketing", "marketing")],
)
async def test_a_lookup_by_a_key_the_caller_may_not_read_says_nothing_of_existence(
    gateway: RunningGateway, demo_world: DemoWorld, role: str, purpose: str
) -> None:
    """Security sees emails masked, marketing only with consent: for them a real email
    and a made-up one are refused alike, and no system is asked."""
    person = _person(demo_world)
    headers = gateway.as_role(role, purpose)
    before = gateway.source_calls("sales")
    answers = []
    for email in (person.email, "nobody.at.all@example.invalid"):
        reply = await gateway.query(BY_EMAIL, {"k": email}, headers=headers)
        answers.append(
            (reply.status, reply.data, [(e["message"], e["extensions"]) for e in reply.errors])
        )
    assert answers[0] == answers[1], answers
    status, data, errors = answers[0]
    assert status == 200
    assert data == {"customerByEmail": None}
    assert [extensions["code"] for _, extensions in errors] == ["FORBIDDEN"]
    assert errors[0][1]["policy"] == "customer.email"
    assert gateway.source_calls("sales") == before


async def test_a_system_never_synced_is_unavailable_not_silently_empty(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    """The helpdesk is unreachable when the gateway syncs (as `c360 demo --down service`):
    its fields are SOURCE_UNAVAILABLE errors naming it, the other systems' are served."""
    overrides = {
        "sources.service.base_url": "http://127.0.0.1:9",
        "sources.service.timeout_ms": 300,
    }
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        reply = await gateway.query(
            "{ customers(first: 3) { edges { node { name tickets { id } satisfaction } } } }"
        )
    nodes = [edge["node"] for edge in reply.data["customers"]["edges"]]
    assert nodes and all(n["tickets"] is None and n["satisfaction"] is None for n in nodes)
    assert any(n["name"] for n in nodes)
    unavailable = [e for e in reply.errors if e["extensions"]["code"] == "SOURCE_UNAVAILABLE"]
    assert [e["extensions"]["source"] for e in unavailable] == ["service"]
