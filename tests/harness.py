"""Running gateways over HTTP against the demo systems, for the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.types import ASGIApp

from demo.systems import DemoSystems
from gateway.app import Gateway, build_app
from gateway.audit.log import AccessLog
from gateway.audit.settings import parse_audit
from gateway.auth import AuthConfig, mint_token
from gateway.config import parse_config
from gateway.demo import demo_config, to_toml
from gateway.serving import bind, start_server
from gateway.telemetry import Telemetry
from gateway.tls import ServerTLS


@dataclass
class GraphQLReply:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]

    @property
    def data(self) -> Any:
        return self.body.get("data")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.body.get("errors") or [])

    def codes(self) -> list[str]:
        return [error.get("extensions", {}).get("code") for error in self.errors]


@dataclass
class RunningGateway:
    url: str
    gateway: Gateway
    http: aiohttp.ClientSession

    def token(
        self,
        subject: str = "alice",
        roles: Sequence[str] = ("sales",),
        purposes: Sequence[str] = ("sales",),
    ) -> str:
        return mint_token(self.gateway.config.auth, subject, list(roles), list(purposes))

    def as_role(
        self, role: str, purpose: str | None = None, subject: str = "tester"
    ) -> dict[str, str]:
        """Headers for a request as one role (purpose defaults to the role's own)."""
        purpose = purpose or {"security": "audit", "sales_manager": "sales"}.get(role, role)
        return {"authorization": "Bearer " + self.token(subject, [role], [purpose])}

    async def post(
        self, body: bytes | str, headers: Mapping[str, str] | None = None
    ) -> GraphQLReply:
        """POST /graphql; as role `sales` unless the headers say otherwise (or carry
        `authorization: ""` for no credentials at all)."""
        headers = {
            "content-type": "application/json",
            "authorization": "Bearer " + self.token(),
            **(headers or {}),
        }
        if not headers["authorization"]:
            del headers["authorization"]
        async with self.http.post(self.url + "/graphql", data=body, headers=headers) as response:
            raw = await response.read()
            headers = {k.lower(): v for k, v in response.headers.items()}
            return GraphQLReply(response.status, headers, orjson.loads(raw))

    async def query(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> GraphQLReply:
        payload = {"query": query, "variables": dict(variables or {})}
        return await self.post(orjson.dumps(payload), headers)

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
        async with self.http.get(self.url + path, headers=headers) as response:
            return response.status, await response.text()

    def source_calls(self, source: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(
            "c360_source_requests_total", {"source": source}
        )
        return value or 0.0


def gateway_config(
    systems: DemoSystems, state_dir: Path, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The demo configuration over these systems. The cache, retries and the circuit
    breaker are off unless a test turns them on, so tests see every call reach the
    systems."""
    return demo_config(
        systems.endpoints,
        port=0,
        overrides={
            "identity.dsn": f"sqlite+aiosqlite:///{state_dir}/identity.db",
            "cache.enabled": False,
            # Tests count calls: no retries, and a breaker that only its own tests trip.
            "resilience.retries": 0,
            "resilience.breaker_failures": 1000,
            **(overrides or {}),
        },
    )


@contextlib.asynccontextmanager
async def running_gateway(
    systems: DemoSystems,
    state_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    server_tls: ServerTLS | None = None,
    client_ssl: ssl.SSLContext | None = None,
    telemetry: Telemetry | None = None,
    around: Callable[[ASGIApp], ASGIApp] | None = None,
) -> AsyncIterator[RunningGateway]:
    """A gateway over the demo systems, served by uvicorn on an ephemeral port; over
    HTTPS with `server_tls`, reached by a client that trusts what `client_ssl` does;
    `around` wraps the app (to watch what it sends)."""
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    data = gateway_config(systems, state_dir, overrides)
    config_path = state_dir / "c360.toml"
    # Written out so that reload() (SIGHUP) has a file to re-read, as in production.
    await asyncio.to_thread(config_path.write_text, to_toml(data), "utf-8")
    config = parse_config(data, base_dir=state_dir)
    gateway = Gateway(config, config_path, telemetry)
    app: ASGIApp = build_app(config, gateway)
    if around is not None:
        app = around(app)
    server = await start_server(app, bind("127.0.0.1", 0), server_tls)
    # Idle connections are dropped before uvicorn's keep-alive timeout (5 s) closes them:
    # a session-wide gateway sits idle while other tests run, and reusing a connection
    # the server is closing at that moment is the classic keep-alive race (ECONNRESET).
    connector = aiohttp.TCPConnector(
        ssl=client_ssl if client_ssl is not None else True, keepalive_timeout=2.0
    )
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), connector=connector
        ) as http:
            yield RunningGateway(server.url, gateway, http)
    finally:
        await server.stop()


class SourceAdmin:
    """The demo HTTP systems' admin hooks: request counts and injected faults."""

    def __init__(self, systems: DemoSystems, http: aiohttp.ClientSession) -> None:
        self.systems = systems
        self.http = http

    async def stats(self, system: str) -> dict[str, Any]:
        async with self.http.get(self.systems.admin_url(system) + "/_admin/stats") as response:
            return dict(await response.json())

    async def calls(self, system: str, route: str | None = None) -> int:
        """Requests the system answered since the last reset, all or on one route
        (e.g. "GET /api/v2/tickets")."""
        stats = await self.stats(system)
        return int(stats["total"] if route is None else stats["requests"].get(route, 0))

    async def fault(self, system: str, mode: str, latency_ms: int | None = None) -> None:
        body: dict[str, Any] = {"mode": mode}
        if latency_ms is not None:
            body["latency_ms"] = latency_ms
        async with self.http.post(
            self.systems.admin_url(system) + "/_admin/fault", json=body
        ) as response:
            assert response.status == 200, await response.text()

    async def reset(self) -> None:
        for system in ("service", "marketing"):
            async with self.http.post(self.systems.admin_url(system) + "/_admin/reset") as resp:
                assert resp.status == 200


def write_config(
    systems: DemoSystems, state_dir: Path, overrides: Mapping[str, Any] | None = None
) -> tuple[Path, dict[str, Any]]:
    """A c360.toml over the demo systems (port 0), for a `c360` process to read."""
    data = gateway_config(systems, state_dir, {"server.port": 0, **(overrides or {})})
    path = state_dir / "c360.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path, data


def sales_token(data: Mapping[str, Any]) -> str:
    return mint_token(AuthConfig.parse(data["auth"]), "alice", ["sales"], ["sales"])


async def start_serve(config_path: Path, *flags: str) -> tuple[asyncio.subprocess.Process, str]:
    """`c360 serve --config … [flags]` as its own process; returns once it logs its URL. Its
    log is drained in the background, so a chatty gateway never blocks on a full pipe."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config_path),
        *flags,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    async with asyncio.timeout(60):
        while True:
            line = await process.stderr.readline()
            assert line, "the gateway exited before serving"
            entry = orjson.loads(line)
            if entry.get("msg") == "serving":
                url = str(entry["url"])
                break
    _drains.add(asyncio.create_task(_drain(process.stderr)))
    return process, url


_drains: set[asyncio.Task[None]] = set()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


@dataclass
class Load:
    """Clients posting one query in a loop until `stop`: how many got a 200."""

    url: str
    token: str
    body: bytes
    answered: int = 0

    async def client(self, stop: asyncio.Event) -> None:
        headers = {"authorization": f"Bearer {self.token}", "content-type": "application/json"}
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                try:
                    async with http.post(
                        self.url + "/graphql", data=self.body, headers=headers
                    ) as reply:
                        await reply.read()
                        self.answered += reply.status == 200
                except aiohttp.ClientError:
                    return  # the server went away: that is what these tests do to it


@contextlib.asynccontextmanager
async def own_database(postgres_dsn: str, prefix: str = "c360_test") -> AsyncIterator[str]:
    """A PostgreSQL database of the caller's own (the shared `test` database holds other
    tests' and runs' rows), dropped afterwards; its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(postgres_dsn, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f"CREATE DATABASE {name}"))
        yield postgres_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await admin.dispose()


def unavailable(reason: str) -> NoReturn:
    """What a test needs is not on this machine: skip, with the reason; on CI (CI=true)
    every test must run, so fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires it")
    pytest.skip(reason)


def node_and_npm() -> tuple[str, str]:
    """The node and npm executables, for the test systems served by Node packages."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        unavailable("node and npm are not installed")
    return node, npm


async def write_records(
    tmp_path: Path, audit: dict[str, Any], records: Sequence[dict[str, Any]]
) -> AccessLog:
    """Records through the real writer (sealed, written, checkpointed when configured),
    a batch each, as requests come."""
    settings, sink = parse_audit(audit, tmp_path)
    access_log = AccessLog(settings, sink)
    await access_log.start()
    for item in records:
        access_log.record(item)
        await access_log.flush()
    await access_log.stop()
    return access_log
