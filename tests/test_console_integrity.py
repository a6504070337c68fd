"""The console's integrity page over HTTP: the latest signed checkpoint (size, roots, time,
signer), whether its signature verifies with the configured key, and whether the log
verifies against it, naming what broke as `c360 audit verify --checkpoint` does; the
check kept per (checkpoint, log size); security only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from demo.console_seed import seed_log
from demo.people import DemoWorld
from demo.systems import DemoSystems
from gateway.audit import checkpoint as checkpoints
from gateway.audit.commands import write_checkpoint
from gateway.audit.sinks import JsonlSink, PostgresSink
from gateway.console.integrity import IntegrityMonitor, IntegrityReport
from harness import RunningGateway, running_gateway

PAGE = """query Page($n: Int) { customers(first: $n) { edges { node { id name email phone } } } }"""
INTEGRITY = """query ConsoleIntegrity($r: Boolean!) { accessLogIntegrity(refresh: $r) {
  checking checkedAt intact records breaks { chain seq problem } checkpointsConfigured
  checkpoint { file scope timestamp keyId treeSize chains { chain size root }
    signatureValid signatureProblem logVerifies comparedAt
    findings { chain kind message fatal } } } }"""


def new_key() -> str:
    raw = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


async def settled(gateway: RunningGateway, refresh: bool) -> dict[str, Any]:
    """The integrity report once no check runs (the page asks again while one does)."""
    security = gateway.as_role("security", subject="sam")
    reply = await gateway.query(INTEGRITY, {"r": refresh}, security)
    assert not reply.errors, reply.errors
    report: dict[str, Any] = reply.data["accessLogIntegrity"]
    async with asyncio.timeout(30):
        while report["checking"] or report["intact"] is None:
            await asyncio.sleep(0.05)
            reply = await gateway.query(INTEGRITY, {"r": False}, security)
            report = reply.data["accessLogIntegrity"]
    return report


async def checkpoint_now(gateway: RunningGateway) -> None:
    """`c360 audit checkpoint` over the gateway's own log and settings."""
    await gateway.gateway.access_log.flush()
    with contextlib.redirect_stdout(io.StringIO()):
        assert await write_checkpoint(gateway.gateway.config.audit_sink, _audit(gateway), []) == 0


def _audit(gateway: RunningGateway) -> Any:
    return gateway.gateway.access_log.settings


async def test_the_latest_checkpoint_its_signer_and_the_log_against_it(
    demo_systems: DemoSystems, tmp_path: Path, demo_world: DemoWorld
) -> None:
    key = new_key()
    overrides = {
        "audit.chain": "gw",
        "audit.checkpoint_key": key,
        "audit.checkpoint_dir": str(tmp_path / "checkpoints"),
    }
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        before = await settled(gateway, refresh=False)
        for n in (1, 2, 3):
            await gateway.query(PAGE, {"n": n})
        await checkpoint_now(gateway)
        fine = await settled(gateway, refresh=False)  # a new checkpoint: a new check
        again = await settled(gateway, refresh=False)  # same checkpoint, no check due
        await gateway.gateway.access_log.flush()
        sink = gateway.gateway.config.audit_sink
        assert isinstance(sink, JsonlSink)
        lines = sink.path.read_text().splitlines(keepends=True)
        # A record the checkpoint covers, edited: the chain and the checkpoint both see it.
        sink.path.write_text(lines[0] + lines[1].replace('"ok"', '"error"') + "".join(lines[2:]))
        broken = await settled(gateway, refresh=True)
        # A checkpoint signed by a key the gateway does not hold: not to be trusted.
        stranger = checkpoints.make(
            {"gw": {"size": 1, "root": "00", "frontier": []}},
            "log",
            "elsewhere",
            checkpoints.CheckpointSettings(
                keys=(("cp9", base64.b64decode(new_key())),), directory=tmp_path
            ),
            timestamp="2999-01-01T00:00:00.000Z",
        )
        checkpoints.store(stranger, _audit(gateway).checkpoints)
        forged = await settled(gateway, refresh=False)
        status, page = await gateway.get("/console")
    key_id = checkpoints.key_id_of(
        Ed25519PrivateKey.from_private_bytes(base64.b64decode(key)).public_key()
    )
    assert before["checkpointsConfigured"] is True and before["checkpoint"] is None

    cp = fine["checkpoint"]
    assert cp["keyId"] == key_id and cp["scope"] == "log" and cp["signatureValid"] is True
    assert cp["chains"] == [
        {"chain": "gw", "size": cp["treeSize"], "root": cp["chains"][0]["root"]}
    ]
    assert cp["treeSize"] >= 5  # the pages and the console's own questions before it
    assert len(cp["chains"][0]["root"]) == 64
    assert cp["logVerifies"] is True and cp["findings"] == [] and cp["comparedAt"]
    assert fine["intact"] is True
    # Nothing new to check: the kept report answers, no check was started for it.
    assert again["checkedAt"] == fine["checkedAt"] and again["checkpoint"] == cp

    assert broken["intact"] is False
    assert broken["breaks"] == [
        {"chain": "gw", "seq": 2, "problem": "content does not match its hash"}
    ]
    found = broken["checkpoint"]
    assert found["logVerifies"] is False
    assert [(f["chain"], f["kind"], f["fatal"]) for f in found["findings"]] == [
        ("gw", "broken", True)
    ]
    assert f"its first {cp['treeSize']} records do not match" in found["findings"][0]["message"]

    other = forged["checkpoint"]
    assert other["keyId"] == "cp9" and other["signatureValid"] is False
    assert "not one of audit.checkpoint_key" in other["signatureProblem"]
    assert other["logVerifies"] is None and other["findings"] == []

    assert status == 200 and 'data-view="integrity"' in page
    person = demo_world.persons[0]
    for report in (fine, broken, forged):
        text = str(report)
        assert person.email not in text and person.phone not in text


async def test_without_a_checkpoint_key_and_for_other_roles(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        report = await settled(gateway, refresh=True)
        refusals = {
            role: await gateway.query(INTEGRITY, {"r": False}, gateway.as_role(role))
            for role in ("sales", "service", "marketing", "privacy", "steward")
        }
    assert report["checkpointsConfigured"] is False and report["checkpoint"] is None
    assert report["intact"] is True
    for role, reply in refusals.items():
        assert reply.data == {"accessLogIntegrity": None}, role
        assert reply.errors[0]["extensions"] == {"code": "FORBIDDEN", "policy": "audit.read"}


@pytest.mark.postgres
async def test_a_postgresql_log_against_its_checkpoint(
    demo_systems: DemoSystems, tmp_path: Path, fresh_postgres: str
) -> None:
    overrides = {
        "audit.sink": "postgresql",
        "audit.dsn": fresh_postgres,
        "audit.chain": "pg",
        "audit.checkpoint_key": new_key(),
        "audit.checkpoint_dir": str(tmp_path / "checkpoints"),
    }
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        for n in (1, 2):
            await gateway.query(PAGE, {"n": n})
        await checkpoint_now(gateway)
        report = await settled(gateway, refresh=False)
    cp = report["checkpoint"]
    assert report["intact"] is True and cp["signatureValid"] is True
    assert cp["logVerifies"] is True and cp["findings"] == []
    assert [c["chain"] for c in cp["chains"]] == ["pg"] and cp["treeSize"] >= 2


async def next_report(monitor: IntegrityMonitor, previous: IntegrityReport | None) -> Any:
    """The first report after `previous`, as a page polling the monitor would see it."""
    async with asyncio.timeout(30):
        while True:
            last = await monitor.current()
            if last is not previous:
                return last
            await asyncio.sleep(0.02)


async def test_a_quiet_log_edited_in_place_is_checked_again(tmp_path: Path) -> None:
    """A JSONL line edited to the same length changes no size, but it does change the
    file's time: the report stands for the log as it was, and the next look checks again.
    An untouched log keeps its report."""
    sink = JsonlSink(tmp_path / "access.jsonl")
    await seed_log(sink, 20, days=1)
    await sink.close()
    monitor = IntegrityMonitor(sink, max_age_s=3600, changed_after_s=0)
    first = await next_report(monitor, None)
    for _ in range(3):
        assert await monitor.current() is first and not monitor.checking
    path = sink.files()[-1]
    before = path.stat()
    lines = path.read_bytes().splitlines(keepends=True)
    at = lines[9].index(b'"ts":"') + len(b'"ts":"') + 3  # the year's last digit
    lines[9] = (
        lines[9][:at] + (b"0" if lines[9][at : at + 1] != b"0" else b"1") + lines[9][at + 1 :]
    )
    path.write_bytes(b"".join(lines))
    after = path.stat()
    assert after.st_size == before.st_size and after.st_mtime_ns != before.st_mtime_ns
    edited = await next_report(monitor, first)
    assert first.report.intact is True and first.report.records == 20
    assert edited.report.intact is False
    assert [(b.chain, b.seq) for b in edited.report.breaks][:1] == [("seed-1", 10)]


async def test_a_stale_report_is_checked_again_though_nothing_changed(tmp_path: Path) -> None:
    """However the log was changed (or whether the signal saw it), a report older than
    `max_age_s` is not shown as current for long: the next look starts a check."""
    sink = JsonlSink(tmp_path / "access.jsonl")
    await seed_log(sink, 5, days=1)
    await sink.close()
    monitor = IntegrityMonitor(sink, max_age_s=0, changed_after_s=3600)
    first = await next_report(monitor, None)
    again = await next_report(monitor, first)
    assert again.checked_at > first.checked_at and again.report.records == 5


@pytest.mark.postgres
async def test_a_postgresql_row_updated_in_place_is_checked_again(fresh_postgres: str) -> None:
    """An UPDATE keeps the table's row count: the table's statistics of rows updated see
    it, and the next look checks again (statistics arrive a little later: looked for)."""
    sink = PostgresSink(fresh_postgres)
    try:
        await seed_log(sink, 20, days=1)
        monitor = IntegrityMonitor(sink, max_age_s=3600, changed_after_s=0)
        first = await next_report(monitor, None)
        async with sink.engine.connect() as connection:
            await connection.execute(
                text(
                    "UPDATE c360_access_log SET record = jsonb_set(record, '{subject}',"
                    " '\"mallory\"') WHERE chain = 'seed-1' AND seq = 10"
                )
            )
            await connection.commit()
            await connection.execute(text("SELECT pg_stat_force_next_flush()"))
            await connection.commit()
        edited = await next_report(monitor, first)
    finally:
        await sink.close()
    assert first.report.intact is True and first.report.records == 20
    assert edited.report.intact is False
    assert [(b.chain, b.seq) for b in edited.report.breaks][:1] == [("seed-1", 10)]
