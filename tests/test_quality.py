"""Data quality: the checks the declaration implies, the figures against the demo world's
own truth (and against values broken on purpose), the trend, the JSON and text reports,
and the gauges on /metrics."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.base import EntitySpec, SourceUnavailable
from connectors.identity.store import CrosswalkStore, Issue, Link
from demo import GRAPH_FILE
from demo.people import DemoWorld, Person
from demo.sales_db import seed_sales_db
from demo.systems import DemoSystems
from gateway.app import Gateway
from gateway.cli import CliError, _quality, build_parser
from gateway.config import parse_config
from gateway.demo import to_toml
from gateway.quality import field_checks, quality_fields, quality_report
from harness import RunningGateway, gateway_config, running_gateway
from resolvers import inputs
from resolvers.declaration import load_declaration, parse_declaration

DECLARATION = """
type Customer {
  mobile: String @from(path: "crm.person.mobile") @policy(name: "p")
  email: String @from(path: "crm.person.mail") @check(as: "email") @policy(name: "p")
  nationalId: String @from(path: "crm.person.nid") @check(as: "nationalId") @policy(name: "p")
  tier: Tier @from(path: "crm.person.tier") @policy(name: "p")
  joinedOn: Date @from(path: "crm.person.joined") @policy(name: "p")
  seenAt: DateTime @from(path: "crm.person.seen") @policy(name: "p")
  note: String @from(path: "crm.person.note") @policy(name: "p")
  visits: [Visit!] @from(path: "crm.visits") @policy(name: "p")
  visitCount: Int @derive(from: "visits", op: "count") @policy(name: "p")
}
type Visit { id: ID! }
enum Tier { GOLD @code(values: ["G"]) SILVER }
input PersonInput { mobile: String @edits(field: "mobile") @check(as: "phone") }
type Mutation {
  updatePerson(id: ID!, input: PersonInput!): Customer
    @write(action: "crm.update", customer: "id")
}
"""
ENTITIES = {
    "crm": {
        "person": EntitySpec("person", "id"),
        "visits": EntitySpec("visits", "person_id", many=True),
    }
}


def test_a_field_name_alone_implies_no_check() -> None:
    """Checks are declared, never guessed from a name: a field called `phone` or
    `nationalId` with no `@check` is measured for completeness only."""
    declaration = parse_declaration(
        """
        type Customer {
          phone: String @from(path: "crm.person.phone") @policy(name: "p")
          nationalId: String @from(path: "crm.person.nid") @policy(name: "p")
          mobile: String @from(path: "crm.person.mobile") @check(as: "phone") @policy(name: "p")
        }
        """
    )
    checks = field_checks(declaration)
    assert checks["phone"] is None and checks["nationalId"] is None
    assert checks["mobile"] is not None and checks["mobile"].kind == "phone"


def test_each_field_gets_the_check_its_declaration_implies() -> None:
    checks = field_checks(parse_declaration(DECLARATION))
    kinds = {name: check.kind if check else None for name, check in checks.items()}
    assert kinds == {
        "mobile": "phone",  # the @check(as:) of the input field that edits it
        "email": "email",  # its own @check(as:)
        "nationalId": "nationalId",
        "tier": "enum",
        "joinedOn": "date",
        "seenAt": "datetime",
        "note": None,
        "visits": None,
        "visitCount": None,
    }
    passes = {name: check.passes for name, check in checks.items() if check}
    assert passes["mobile"]("+86 138 0013 8000") and not passes["mobile"]("12")
    assert passes["email"](" Zhang.Wei@Example.COM ") and not passes["email"]("zhang.wei")
    assert passes["nationalId"]("11010519491231002X")
    assert not passes["nationalId"]("110105194912310021")  # wrong check digit
    assert passes["tier"]("G") and passes["tier"](" gold ") and not passes["tier"]("X")
    assert passes["joinedOn"]("2024-01-31") and not passes["joinedOn"]("31/01/2024")
    assert passes["seenAt"]("2024-01-31T08:00:00+08:00") and not passes["seenAt"]("yesterday")
    assert not passes["seenAt"](42)
    measured = quality_fields(parse_declaration(DECLARATION), ENTITIES)
    # lists of records and values derived from them are not one attribute of a record
    assert [f.name for f in measured] == [
        "mobile",
        "email",
        "nationalId",
        "tier",
        "joinedOn",
        "seenAt",
        "note",
    ]


async def test_the_figures_are_counted_from_the_records(tmp_path: Path) -> None:
    """The computation alone, over a crosswalk and records made by hand."""
    store = CrosswalkStore(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    await store.create()
    cuids = [f"cus_{letter * 16}" for letter in "abcdef"]
    links = [
        Link("crm", "1", cuids[0], True, None, None),
        Link("crm", "2", cuids[1], True, None, None),
        Link("crm", "3", cuids[2], True, None, None),
        Link("crm", "4", cuids[2], False, None, None),  # a duplicate of 3
        Link("crm", "5", cuids[3], True, None, None),  # gone from the system since
        Link("shop", "s1", cuids[0], True, None, None),
        Link("shop", "s2", cuids[4], True, None, None),
    ]
    issues = [Issue("crm", "4", "duplicate", cuids[2], "a second crm record")]
    await store.save_page("crm", links, issues, None)
    people = {
        "1": {"mobile": "13800138000", "mail": "a@x.cn", "tier": "G", "joined": "2024-01-31"},
        "2": {"mobile": "12", "mail": "nope", "tier": "X", "joined": "", "note": " "},
        "3": {"mobile": None, "mail": "c@x.cn", "tier": " silver ", "seen": "yesterday"},
        "4": {"mobile": "+8613900139000", "mail": "d@x.cn", "nid": "110105194912310021"},
    }
    asked: list[tuple[str, str, list[str]]] = []

    async def fetch(source: str, entity: str, keys: Sequence[str]) -> Mapping[str, Any]:
        asked.append((source, entity, list(keys)))
        return {key: people[key] for key in keys if key in people}

    report = await quality_report(
        store, fetch, parse_declaration(DECLARATION), ENTITIES, ["crm", "shop"], batch=2
    )
    assert asked == [
        ("crm", "person", ["1", "2"]),
        ("crm", "person", ["3", "4"]),
        ("crm", "person", ["5"]),
    ]
    crm = report.systems["crm"]
    assert (crm.identity.records, crm.identity.duplicates, crm.missing) == (5, 1, 1)
    assert crm.identity.match_rate == 0.2  # only crm:1 has a customer the shop knows too
    assert report.systems["shop"].identity.match_rate == 0.5
    got = {
        name: (f.records, f.filled, f.invalid, f.completeness, f.validity)
        for name, f in crm.fields.items()
    }
    assert got == {
        "mobile": (4, 3, 1, 0.75, 0.6667),
        "email": (4, 4, 1, 1.0, 0.75),
        "nationalId": (4, 1, 1, 0.25, 0.0),
        "tier": (4, 3, 1, 0.75, 0.6667),
        "joinedOn": (4, 1, 0, 0.25, 1.0),
        "seenAt": (4, 1, 1, 0.25, 0.0),
        "note": (4, 0, None, 0.0, None),  # no check: no validity
    }
    worst = [(r.system, r.id, r.failed) for r in report.worst]
    assert worst == [
        ("crm", "2", ("mobile", "email", "tier")),
        ("crm", "4", ("nationalId", "duplicate")),
        ("crm", "3", ("seenAt",)),
    ]
    assert report.worst[0].customer == cuids[1]

    async def failing(source: str, entity: str, keys: Sequence[str]) -> Mapping[str, Any]:
        return {key: SourceUnavailable(source, "down") for key in keys}

    down = await quality_report(
        store, failing, parse_declaration(DECLARATION), ENTITIES, ["crm", "shop"]
    )
    assert down.systems["crm"].error == "down"
    assert down.systems["crm"].fields["email"].completeness is None
    assert down.previous is not None and down.previous.ran_at == report.ran_at
    await store.close()


def _known_to(person: Person) -> set[str]:
    return {
        system
        for system, has in (
            ("sales", person.sales_ids),
            ("service", person.requester_id),
            ("marketing", person.contact_id),
        )
        if has
    }


def world_truth(world: DemoWorld) -> dict[str, dict[str, Any]]:
    """Each system's figures as the demo world knows them (not through the crosswalk):
    its records (one per sales id, requester, contact), the share of them whose person
    another system knows too, the second sales records of one person, and the marketing
    contacts whose phone the CRM never saw."""
    records: dict[str, list[Person]] = {"sales": [], "service": [], "marketing": []}
    for person in world.persons:
        records["sales"] += [person] * len(person.sales_ids)
        if person.requester_id:
            records["service"].append(person)
        if person.contact_id:
            records["marketing"].append(person)
    duplicates = {
        "sales": sum(max(len(p.sales_ids) - 1, 0) for p in world.persons),
        "service": 0,
        "marketing": 0,
    }
    conflicts = {
        "sales": 0,
        "service": 0,
        "marketing": sum(p.marketing_conflict for p in world.persons),
    }
    return {
        system: {
            "records": len(persons),
            "match_rate": round(sum(len(_known_to(p)) > 1 for p in persons) / len(persons), 4),
            "duplicates": duplicates[system],
            "conflicts": conflicts[system],
        }
        for system, persons in records.items()
    }


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = await _quality(build_parser().parse_args(["quality", *argv]))
    return code, capsys.readouterr().out


async def test_the_report_tells_the_demo_worlds_truth_and_its_trend(
    demo_systems: DemoSystems,
    demo_world: DemoWorld,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A sales database of the test's own, seeded from the world: values get broken below.
    sales_db = tmp_path / "sales.db"
    await seed_sales_db(f"sqlite+aiosqlite:///{sales_db}", demo_world)
    data = gateway_config(
        demo_systems, tmp_path, {"sources.sales.dsn": f"sqlite+aiosqlite:///{sales_db}"}
    )
    config_path = tmp_path / "c360.toml"
    config_path.write_text(to_toml(data), encoding="utf-8")
    gateway = Gateway(parse_config(data, base_dir=tmp_path))
    try:
        await gateway.store.create()
        await gateway.sync()
    finally:
        await gateway.stop()

    code, out = await run_cli(capsys, "report", "--config", str(config_path), "--json")
    assert code == 0
    first = orjson.loads(out)
    assert set(first) == {"ran_at", "previous_run_at", "systems", "worst_records"}
    assert first["previous_run_at"] is None
    truth = world_truth(demo_world)
    for system, expected in truth.items():
        got = first["systems"][system]
        assert {key: got[key] for key in expected} == expected, system
        assert got["error"] is None and got["missing"] == 0 and got["previous"] is None
    sales = first["systems"]["sales"]["fields"]
    assert set(sales["email"]) == {
        "entity",
        "attribute",
        "check",
        "records",
        "filled",
        "invalid",
        "completeness",
        "validity",
        "previous",
    }
    assert (sales["phone"]["check"], sales["nationalId"]["check"]) == ("phone", "nationalId")
    assert sales["name"]["check"] is None and sales["name"]["validity"] is None
    # The world's own values, checked here without the report: every one is well formed.
    n = len(demo_world.sales.customers)
    for name, values in (
        ("phone", [c.phone for c in demo_world.sales.customers]),
        ("email", [c.email for c in demo_world.sales.customers]),
        ("nationalId", [c.national_id for c in demo_world.sales.customers]),
    ):
        well_formed = sum(_passes(inputs.CHECKS[name], value) for value in values)
        assert sales[name]["records"] == n
        assert sales[name]["validity"] == round(well_formed / n, 4) == 1.0
    assert first["systems"]["marketing"]["fields"]["segment"]["completeness"] == 1.0
    # The worst records of a clean world are its duplicates and conflicts, by id only.
    listed = {(r["system"], r["id"]): r["failed"] for r in first["worst_records"]}
    # (the crosswalk keeps a person's lowest sales id, whichever the CRM entered first)
    duplicates = {
        ("sales", str(sid)): ["duplicate"]
        for p in demo_world.persons
        for sid in sorted(p.sales_ids)[1:]
    }
    conflicts = {
        ("marketing", p.contact_id): ["conflict"]
        for p in demo_world.persons
        if p.marketing_conflict and p.contact_id
    }
    assert listed == duplicates | conflicts

    # Break some values, as people do (in records that are no duplicates).
    ids = [c.id for c in demo_world.sales.customers if ("sales", str(c.id)) not in duplicates]
    broken: dict[str, dict[int, str | None]] = {
        "phone": {ids[0]: "12", ids[1]: "call me", ids[2]: "+86 138"},
        "email": {ids[0]: "no-at-sign", ids[3]: "wang@@example"},
        "national_id": {ids[0]: "11010519491231002", ids[4]: "110105194913310029"},
        "address": {ids[5]: None, ids[6]: "   ", ids[7]: ""},
    }
    with sqlite3.connect(sales_db) as db:
        for column, values in broken.items():
            for customer_id, value in values.items():
                db.execute(
                    f"UPDATE crm_customers SET {column} = ? WHERE id = ?", (value, customer_id)
                )
    code, out = await run_cli(capsys, "report", "--config", str(config_path), "--json")
    assert code == 0
    second = orjson.loads(out)
    fields = second["systems"]["sales"]["fields"]
    assert fields["phone"]["invalid"] == 3 and fields["phone"]["validity"] == round((n - 3) / n, 4)
    assert fields["email"]["invalid"] == 2 and fields["email"]["validity"] == round((n - 2) / n, 4)
    assert fields["nationalId"]["invalid"] == 2
    assert fields["address"]["filled"] == n - 3
    assert fields["address"]["completeness"] == round((n - 3) / n, 4)
    # the trend: the previous run's figures beside these
    assert second["previous_run_at"] == first["ran_at"]
    assert fields["phone"]["previous"] == {"completeness": 1.0, "validity": 1.0}
    assert second["systems"]["sales"]["previous"] == {
        key: value
        for key, value in first["systems"]["sales"].items()
        if key in ("records", "match_rate", "duplicates", "conflicts", "unlinkable")
    }
    # Most failed checks first; then by system (in linking order) and id; by id only.
    failing = {
        ("sales", str(ids[0])): ["email", "phone", "nationalId"],
        ("sales", str(ids[1])): ["phone"],
        ("sales", str(ids[2])): ["phone"],
        ("sales", str(ids[3])): ["email"],
        ("sales", str(ids[4])): ["nationalId"],
        **duplicates,
        **conflicts,
    }
    order = {"sales": 0, "service": 1, "marketing": 2}
    expected = sorted(failing.items(), key=lambda i: (-len(i[1]), order[i[0][0]], i[0][1]))[:20]
    assert [((r["system"], r["id"]), r["failed"]) for r in second["worst_records"]] == expected
    assert second["worst_records"][0]["customer"].startswith("cus_")
    # never a value: none of the broken ones, nor the world's own of those records
    for values in broken.values():
        for value in values.values():
            if value and len(value.strip()) > 5:
                assert value not in out
    for customer in demo_world.sales.customers[:12]:
        assert customer.email.strip() not in out and customer.national_id not in out
        assert customer.phone not in out and customer.full_name not in out
    store = CrosswalkStore(gateway.config.identity.dsn)
    assert [run.ran_at for run in await store.quality_runs()] == [
        first["ran_at"],
        second["ran_at"],
    ]
    await store.close()

    code, table = await run_cli(capsys, "report", "--config", str(config_path), "--worst", "3")
    assert code == 0
    assert "previous run" in table and "match rate" in table and "completeness" in table
    assert f"sales:{ids[0]}" in table and "email, phone, nationalId" in table
    assert re.search(
        rf"^sales +phone +phone +{n} +100\.0% \(100\.0%\) +99\.7% \(99\.7%\) +3$", table, re.M
    )
    assert table.count("\nsales:") + table.count("\nmarketing:") == 3


def _passes(check: Any, value: Any) -> bool:
    try:
        check(value)
    except ValueError:
        return False
    return True


async def test_an_empty_crosswalk_is_refused(demo_systems: DemoSystems, tmp_path: Path) -> None:
    config_path = tmp_path / "c360.toml"
    config_path.write_text(to_toml(gateway_config(demo_systems, tmp_path)), encoding="utf-8")
    with pytest.raises(CliError, match="run `c360 identity sync` first"):
        await _quality(
            build_parser().parse_args(["quality", "report", "--config", str(config_path)])
        )


def test_the_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["quality", "report", "--help"])
    assert exited.value.code == 0
    assert "--json" in capsys.readouterr().out


def _samples(metrics: str, name: str) -> dict[tuple[str, ...], float]:
    found = {}
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            found[tuple(sorted(labels.split(",")))] = float(value)
    return found


async def test_gauges_after_the_sync_and_after_a_quality_run(
    demo_systems: DemoSystems,
    demo_world: DemoWorld,
    gateway: RunningGateway,
    tmp_path: Path,
) -> None:
    truth = world_truth(demo_world)
    # Without quality_on_sync (the default): the crosswalk's figures only.
    status, metrics = await gateway.get("/metrics")
    assert status == 200
    assert _samples(metrics, "c360_identity_match_rate") == {
        (f'system="{system}"',): expected["match_rate"] for system, expected in truth.items()
    }
    assert (
        _samples(metrics, "c360_quality_duplicates")[('system="sales"',)]
        == truth["sales"]["duplicates"]
    )
    assert _samples(metrics, "c360_quality_completeness") == {}

    async with running_gateway(
        demo_systems, tmp_path / "gw", {"identity.quality_on_sync": True}
    ) as running:
        assert await running.gateway.quality_runs.wait() is not None  # quality_on_sync's
        status, metrics = await running.get("/metrics")
        runs = await running.gateway.store.quality_runs()
    assert status == 200 and len(runs) == 1
    completeness = _samples(metrics, "c360_quality_completeness")
    validity = _samples(metrics, "c360_quality_validity")
    for name in ("email", "phone", "nationalId"):
        assert completeness[(f'field="{name}"', 'system="sales"')] == 1.0
        assert validity[(f'field="{name}"', 'system="sales"')] == 1.0
    assert completeness[('field="segment"', 'system="marketing"')] == 1.0
    assert ('field="name"', 'system="sales"') not in validity  # no check, no validity
    for system, expected in truth.items():
        labels = (f'system="{system}"',)
        assert _samples(metrics, "c360_quality_duplicates")[labels] == expected["duplicates"]
        assert _samples(metrics, "c360_quality_conflicts")[labels] == expected["conflicts"]
        assert _samples(metrics, "c360_identity_match_rate")[labels] == expected["match_rate"]


def test_the_demo_graph_measures_its_contact_fields() -> None:
    declaration = load_declaration(GRAPH_FILE)
    entities = {
        "sales": {"customer": EntitySpec("customer", "id")},
        "marketing": {"contact": EntitySpec("contact", "id")},
        "service": {},
    }
    measured = {
        (f.source, f.name): f.check.kind if f.check else None
        for f in quality_fields(declaration, entities)
    }
    assert measured[("sales", "email")] == "email"
    assert measured[("sales", "phone")] == "phone"
    assert measured[("sales", "nationalId")] == "nationalId"
    assert measured[("marketing", "segment")] is None
    assert not any(name in ("orders", "tickets", "satisfaction") for _, name in measured)
