"""A person's rights: what is held about them (every record, unmasked, with every access
to it), and erasure routed to the systems that declare one, the rest listed by hand."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from demo.people import DemoWorld, Person
from demo.systems import DemoSystems
from gateway.audit.sinks import JsonlSink
from gateway.auth import mint_token
from gateway.http.state import RequestState, new_request_id
from harness import RunningGateway, running_gateway
from policies.principal import Principal

REPORT = """query($e: String, $p: String, $c: ID) {
  subjectReport(email: $e, phone: $p, customer: $c) {
    customer linked { system key } records { system entity key values { name value } }
    systemsUnavailable
    accesses { kind subject roles purpose client fields { field decision } }
  }
}"""
ERASE = """mutation($c: ID!, $confirm: Boolean!) {
  subjectErase(customer: $c, confirm: $confirm) { customer erased failed manual unlinked }
}"""


@pytest.fixture(scope="module")
async def rights(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RunningGateway, DemoWorld, DemoSystems]]:
    """Systems of their own: an erasure changes them."""
    work = tmp_path_factory.mktemp("rights")
    async with (
        DemoSystems(work, customers=80) as systems,
        running_gateway(systems, work / "gateway") as gateway,
    ):
        yield gateway, systems.world, systems


def privacy(gateway: RunningGateway) -> dict[str, str]:
    return gateway.as_role("privacy", "rights", subject="dpo")


def _duplicated(world: DemoWorld) -> Person:
    return next(p for p in world.persons if len(p.sales_ids) == 2 and p.requester_id)


async def test_a_report_holds_every_record_unmasked_and_every_access(
    rights: tuple[RunningGateway, DemoWorld, DemoSystems],
) -> None:
    gateway, world, _ = rights
    person = _duplicated(world)
    cuid = gateway.gateway.identity.by_record[("sales", str(person.sales_ids[0]))]
    read = await gateway.query(
        "query($id: ID!) { customer(id: $id) { name nationalId } }",
        {"id": cuid},
        headers={**gateway.as_role("sales"), "x-client-name": "web-crm"},
    )
    assert not read.errors
    reply = await gateway.query(REPORT, {"e": " " + person.email.upper()}, headers=privacy(gateway))
    assert not reply.errors, reply.errors
    report = reply.data["subjectReport"]
    assert report["customer"] == cuid and report["systemsUnavailable"] == []
    customers = [
        r for r in report["records"] if (r["system"], r["entity"]) == ("sales", "customer")
    ]
    # Both of the person's CRM records, each listed on its own (the graph merges them).
    assert sorted(r["key"] for r in customers) == sorted(str(i) for i in person.sales_ids)
    national_ids = {
        v["value"] for r in customers for v in r["values"] if v["name"] == "national_id"
    }
    assert person.national_id in national_ids  # unmasked: it is their own data
    assert {"system": "service", "key": person.requester_id} in report["linked"]
    assert {r["system"] for r in report["records"]} >= {"sales", "marketing"}
    seen = [a for a in report["accesses"] if a["client"] == "web-crm"]
    assert seen and seen[0]["roles"] == ["sales"] and seen[0]["purpose"] == "sales"
    assert {"field": "nationalId", "decision": "mask"} in seen[0]["fields"]


@pytest.mark.parametrize(
    ("role", "purpose"), [("security", "audit"), ("sales", "sales"), ("privacy", "privacy")]
)
async def test_only_the_privacy_office_acting_for_rights_may_ask(
    rights: tuple[RunningGateway, DemoWorld, DemoSystems], role: str, purpose: str
) -> None:
    gateway, world, _ = rights
    person = _duplicated(world)
    reply = await gateway.query(REPORT, {"e": person.email}, headers=gateway.as_role(role, purpose))
    assert reply.data == {"subjectReport": None}
    assert [e["extensions"]["code"] for e in reply.errors] == ["FORBIDDEN"]


async def test_unknown_people_and_ambiguous_requests(
    rights: tuple[RunningGateway, DemoWorld, DemoSystems],
) -> None:
    gateway, _, _ = rights
    unknown = await gateway.query(REPORT, {"e": "nobody@example.invalid"}, headers=privacy(gateway))
    assert [e["extensions"]["code"] for e in unknown.errors] == ["NOT_FOUND"]
    both = await gateway.query(
        REPORT, {"e": "a@example.com", "p": "13800138000"}, headers=privacy(gateway)
    )
    assert [e["extensions"]["code"] for e in both.errors] == ["BAD_USER_INPUT"]


async def _crm_row(systems: DemoSystems, sales_id: int) -> dict[str, Any]:
    engine = create_async_engine(systems.endpoints["sales"]["dsn"])
    try:
        async with engine.connect() as connection:
            found = await connection.execute(
                text("SELECT * FROM crm_customers WHERE id = :id"), {"id": sales_id}
            )
            return dict(found.mappings().one())
    finally:
        await engine.dispose()


async def test_erasure_deletes_where_declared_lists_the_rest_and_stays_unlinked(
    rights: tuple[RunningGateway, DemoWorld, DemoSystems],
) -> None:
    gateway, world, systems = rights
    person = next(
        p for p in world.persons if len(p.sales_ids) == 1 and p.requester_id and p.contact_id
    )
    cuid = gateway.gateway.identity.by_record[("sales", str(person.sales_ids[0]))]
    refused = await gateway.query(ERASE, {"c": cuid, "confirm": False}, headers=privacy(gateway))
    assert [e["extensions"]["code"] for e in refused.errors] == ["BAD_USER_INPUT"]
    not_privacy = await gateway.query(
        ERASE, {"c": cuid, "confirm": True}, headers=gateway.as_role("sales_manager")
    )
    assert [e["extensions"]["code"] for e in not_privacy.errors] == ["FORBIDDEN"]
    assert (await _crm_row(systems, person.sales_ids[0]))["email"] is not None

    reply = await gateway.query(ERASE, {"c": cuid, "confirm": True}, headers=privacy(gateway))
    assert not reply.errors, reply.errors
    done = reply.data["subjectErase"]
    assert done["erased"] == ["sales"] and done["failed"] == []
    assert done["manual"] == ["marketing", "service"]  # no erase declared: by hand
    assert done["unlinked"] >= 3
    row = await _crm_row(systems, person.sales_ids[0])
    assert row["email"] is None and row["phone"] is None and row["national_id"] is None

    gone = await gateway.query("query($id: ID!) { customer(id: $id) { name } }", {"id": cuid})
    assert gone.data == {"customer": None}
    after = await gateway.query(REPORT, {"c": cuid}, headers=privacy(gateway))
    assert [e["extensions"]["code"] for e in after.errors] == ["NOT_FOUND"]
    # A sync reads the helpdesk's and marketing's records again: they stay unlinked.
    await gateway.gateway.sync(full=True)
    by_record = gateway.gateway.identity.by_record
    assert ("service", person.requester_id) not in by_record
    assert ("marketing", person.contact_id) not in by_record
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    records = [r for _, r in sink.lines() if r and r.get("kind") == "write"]
    [erasure] = [w for r in records for w in r["writes"] if w.get("mutation") == "subjectErase"]
    assert erasure["customer"] == cuid and erasure["manual"] == ["marketing", "service"]


async def test_the_cli_reports_as_json_and_a_printable_page_and_is_recorded(
    rights: tuple[RunningGateway, DemoWorld, DemoSystems], tmp_path: Path
) -> None:
    gateway, world, _ = rights
    person = _duplicated(world)  # never the one the erasure test erases
    config = gateway.gateway.config_path
    assert config is not None
    page = tmp_path / "report.html"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "subject",
        "report",
        "--config",
        str(config),
        "--phone",
        person.phone,
        "--json",
        "--html",
        str(page),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    report = orjson.loads(out)
    cuid = gateway.gateway.identity.by_record[("sales", str(person.sales_ids[0]))]
    assert report["customer"] == cuid
    html = page.read_text(encoding="utf-8")
    assert "我们持有的您的个人信息" in html and "What we hold about you" in html
    assert person.national_id in html  # their own data, in full
    missing = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "subject",
        "report",
        "--config",
        str(config),
        "--email",
        "nobody@example.invalid",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(missing.communicate(), 60)
    assert missing.returncode == 1
    assert err.decode().strip().startswith("c360: NOT_FOUND:") and b"Traceback" not in err
    # The CLI's request is in the log, by a principal named after the operator.
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    cli_records = [r for _, r in sink.lines() if r and r.get("client") == "c360-cli"]
    assert any(
        r["roles"] == ["privacy"] and cuid in r["customers"] and r["subject"].startswith("cli:")
        for r in cli_records
    )


RESTRICT = """mutation($c: ID!, $r: Boolean!) {
  subjectRestrict(customer: $c, restricted: $r) { customer restricted }
}"""
READ = "query($id: ID!) { customer(id: $id) { name phone tickets { id } } }"


async def test_a_restricted_person_is_denied_to_every_purpose_but_legal(
    rights: tuple[RunningGateway, DemoWorld, DemoSystems],
) -> None:
    gateway, world, _ = rights
    person = [p for p in world.persons if len(p.sales_ids) == 1 and p.requester_id][3]
    cuid = gateway.gateway.identity.by_record[("sales", str(person.sales_ids[0]))]
    other = next(c for c in gateway.gateway.identity.ordered if c != cuid)
    before = await gateway.query(READ, {"id": cuid})
    assert not before.errors and before.data["customer"]["name"]

    done = await gateway.query(RESTRICT, {"c": cuid, "r": True}, headers=privacy(gateway))
    assert done.data == {"subjectRestrict": {"customer": cuid, "restricted": True}}
    refused = await gateway.query(READ, {"id": cuid})
    assert refused.data["customer"] == {"name": None, "phone": None, "tickets": None}
    assert {e["extensions"]["policy"] for e in refused.errors} == {"restriction"}
    assert not (await gateway.query(READ, {"id": other})).errors  # nobody else
    page = await gateway.query("{ customers(first: 80) { edges { node { id name } } } }")
    names = {e["node"]["id"]: e["node"]["name"] for e in page.data["customers"]["edges"]}
    assert cuid in names and names[cuid] is None
    legal = await gateway.query(READ, {"id": cuid}, headers=gateway.as_role("sales", "legal"))
    assert not legal.errors and legal.data == before.data
    edit = await gateway.query(
        """mutation($id: ID!) { updateCustomer(id: $id, input: {address: "x"}) { id } }""",
        {"id": cuid},
        headers={
            "authorization": "Bearer "
            + mint_token(
                gateway.gateway.config.auth, "m", ["sales_manager"], ["sales"], amr=["mfa"]
            )
        },
    )
    assert [e["extensions"].get("policy") for e in edit.errors] == ["restriction"]
    legal_edit = await gateway.query(
        """mutation($id: ID!) { updateCustomer(id: $id, input: {address: "x"}) { id } }""",
        {"id": cuid},
        headers={
            "authorization": "Bearer "
            + mint_token(
                gateway.gateway.config.auth, "m", ["sales_manager"], ["legal"], amr=["mfa"]
            )
        },
    )
    assert [e["extensions"].get("policy") for e in legal_edit.errors] == ["restriction"]
    report = await gateway.query(REPORT, {"c": cuid}, headers=privacy(gateway))
    assert not report.errors and report.data["subjectReport"]["records"]

    lifted = await gateway.query(RESTRICT, {"c": cuid, "r": False}, headers=privacy(gateway))
    assert lifted.data["subjectRestrict"]["restricted"] is False
    assert (await gateway.query(READ, {"id": cuid})).data == before.data


async def test_a_restriction_made_elsewhere_holds_here_at_once_after_sighup(
    rights: tuple[RunningGateway, DemoWorld, DemoSystems],
) -> None:
    """Another process (the CLI, another worker) restricts a person in the shared store:
    SIGHUP makes this gateway read the crosswalk again at once."""
    gateway, world, _ = rights
    person = [p for p in world.persons if len(p.sales_ids) == 1 and p.requester_id][5]
    cuid = gateway.gateway.identity.by_record[("sales", str(person.sales_ids[0]))]
    store = gateway.gateway.store
    await store.restrict(cuid, True, "2026-12-07T00:00:00Z")  # as another process would
    try:
        assert gateway.gateway.reload()  # what SIGHUP runs
        assert gateway.gateway.identity_refresh is not None
        await gateway.gateway.identity_refresh
        refused = await gateway.query(READ, {"id": cuid})
        assert {e["extensions"]["policy"] for e in refused.errors} == {"restriction"}
    finally:
        await store.restrict(cuid, False, "2026-12-07T00:00:00Z")
        await gateway.gateway.reload_identity()


async def _until(check: Any, within_s: float) -> bool:
    """Whether `check()` comes true within `within_s` (polled; not a timing assert: the
    bound is many times the watch interval)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return bool(await check())


async def test_an_erasure_and_a_restriction_through_one_instance_hold_on_another(
    tmp_path: Path,
) -> None:
    """Two instances over one crosswalk store, with no SIGHUP: what the privacy office
    does through one holds on the other within `identity.watch_s` (each follows the
    store's change number), a failed read of the store on the way included."""
    shared = {"identity.dsn": f"sqlite+aiosqlite:///{tmp_path}/shared-identity.db"}
    async with (
        DemoSystems(tmp_path / "systems", customers=40) as systems,
        running_gateway(systems, tmp_path / "a", {**shared, "identity.watch_s": 0.1}) as one,
        running_gateway(systems, tmp_path / "b", {**shared, "identity.watch_s": 0.1}) as other,
    ):
        await one.gateway.sync()
        await other.gateway.reload_identity()
        ready = [p for p in systems.world.persons if len(p.sales_ids) == 1 and p.requester_id]
        restricted, erased = (
            one.gateway.identity.by_record[("sales", str(p.sales_ids[0]))] for p in ready[:2]
        )
        assert not (await other.query(READ, {"id": restricted})).errors
        # The other's first read after the change fails (a database that blinks): it must
        # read again on a later round, not take the change as followed.
        store = other.gateway.store
        links = store.links
        failures = [OSError("the crosswalk store blinked")]

        async def failing_once() -> Any:
            if failures:
                raise failures.pop()
            return await links()

        store.links = failing_once  # type: ignore[method-assign]

        done = await one.query(RESTRICT, {"c": restricted, "r": True}, headers=privacy(one))
        assert done.data == {"subjectRestrict": {"customer": restricted, "restricted": True}}

        async def refused_there() -> bool:
            reply = await other.query(READ, {"id": restricted})
            return {e["extensions"].get("policy") for e in reply.errors} == {"restriction"}

        assert await _until(refused_there, 10.0)
        assert not failures  # the failing read happened, and was read again after it

        gone = await one.query(ERASE, {"c": erased, "confirm": True}, headers=privacy(one))
        assert not gone.errors and gone.data["subjectErase"]["unlinked"] > 0

        async def unknown_there() -> bool:
            reply = await other.query(READ, {"id": erased})
            return bool(reply.data == {"customer": None})

        assert await _until(unknown_there, 10.0)
        assert other.gateway.identity.links(erased) is None


async def test_a_console_session_reads_a_report_but_erases_and_restricts_nothing(
    rights: tuple[RunningGateway, DemoWorld, DemoSystems],
) -> None:
    """The console's sign-in session acts for `rights` to show a person's report; an
    erasure or a restriction through it is refused whatever the policy file allows (a
    privacy officer's session here), and nothing changes."""
    gateway, world, _ = rights
    person = [p for p in world.persons if len(p.sales_ids) == 1 and p.requester_id][7]
    cuid = gateway.gateway.identity.by_record[("sales", str(person.sales_ids[0]))]
    officer = Principal("dpo", frozenset({"privacy"}), "rights", ("audit", "rights"))

    async def run(document: str, variables: dict[str, Any]) -> Any:
        state = RequestState(new_request_id(), principal=officer, session=True)
        return await gateway.gateway.schema.execute(
            document, variable_values=variables, context_value=gateway.gateway.context(state)
        )

    report = await run(REPORT, {"c": cuid})
    assert not report.errors and report.data["subjectReport"]["records"]
    for document, variables in (
        (ERASE, {"c": cuid, "confirm": True}),
        (RESTRICT, {"c": cuid, "r": True}),
    ):
        refused = await run(document, variables)
        assert [e.extensions for e in refused.errors or []] == [
            {"code": "FORBIDDEN", "policy": "console.session"}
        ]
    assert gateway.gateway.identity.links(cuid) is not None
    assert cuid not in gateway.gateway.identity.restricted
