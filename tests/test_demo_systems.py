"""Running the demo systems: endpoints, systems left down, latency settings, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from demo.systems import DemoSystems, main, unused_port

ROOT = Path(__file__).resolve().parent.parent


async def test_endpoints_name_each_system(demo_systems: DemoSystems) -> None:
    endpoints = demo_systems.endpoints
    assert set(endpoints) == {"sales", "service", "marketing"}
    assert endpoints["sales"]["dsn"].startswith("sqlite+aiosqlite:///")
    assert endpoints["sales"]["dsn"].endswith("/sales.db")
    assert endpoints["service"]["url"].startswith("http://127.0.0.1:")
    assert endpoints["marketing"]["url"].startswith("http://127.0.0.1:")
    assert endpoints["marketing"]["url"].endswith("/graphql")
    assert endpoints["service"]["url"] != demo_systems.admin_url("marketing")


async def test_down_systems_point_at_nothing(
    tmp_path: Path, demo_http: aiohttp.ClientSession
) -> None:
    async with DemoSystems(
        tmp_path, customers=20, down={"sales", "service"}, system_latency={"marketing": 5}
    ) as systems:
        with pytest.raises(aiohttp.ClientConnectionError):
            await demo_http.get(systems.endpoints["service"]["url"] + "/healthz")
        engine = create_async_engine(systems.endpoints["sales"]["dsn"])
        try:
            with pytest.raises(Exception, match="unable to open database file"):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
        async with demo_http.get(systems.admin_url("marketing") + "/_admin/stats") as resp:
            assert (await resp.json())["latency_ms"] == 5
    assert not (tmp_path / "sales.db").exists()


async def test_a_given_dsn_is_seeded_instead_of_the_default(
    tmp_path: Path, demo_http: aiohttp.ClientSession
) -> None:
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'elsewhere.db'}"
    async with DemoSystems(tmp_path, customers=15, sales_dsn=dsn, latency_ms=7) as systems:
        assert systems.endpoints["sales"] == {"dsn": dsn}
        engine = create_async_engine(dsn)
        async with engine.connect() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM crm_customers"))).scalar_one()
        await engine.dispose()
        assert count == len(systems.world.sales.customers)
        for system in ("service", "marketing"):
            async with demo_http.get(systems.admin_url(system) + "/_admin/stats") as resp:
                assert (await resp.json())["latency_ms"] == 7


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown system"):
        DemoSystems(Path("."), down={"billing"})
    with pytest.raises(ValueError, match="unknown system"):
        DemoSystems(Path("."), system_latency={"crm": 5})
    with pytest.raises(ValueError, match="negative"):
        DemoSystems(Path("."), latency_ms=-1)


async def _run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "demo.systems",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--data-dir" in out
    assert "--system-latency" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "--data-dir"),
        (["--data-dir", "x", "--down", "billing"], "--down"),
        (["--data-dir", "x", "--system-latency", "sales"], "NAME=MS"),
        (["--data-dir", "x", "--latency-ms", "-3"], "--latency-ms"),
        (["--data-dir", "x", "--customers", "0"], "--customers"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert needle in err


async def test_cli_failure_to_start_is_one_line(tmp_path: Path) -> None:
    bad_dsn = f"postgresql+asyncpg://postgres@127.0.0.1:{unused_port()}/test"
    code, out, err = await _run_cli(
        "--data-dir", str(tmp_path), "--customers", "5", "--sales-dsn", bad_dsn
    )
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("demo.systems: error:")


async def test_cli_prints_endpoints_serves_and_stops_on_sigterm(
    tmp_path: Path, demo_http: aiohttp.ClientSession
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "demo.systems",
        "--data-dir",
        str(tmp_path / "data"),
        "--customers",
        "30",
        "--seed",
        "3",
        "--system-latency",
        "service=4",
        "--down",
        "marketing",
        cwd=ROOT,
        env=os.environ | {"PYTHONUNBUFFERED": "0"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
        endpoints = json.loads(line)
        assert set(endpoints) == {"sales", "service", "marketing"}
        assert (tmp_path / "data" / "sales.db").exists()
        async with demo_http.get(endpoints["service"]["url"] + "/_admin/stats") as resp:
            assert (await resp.json())["latency_ms"] == 4
        async with demo_http.get(endpoints["service"]["url"] + "/healthz") as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientConnectionError):
            await demo_http.post(endpoints["marketing"]["url"], json={})
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            rest, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert rest == b""  # exactly one line on stdout
