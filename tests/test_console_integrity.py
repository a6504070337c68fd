"""The console's integrity page over HTTP: the latest signed checkpoint (size, roots, time,
signer), whether its signature verifies with the configured key, and whether the log
verifies against it, naming what broke as `c360 audit verify --checkpoint` does; the
check kept per (checkpoint, log size); security only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from demo.people import DemoWorld
from demo.systems import DemoSystems
from gateway.audit import checkpoint as checkpoints
from gateway.audit.commands import write_checkpoint
from gateway.audit.sinks import JsonlSink
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


@pytest.fixture
async def fresh_postgres(postgres_dsn: str) -> AsyncIterator[str]:
    """A database of its own: a checkpoint of the log covers every chain in it."""
    name = "c360_integrity_" + uuid.uuid4().hex[:10]
    admin = create_async_engine(postgres_dsn, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f"CREATE DATABASE {name}"))
        yield postgres_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await admin.dispose()


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
