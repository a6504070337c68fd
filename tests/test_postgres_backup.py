"""Backup and restore the PostgreSQL way (docs/operations.md "Backup and restore"): c360's tables
(`c360_*`: the crosswalk and the access log) dumped with pg_dump, restored with
pg_restore into a fresh database, and a gateway on the restored crosswalk serves the same
CUIDs for the same people."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from demo.people import DemoWorld
from demo.systems import DemoSystems
from harness import RunningGateway, own_database, running_gateway, unavailable

BY_EMAIL = "query($e: String!) { customerByEmail(email: $e) { id } }"


@pytest.fixture
def pg_tools() -> dict[str, str]:
    """pg_dump, pg_restore and psql of the machine."""
    found = {name: shutil.which(name) for name in ("pg_dump", "pg_restore", "psql")}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        unavailable(f"{', '.join(missing)} not installed")
    return {name: str(path) for name, path in found.items()}


@pytest.fixture
async def databases(postgres_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """Two databases of this test's own: the one backed up, and a fresh one to restore."""
    async with (
        own_database(postgres_dsn, "c360_backup") as backed_up,
        own_database(postgres_dsn, "c360_restored") as restored,
    ):
        yield backed_up, restored


def _libpq(dsn: str) -> str:
    """The SQLAlchemy DSN as the PostgreSQL tools take it."""
    return dsn.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (argv[0], out.decode(), err.decode())
    return out.decode()


async def _cuids(gateway: RunningGateway, emails: list[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for email in emails:
        reply = await gateway.query(BY_EMAIL, {"e": email})
        assert not reply.errors, reply.errors
        customer = reply.data["customerByEmail"]
        found[email] = customer["id"] if customer else None
    return found


async def _access_requests(dsn: str) -> set[str]:
    engine = create_async_engine(dsn)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT request_id FROM c360_access_log"))
            return {str(row[0]) for row in rows}
    finally:
        await engine.dispose()


@pytest.mark.parametrize("form", ["custom", "plain"])
async def test_a_pg_dump_restored_into_a_fresh_database_serves_the_same_cuids(
    form: str,
    pg_tools: dict[str, str],
    demo_systems: DemoSystems,
    demo_world: DemoWorld,
    databases: tuple[str, str],
    tmp_path: Path,
) -> None:
    backed_up, restored = databases
    people = [p for p in demo_world.persons if p.is_customer]
    emails = [p.email for p in people[:25]]
    emails += [p.email for p in people if len(p.sales_ids) > 1][:3]  # people held twice
    emails += [p.email for p in demo_world.persons if not p.is_customer][:3]  # walk-ins

    def settings(dsn: str, sync: bool) -> dict[str, object]:
        return {
            "identity.dsn": dsn,
            "identity.sync_on_start": sync,
            "audit.sink": "postgresql",
            "audit.dsn": dsn,
        }

    async with running_gateway(
        demo_systems, tmp_path / "before", settings(backed_up, True)
    ) as gateway:
        before = await _cuids(gateway, emails)
        links_before = dict(gateway.gateway.identity.by_record)
        first_run = await gateway.gateway.quality()  # stored, for the trend
    logged = await _access_requests(backed_up)  # the gateway flushed its log as it stopped
    assert logged and all(before.values())

    dump = tmp_path / f"c360.{form}"
    where = _libpq(backed_up)
    dumped = ["--no-owner"] if form == "plain" else []  # pg_restore says it at restore
    await _run(
        pg_tools["pg_dump"], f"--format={form}", *dumped, f"--file={dump}", "--table=c360_*", where
    )
    if form == "custom":
        await _run(
            pg_tools["pg_restore"],
            "--no-owner",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={_libpq(restored)}",
            str(dump),
        )
    else:
        await _run(
            pg_tools["psql"],
            "--no-psqlrc",
            "--set=ON_ERROR_STOP=1",
            "--single-transaction",
            f"--file={dump}",
            _libpq(restored),
        )

    assert await _access_requests(restored) == logged
    config = tmp_path / "after" / "c360.toml"
    async with running_gateway(demo_systems, config.parent, settings(restored, False)) as gateway:
        assert dict(gateway.gateway.identity.by_record) == links_before
        assert await _cuids(gateway, emails) == before
        # the quality runs' trend goes on (their id sequence was restored with them)
        run = await gateway.gateway.quality()
        assert run.previous is not None and run.previous.ran_at == first_run.ran_at
        # the scan cursors came back too: a sync finds nothing new to link
        report = await gateway.gateway.sync()
        assert report.linked == 0 and not any(s.error for s in report.systems.values())
        assert dict(gateway.gateway.identity.by_record) == links_before
    # the restored log's chains verify, the records the restored gateway added included
    verified = await _run(
        sys.executable, "-m", "gateway.cli", "audit", "verify", "--config", str(config)
    )
    count = re.match(r"intact: (\d+) records", verified)
    assert count is not None and int(count[1]) >= len(logged) + len(emails), verified
