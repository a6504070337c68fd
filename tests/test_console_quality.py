"""The console's data-quality page over HTTP: per system and field completeness, validity,
duplicates, match rate and conflicts, the trend across stored runs, and the records to fix
first by system and id, never a value; a run started from the page in the background;
for data stewards and security only."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from demo.people import DemoWorld
from demo.sales_db import seed_sales_db
from demo.systems import DemoSystems
from gateway.audit.sinks import JsonlSink
from harness import RunningGateway, running_gateway

QUALITY = """query ConsoleQuality($runs: Int) { dataQuality(runs: $runs) {
  running worstRanAt
  latest { ranAt systems { system records matchRate duplicates conflicts unlinkable missing error }
    fields { system field check completeness validity records filled invalid } }
  trend { ranAt systems { system matchRate duplicates conflicts }
    fields { system field completeness validity } }
  worst { system id customer failed } } }"""
RUN = "mutation ConsoleQualityRun { startDataQualityRun }"


async def finished(gateway: RunningGateway, headers: dict[str, str]) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            reply = await gateway.query(QUALITY, {"runs": 10}, headers)
            assert not reply.errors, reply.errors
            if not reply.data["dataQuality"]["running"]:
                return dict(reply.data["dataQuality"])
            await asyncio.sleep(0.1)


async def test_the_quality_page_its_trend_and_the_records_to_fix_first(
    demo_systems: DemoSystems, demo_world: DemoWorld, tmp_path: Path
) -> None:
    # A sales database of the test's own, seeded from the world: values get broken below.
    sales_db = tmp_path / "sales.db"
    await seed_sales_db(f"sqlite+aiosqlite:///{sales_db}", demo_world)
    overrides = {"sources.sales.dsn": f"sqlite+aiosqlite:///{sales_db}"}
    customers = demo_world.sales.customers
    bad_email, bad_phone = "no-at-sign.example", "call me 555"
    with sqlite3.connect(sales_db) as db:
        db.execute("UPDATE crm_customers SET email = ? WHERE id = ?", (bad_email, customers[0].id))
        db.execute("UPDATE crm_customers SET phone = ? WHERE id = ?", (bad_phone, customers[0].id))
        db.execute("UPDATE crm_customers SET phone = ? WHERE id = ?", (bad_phone, customers[1].id))
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        steward = gateway.as_role("steward", "sales", subject="stella")
        empty = await finished(gateway, steward)
        started = await gateway.query(RUN, None, steward)
        again = await gateway.query(RUN, None, steward)  # one run at a time
        first = await finished(gateway, steward)
        assert (await gateway.query(RUN, None, steward)).data == {"startDataQualityRun": True}
        second = await finished(gateway, gateway.as_role("security", subject="sam"))
        await gateway.gateway.access_log.flush()
        sink = gateway.gateway.config.audit_sink
        assert isinstance(sink, JsonlSink)
        logged = sink.path.read_text()
    assert empty == {"running": False, "worstRanAt": None, "latest": None, "trend": [], "worst": []}
    assert started.data == {"startDataQualityRun": True}
    assert again.data == {"startDataQualityRun": False}

    latest = first["latest"]
    systems = {s["system"]: s for s in latest["systems"]}
    assert set(systems) == {"sales", "service", "marketing"}
    sales = systems["sales"]
    assert sales["records"] == len(customers)  # every linked CRM record
    assert 0 < sales["matchRate"] <= 1 and sales["duplicates"] >= 1 and sales["error"] is None
    fields = {(f["system"], f["field"]): f for f in latest["fields"]}
    phone = fields["sales", "phone"]
    assert (phone["check"], phone["invalid"]) == ("phone", 2)
    assert phone["validity"] == round((phone["filled"] - 2) / phone["filled"], 4)
    assert fields["sales", "email"]["invalid"] == 1
    assert 0 < fields["sales", "email"]["completeness"] <= 1
    worst = {(w["system"], w["id"]): w for w in first["worst"]}
    broken = worst["sales", str(customers[0].id)]
    assert broken["failed"][:2] == ["email", "phone"] and broken["customer"].startswith("cus_")
    assert first["worst"][0] == broken  # the most failed checks first
    assert worst["sales", str(customers[1].id)]["failed"][0] == "phone"
    assert len(first["trend"]) == 1 and first["trend"][0]["ranAt"] == latest["ranAt"]
    assert len(second["trend"]) == 2  # the trend across runs, oldest first
    assert second["trend"][0]["ranAt"] <= second["trend"][1]["ranAt"]
    trend_sales = {s["system"]: s for s in second["trend"][1]["systems"]}["sales"]
    assert trend_sales["matchRate"] == sales["matchRate"]

    # Never a value: neither the broken ones nor anyone's email or phone.
    for page in (first, second):
        body = orjson.dumps(page).decode()
        assert bad_email not in body and bad_phone not in body
        for person in demo_world.persons[:200]:
            assert person.email not in body and person.phone not in body
    # Each look and each run is on the record, by its view only.
    assert '"view":"quality"' in logged and '"view":"quality-run"' in logged
    assert bad_email not in logged and bad_phone not in logged


async def test_only_stewards_and_security_see_data_quality(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        for role in ("sales", "sales_manager", "service", "marketing", "privacy"):
            headers = gateway.as_role(role)
            reply = await gateway.query(QUALITY, {"runs": 3}, headers)
            assert reply.data == {"dataQuality": None}, role
            assert reply.errors[0]["extensions"] == {"code": "FORBIDDEN", "policy": "quality.read"}
            run = await gateway.query(RUN, None, headers)
            assert run.data == {"startDataQualityRun": None}, role
        assert not gateway.gateway.quality_runs.running  # nothing was started
        status, page = await gateway.get("/console", {"accept-language": "zh-CN"})
    assert status == 200 and "数据质量" in page and 'data-view="quality"' in page


async def test_one_run_at_a_time_whoever_asks(
    demo_systems: DemoSystems, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """quality_on_sync's run, the page's and a caller's of `Gateway.quality()` are one run
    while it lasts: the page is told none started, the caller gets that run's report, and
    one run is stored."""
    from gateway.quality import quality_report

    gate = asyncio.Event()
    measured = 0

    async def gated_report(*args: Any, **options: Any) -> Any:
        nonlocal measured
        measured += 1
        await gate.wait()
        return await quality_report(*args, **options)

    # Gated where the gateway calls it: every run of the test's waits for the gate.
    monkeypatch.setattr("gateway.app.quality_report", gated_report)
    overrides = {"identity.quality_on_sync": True}
    async with running_gateway(demo_systems, tmp_path, overrides) as running:
        steward = running.as_role("steward", "sales", subject="stella")
        runs = running.gateway.quality_runs
        during = await running.query(QUALITY, {"runs": 10}, steward)
        refused = await running.query(RUN, None, steward)
        joined = asyncio.create_task(running.gateway.quality(worst=5))
        await asyncio.sleep(0)
        gate.set()
        report = await joined
        stored = await running.gateway.store.quality_runs()
        page = await finished(running, steward)
    assert during.data["dataQuality"]["running"] is True
    assert refused.data == {"startDataQualityRun": False}
    assert measured == 1 and len(stored) == 1
    assert report is runs.latest and stored[0].ran_at == report.ran_at
    assert page["latest"]["ranAt"] == page["trend"][-1]["ranAt"]
