"""Shared fixtures: the real PostgreSQL and Redis (skipped when absent, failed when CI=true),
and one running set of demo department systems for the whole session."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo.people import DemoWorld
from demo.systems import DemoSystems
from gateway.cli import main
from harness import own_database, unavailable

POSTGRES_DSN = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _require_service(name: str, host: str, port: int) -> None:
    """Skip when nothing listens on host:port; on CI (CI=true) a missing service is a failure."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        unavailable(f"{name} is not reachable on {host}:{port} ({exc})")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    _require_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_DSN


@pytest.fixture
async def fresh_postgres(postgres_dsn: str) -> AsyncIterator[str]:
    """An empty PostgreSQL database of this test's own (`own_database`)."""
    async with own_database(postgres_dsn) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def redis_url() -> str:
    _require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture(scope="session")
async def demo_systems(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoSystems]:
    """The three demo systems with the default world (seed 42, 1,000 customers), on SQLite."""
    data_dir: Path = tmp_path_factory.mktemp("demo")
    async with DemoSystems(data_dir) as systems:
        yield systems


@pytest.fixture(scope="session")
def demo_world(demo_systems: DemoSystems) -> DemoWorld:
    return demo_systems.world


@pytest.fixture(scope="session")
async def demo_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
async def fresh_demo_systems(
    demo_systems: DemoSystems, demo_http: aiohttp.ClientSession
) -> DemoSystems:
    """`demo_systems` with every HTTP system's counts and faults reset before the test."""
    for system in ("service", "marketing"):
        async with demo_http.post(demo_systems.admin_url(system) + "/_admin/reset") as resp:
            assert resp.status == 200
    return demo_systems


# --- the gateway over the demo systems (tests/harness.py) ---------------------------

from harness import RunningGateway, SourceAdmin, running_gateway  # noqa: E402


@pytest.fixture(scope="session")
async def gateway(
    demo_systems: DemoSystems, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    """One gateway over the demo systems, shared by the tests that do not change it."""
    async with running_gateway(demo_systems, tmp_path_factory.mktemp("gateway")) as running:
        yield running


@pytest.fixture
async def sources(
    demo_systems: DemoSystems, demo_http: aiohttp.ClientSession
) -> AsyncIterator[SourceAdmin]:
    """Counts and faults of the demo HTTP systems, reset before and after each test."""
    admin = SourceAdmin(demo_systems, demo_http)
    await admin.reset()
    yield admin
    await admin.reset()


@pytest.fixture
def c360(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """`c360 …` in process (on a thread: it runs its own event loop); (exit, out, err)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    async def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(args))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    root.handlers[:], root.level = handlers, level
