"""Writes through the graph, each to the system that owns it: the sales CRM on the real
PostgreSQL, the marketing tool's GraphQL API. Edit policies with step-up sign-in, input
checks, versions, idempotency, the cache and crosswalk after a write, and the record."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from demo.people import DemoWorld
from demo.systems import DemoSystems
from gateway.audit.sinks import JsonlSink
from gateway.auth import mint_token
from harness import RunningGateway, SourceAdmin, own_database, running_gateway

UPDATE = """mutation($id: ID!, $input: CustomerInput!, $v: String) {
  updateCustomer(id: $id, input: $input, ifVersion: $v) { id email phone address version }
}"""
READ = "query($id: ID!) { customer(id: $id) { email phone address version } }"
FOLLOW_UP = """mutation($c: ID!, $note: String!) {
  addFollowUp(customer: $c, note: $note) { id note createdBy }
}"""
CONSENT = """mutation($c: ID!, $channel: String!, $granted: Boolean!) {
  setConsent(customer: $c, channel: $channel, granted: $granted) { channel granted }
}"""


@dataclass
class Sales:
    gateway: RunningGateway
    world: DemoWorld
    dsn: str
    systems: DemoSystems

    def headers(
        self, role: str, subject: str = "someone", mfa: bool = True, purpose: str | None = None
    ) -> dict[str, str]:
        purpose = purpose or {"sales_manager": "sales"}.get(role, role)
        token = mint_token(
            self.gateway.gateway.config.auth,
            subject,
            [role],
            [purpose],
            amr=["pwd", "mfa"] if mfa else ["pwd"],
        )
        return {"authorization": f"Bearer {token}"}

    def cuid(self, sales_id: int) -> str:
        return self.gateway.gateway.identity.by_record[("sales", str(sales_id))]

    async def row(self, sales_id: int) -> dict[str, Any]:
        engine = create_async_engine(self.dsn)
        try:
            async with engine.connect() as connection:
                found = await connection.execute(
                    text("SELECT * FROM crm_customers WHERE id = :id"), {"id": sales_id}
                )
                return dict(found.mappings().one())
        finally:
            await engine.dispose()

    async def scalar(self, sql: str, **params: Any) -> Any:
        engine = create_async_engine(self.dsn)
        try:
            async with engine.connect() as connection:
                return (await connection.execute(text(sql), params)).scalar_one()
        finally:
            await engine.dispose()


@pytest.fixture(scope="module")
async def sales(
    postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Sales]:
    """The demo systems with the sales CRM on a database of its own in the real PostgreSQL,
    and a gateway with its record cache on (a write must reach past it)."""
    async with own_database(postgres_dsn, "c360_writes") as dsn:
        work = tmp_path_factory.mktemp("writes")
        async with DemoSystems(work, customers=60, sales_dsn=dsn) as systems:
            overrides = {"cache.enabled": True, "cache.url": "memory://"}
            async with running_gateway(systems, work / "gateway", overrides) as gateway:
                yield Sales(gateway, systems.world, dsn, systems)


def _owned(world: DemoWorld) -> tuple[int, str]:
    customer = next(c for c in world.sales.customers if c.owner_rep)
    return customer.id, customer.owner_rep


async def test_a_manager_with_mfa_corrects_a_phone_and_the_next_read_sees_it(
    sales: Sales,
) -> None:
    gateway = sales.gateway
    sales_id, _ = _owned(sales.world)
    cuid = sales.cuid(sales_id)
    manager = sales.headers("sales_manager")
    before = await gateway.query(READ, {"id": cuid}, headers=manager)  # now in the cache
    reply = await gateway.query(
        UPDATE, {"id": cuid, "input": {"phone": "+86 139-0000-1111"}}, headers=manager
    )
    assert not reply.errors, reply.errors
    updated = reply.data["updateCustomer"]
    assert updated["phone"] == "+8613900001111"
    assert updated["version"] != before.data["customer"]["version"]
    assert (await sales.row(sales_id))["phone"] == "+8613900001111"
    after = await gateway.query(READ, {"id": cuid}, headers=manager)
    assert after.data["customer"]["phone"] == "+8613900001111"
    assert after.data["customer"]["email"] == before.data["customer"]["email"]  # kept


async def test_a_rep_needs_mfa_then_edits_only_the_customers_they_own(sales: Sales) -> None:
    gateway = sales.gateway
    sales_id, rep = _owned(sales.world)
    other = next(c for c in sales.world.sales.customers if c.owner_rep and c.owner_rep != rep)
    variables = {"id": sales.cuid(sales_id), "input": {"address": "上海市静安区南京西路1号"}}
    before = await sales.row(sales_id)

    no_mfa = await gateway.query(UPDATE, variables, headers=sales.headers("sales", rep, mfa=False))
    [error] = no_mfa.errors
    assert error["extensions"]["code"] == "INSUFFICIENT_AUTH"
    assert error["extensions"]["required"] == {"amr": ["mfa"]}
    assert (await sales.row(sales_id)) == before  # nothing written

    not_theirs = await gateway.query(
        UPDATE,
        {"id": sales.cuid(other.id), "input": {"address": "x"}},
        headers=sales.headers("sales", rep),
    )
    assert [e["extensions"]["code"] for e in not_theirs.errors] == ["FORBIDDEN"]
    assert not_theirs.errors[0]["extensions"]["field"] == "input.address"

    theirs = await gateway.query(UPDATE, variables, headers=sales.headers("sales", rep))
    assert not theirs.errors, theirs.errors
    assert (await sales.row(sales_id))["address"] == "上海市静安区南京西路1号"


@pytest.mark.parametrize("role", ["service", "marketing", "security"])
async def test_every_other_role_is_refused_before_anything_is_sent(sales: Sales, role: str) -> None:
    sales_id, _ = _owned(sales.world)
    before = await sales.row(sales_id)
    reply = await sales.gateway.query(
        UPDATE,
        {"id": sales.cuid(sales_id), "input": {"email": "new@example.com"}},
        headers=sales.headers(role),
    )
    assert [e["extensions"]["code"] for e in reply.errors] == ["FORBIDDEN"]
    assert reply.data == {"updateCustomer": None}
    assert (await sales.row(sales_id)) == before


@pytest.mark.parametrize("role", ["service", "marketing"])
async def test_a_caller_who_may_not_edit_learns_nothing_of_who_exists(
    sales: Sales, role: str
) -> None:
    """A refusal whatever the record comes before the customer is looked up: known and
    unknown customers are refused alike (no NOT_FOUND oracle for writes)."""
    sales_id, _ = _owned(sales.world)
    answers = []
    for cuid in (sales.cuid(sales_id), "cus_" + "a" * 16):
        reply = await sales.gateway.query(
            UPDATE, {"id": cuid, "input": {"email": "new@example.com"}}, headers=sales.headers(role)
        )
        answers.append([(e["extensions"]["code"], e["message"]) for e in reply.errors])
    assert answers[0] == answers[1]
    assert answers[0][0][0] == "FORBIDDEN"


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"email": "not-an-email"}, "input.email"),
        ({"phone": "call me maybe"}, "input.phone"),
        ({"address": "line\x00break"}, "input.address"),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(
    sales: Sales, given: dict[str, str], field: str
) -> None:
    sales_id, _ = _owned(sales.world)
    before = await sales.row(sales_id)
    reply = await sales.gateway.query(
        UPDATE, {"id": sales.cuid(sales_id), "input": given}, headers=sales.headers("sales_manager")
    )
    [error] = reply.errors
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["field"] == field
    assert given[field.split(".")[1]] not in error["message"]  # the value is not echoed
    assert (await sales.row(sales_id)) == before


async def test_a_null_value_is_refused_not_recorded_as_a_change(sales: Sales) -> None:
    """`input: {email: null}`: the sales write keeps its value for a null, so accepting it
    would record a change that did not happen; it is refused, naming the field."""
    sales_id, _ = _owned(sales.world)
    before = await sales.row(sales_id)
    reply = await sales.gateway.query(
        UPDATE,
        {"id": sales.cuid(sales_id), "input": {"email": None, "phone": "13800138000"}},
        headers=sales.headers("sales_manager"),
    )
    [error] = reply.errors
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "input.email"}
    assert (await sales.row(sales_id)) == before


async def test_unknown_customers_are_not_found(sales: Sales) -> None:
    reply = await sales.gateway.query(
        UPDATE,
        {"id": "cus_" + "a" * 16, "input": {"phone": "13800138000"}},
        headers=sales.headers("sales_manager"),
    )
    assert [e["extensions"]["code"] for e in reply.errors] == ["NOT_FOUND"]
    malformed = await sales.gateway.query(
        UPDATE, {"id": "42", "input": {}}, headers=sales.headers("sales_manager")
    )
    assert [e["extensions"]["code"] for e in malformed.errors] == ["BAD_USER_INPUT"]
    sales_id, _ = _owned(sales.world)
    before = await sales.row(sales_id)
    nothing = await sales.gateway.query(
        UPDATE, {"id": sales.cuid(sales_id), "input": {}}, headers=sales.headers("sales_manager")
    )
    assert [e["extensions"]["code"] for e in nothing.errors] == ["BAD_USER_INPUT"]
    assert (await sales.row(sales_id)) == before  # not even its version moved


async def test_a_stale_version_is_a_conflict_and_the_current_one_writes(sales: Sales) -> None:
    gateway = sales.gateway
    sales_id = sales.world.sales.customers[5].id
    cuid = sales.cuid(sales_id)
    manager = sales.headers("sales_manager")
    read = (await gateway.query(READ, {"id": cuid}, headers=manager)).data["customer"]
    first = await gateway.query(
        UPDATE, {"id": cuid, "input": {"phone": "13700000001"}, "v": read["version"]}, manager
    )
    assert not first.errors, first.errors
    stale = await gateway.query(
        UPDATE, {"id": cuid, "input": {"phone": "13700000002"}, "v": read["version"]}, manager
    )
    assert [e["extensions"]["code"] for e in stale.errors] == ["CONFLICT"]
    assert (await sales.row(sales_id))["phone"] == "+8613700000001"
    fresh = first.data["updateCustomer"]["version"]
    again = await gateway.query(
        UPDATE, {"id": cuid, "input": {"phone": "13700000003"}, "v": fresh}, manager
    )
    assert not again.errors, again.errors


async def test_an_idempotency_key_makes_a_retried_write_happen_once(sales: Sales) -> None:
    gateway = sales.gateway
    sales_id, _ = _owned(sales.world)
    cuid = sales.cuid(sales_id)
    headers = {**sales.headers("sales"), "idempotency-key": "retry-" + uuid.uuid4().hex}
    variables = {"c": cuid, "note": "Call back about the invoice"}
    count = "SELECT count(*) FROM crm_followups WHERE customer_id = :id"
    before = await sales.scalar(count, id=sales_id)
    replies = [await gateway.query(FOLLOW_UP, variables, headers=headers) for _ in range(2)]
    assert [r.errors for r in replies] == [[], []]
    assert replies[0].data == replies[1].data
    assert replies[0].data["addFollowUp"]["createdBy"] == "someone"
    assert await sales.scalar(count, id=sales_id) == before + 1
    reused = await gateway.query(FOLLOW_UP, {**variables, "note": "other"}, headers=headers)
    assert [e["extensions"]["code"] for e in reused.errors] == ["BAD_USER_INPUT"]
    notes = await gateway.query(
        "query($id: ID!) { customer(id: $id) { followUps(first: 1) { note createdBy } } }",
        {"id": cuid},
        headers=sales.headers("service"),
    )
    assert notes.data["customer"]["followUps"] == [
        {"note": "Call back about the invoice", "createdBy": "someone"}
    ]


async def test_marketing_records_a_consent_for_marketing_only(sales: Sales) -> None:
    gateway = sales.gateway
    person = next(p for p in sales.world.persons if p.sales_ids and p.contact_id)
    cuid = sales.cuid(person.sales_ids[0])
    variables = {"c": cuid, "channel": "sms", "granted": False}
    refused = await gateway.query(
        CONSENT, variables, headers=sales.headers("marketing", purpose="sales")
    )
    assert [e["extensions"]["code"] for e in refused.errors] == ["FORBIDDEN"]
    done = await gateway.query(CONSENT, variables, headers=sales.headers("marketing"))
    assert not done.errors, done.errors
    assert done.data["setConsent"] == {"channel": "sms", "granted": False}
    read = await gateway.query(
        "query($id: ID!) { customer(id: $id) { consents { channel granted } } }",
        {"id": cuid},
        headers=sales.headers("marketing"),
    )
    assert {"channel": "sms", "granted": False} in read.data["customer"]["consents"]
    bad = await gateway.query(
        CONSENT, {**variables, "channel": "pigeon"}, headers=sales.headers("marketing")
    )
    assert [e["extensions"]["code"] for e in bad.errors] == ["BAD_USER_INPUT"]
    assert bad.errors[0]["extensions"]["source"] == "marketing"


async def test_the_record_names_the_changed_fields_never_a_value(sales: Sales) -> None:
    gateway = sales.gateway
    sales_id = sales.world.sales.customers[7].id
    cuid = sales.cuid(sales_id)
    new_email = f"moved.{uuid.uuid4().hex[:6]}@example.org"
    reply = await gateway.query(
        UPDATE, {"id": cuid, "input": {"email": new_email}}, headers=sales.headers("sales_manager")
    )
    assert not reply.errors, reply.errors
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    log_text = "\n".join(path.read_text(encoding="utf-8") for path in sink.files())
    assert new_email not in log_text and new_email.split("@")[0] not in log_text
    records = [r for _, r in sink.lines() if r]
    write = [r for r in records if r.get("kind") == "write"][-1]
    [entry] = write["writes"]
    assert entry["customer"] == cuid and entry["system"] == "sales"
    assert entry["fields"] == ["input.email"] and entry["outcome"] == "ok"
    assert entry["decisions"] == {"input.email": "allow"}
    assert entry["after"]["input.email"].startswith("h1:")
    assert entry["before"]["input.email"] != entry["after"]["input.email"]
    # Security's timeline of the customer shows the write beside the reads.
    timeline = await gateway.query(
        """query($c: ID!) { accessLog(customer: $c, kind: "write") { edges { node {
          kind writes(customer: $c) { mutation system fields outcome } } } } }""",
        {"c": cuid},
        headers=gateway.as_role("security"),
    )
    assert not timeline.errors, timeline.errors
    nodes = [edge["node"] for edge in timeline.data["accessLog"]["edges"]]
    assert nodes and nodes[0]["kind"] == "write"
    assert nodes[0]["writes"] == [
        {
            "mutation": "updateCustomer",
            "system": "sales",
            "fields": ["input.email"],
            "outcome": "ok",
        }
    ]
    # The crosswalk followed the new email: a lookup by it finds the customer.
    found = await gateway.query(
        "query($e: String!) { customerByEmail(email: $e) { id } }",
        {"e": new_email.upper()},
        headers=sales.headers("sales_manager"),
    )
    assert found.data["customerByEmail"] == {"id": cuid}


@pytest.mark.redis
async def test_a_write_through_one_instance_is_seen_by_another_sharing_redis(
    sales: Sales, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two gateways over the same systems share their cache through Redis: a write through
    one evicts the customer there, so the other reads the new value at once."""
    from tests.test_cache import redis_overrides

    overrides = redis_overrides(redis_url, "writes-" + uuid.uuid4().hex)
    work = tmp_path_factory.mktemp("shared")
    async with (
        running_gateway(sales.systems, work / "a", overrides) as first,
        running_gateway(sales.systems, work / "b", overrides) as second,
    ):
        sales_id = sales.world.sales.customers[11].id
        cuid = first.gateway.identity.by_record[("sales", str(sales_id))]
        manager = sales.headers("sales_manager")
        await second.query(READ, {"id": cuid}, headers=manager)  # cached in Redis
        before = second.source_calls("sales")
        cached = await second.query(READ, {"id": cuid}, headers=manager)
        assert second.source_calls("sales") == before  # served from the shared cache
        written = await first.query(
            UPDATE, {"id": cuid, "input": {"phone": "13611112222"}}, headers=manager
        )
        assert not written.errors, written.errors
        after = await second.query(READ, {"id": cuid}, headers=manager)
        assert after.data["customer"]["phone"] == "+8613611112222"
        assert after.data["customer"]["phone"] != cached.data["customer"]["phone"]


async def test_a_write_to_a_system_that_is_down_names_it_and_claims_nothing(
    sales: Sales,
) -> None:
    gateway = sales.gateway
    person = next(p for p in sales.world.persons if p.sales_ids and p.contact_id)
    cuid = sales.cuid(person.sales_ids[0])
    admin = SourceAdmin(sales.systems, gateway.http)
    await admin.fault("marketing", "error")
    try:
        reply = await gateway.query(
            CONSENT,
            {"c": cuid, "channel": "email", "granted": True},
            headers=sales.headers("marketing"),
        )
    finally:
        await admin.fault("marketing", "ok")
    assert reply.data == {"setConsent": None}
    [error] = reply.errors
    assert error["extensions"] == {"code": "SOURCE_UNAVAILABLE", "source": "marketing"}
    assert "unavailable" in error["message"]  # down before the write: nothing was written


async def test_a_rest_system_is_written_through_its_own_api(sales: Sales) -> None:
    """The helpdesk keeps its own copy of a phone: a manager corrects it there, through
    the helpdesk's REST API, under the same edit policy as the CRM's phone."""
    gateway = sales.gateway
    person = next(p for p in sales.world.persons if p.sales_ids and p.requester_id)
    cuid = sales.cuid(person.sales_ids[0])
    mutation = """mutation($c: ID!, $phone: String!) {
      updateHelpdeskContact(customer: $c, input: {phone: $phone}) { id } }"""
    no_mfa = await gateway.query(
        mutation,
        {"c": cuid, "phone": "13512345678"},
        headers=sales.headers("sales_manager", mfa=False),
    )
    assert [e["extensions"]["code"] for e in no_mfa.errors] == ["INSUFFICIENT_AUTH"]
    service = await gateway.query(
        mutation, {"c": cuid, "phone": "13512345678"}, headers=sales.headers("service")
    )
    assert [e["extensions"]["code"] for e in service.errors] == ["FORBIDDEN"]
    done = await gateway.query(
        mutation, {"c": cuid, "phone": "135 1234 5678"}, headers=sales.headers("sales_manager")
    )
    assert not done.errors, done.errors
    url = sales.systems.endpoints["service"]["url"]
    async with gateway.http.get(f"{url}/api/v2/requesters/{person.requester_id}") as reply:
        requester = await reply.json()
    assert requester["requester"]["phone"] == "+8613512345678"


async def test_a_retry_sent_while_the_first_write_runs_waits_for_it(sales: Sales) -> None:
    """Two requests with one Idempotency-Key at once: one follow-up, one answer."""
    gateway = sales.gateway
    sales_id, _ = _owned(sales.world)
    cuid = sales.cuid(sales_id)
    headers = {**sales.headers("sales"), "idempotency-key": "race-" + uuid.uuid4().hex}
    count = "SELECT count(*) FROM crm_followups WHERE customer_id = :id"
    before = await sales.scalar(count, id=sales_id)
    variables = {"c": cuid, "note": "Only once, please"}
    replies = await asyncio.gather(
        *(gateway.query(FOLLOW_UP, variables, headers=headers) for _ in range(3))
    )
    assert [r.errors for r in replies] == [[], [], []]
    assert len({orjson.dumps(r.data) for r in replies}) == 1
    assert await sales.scalar(count, id=sales_id) == before + 1
