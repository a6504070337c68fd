"""`c360 demo`: the three demo department systems in their own process, and the gateway
in front of them, configured from `gateway/demo.toml`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from demo.ca import DemoCertificates
from gateway.config import ConfigError, set_path
from gateway.tls import pin_postgres

DEMO_TEMPLATE = Path(__file__).with_name("demo.toml")
SYSTEMS = ("sales", "service", "marketing")


@dataclass
class DemoOptions:
    data_dir: Path
    latency_ms: int = 0
    system_latency: Mapping[str, int] = field(default_factory=dict)
    down: tuple[str, ...] = ()
    sales_dsn: str | None = None
    seed: int = 42
    customers: int = 1000
    tls_dir: Path | None = None  # HTTPS with these certificates (demo/ca.py's DemoCA)


@dataclass
class DemoSystemsProcess:
    process: asyncio.subprocess.Process
    endpoints: dict[str, dict[str, str]]

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_demo_systems(options: DemoOptions) -> DemoSystemsProcess:
    """Start `python -m demo.systems` and wait for the line announcing its endpoints."""
    for name in options.down:
        if name not in SYSTEMS:
            raise ConfigError(f"--down: unknown system '{name}' (known: {', '.join(SYSTEMS)})")
    args = [
        "-m",
        "demo.systems",
        "--data-dir",
        str(options.data_dir),
        "--seed",
        str(options.seed),
        "--customers",
        str(options.customers),
        "--latency-ms",
        str(options.latency_ms),
    ]
    for name, ms in options.system_latency.items():
        args += ["--system-latency", f"{name}={ms}"]
    for name in options.down:
        args += ["--down", name]
    if options.sales_dsn:
        args += ["--sales-dsn", options.sales_dsn]
    if options.tls_dir is not None:
        args += ["--tls-dir", str(options.tls_dir)]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        endpoints = orjson.loads(line)
    except (TimeoutError, orjson.JSONDecodeError) as error:
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise ConfigError(f"demo systems: did not start (exit {process.returncode})") from error
    return DemoSystemsProcess(process, endpoints)


def demo_config(
    endpoints: Mapping[str, Mapping[str, str]], *, port: int, overrides: Mapping[str, Any] = {}
) -> dict[str, Any]:
    """The demo template with the running systems' addresses filled in."""
    data = tomllib.loads(DEMO_TEMPLATE.read_text(encoding="utf-8"))
    set_path(data, "server.port", port)
    set_path(data, "identity.sync_on_start", True)
    set_path(data, "sources.sales.dsn", endpoints["sales"]["dsn"])
    set_path(data, "sources.service.base_url", endpoints["service"]["url"])
    set_path(data, "sources.marketing.url", endpoints["marketing"]["url"])
    for path, value in overrides.items():
        set_path(data, path, value)
    return data


async def demo_tls_overrides(
    certificates: DemoCertificates, endpoints: Mapping[str, Mapping[str, str]], port: int
) -> tuple[dict[str, Any], list[str]]:
    """`c360 demo --tls`: the config keys that put every hop on TLS (the gateway's own
    certificate, the CA and client certificate towards the systems, a pinned certificate
    for a PostgreSQL sales DB that offers TLS), and the lines to print about it."""
    ca = certificates.ca_file
    overrides: dict[str, Any] = {
        **certificates.server_overrides(),
        **certificates.source_overrides(),
    }
    notes = [
        f"TLS on every hop; certificates from a throwaway CA in {certificates.ca.directory}",
        f"  CA file:   {ca}",
        f"  check:     curl --cacert {ca} https://127.0.0.1:{port}/healthz",
        "  (add --cacert to the curl above)",
    ]
    dsn = endpoints["sales"]["dsn"]
    if dsn.startswith("postgresql"):
        url = make_url(dsn)
        table, note = await pin_postgres(
            url.host or "127.0.0.1", url.port or 5432, certificates.ca.directory
        )
        if table is not None:
            overrides["sources.sales.tls"] = table
        notes.append("  " + note)
    return overrides, notes


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the demo's generated config (tables of scalars and tables)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n\n" if lines else "")
    for key, value in tables.items():
        out += to_toml(value, f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key))
    return out


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else orjson.dumps(key).decode()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date | dt.time):  # TOML has date and time literals
        return value.isoformat()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return orjson.dumps(str(value)).decode()


@contextlib.asynccontextmanager
async def demo_systems(options: DemoOptions) -> AsyncIterator[DemoSystemsProcess]:
    systems = await start_demo_systems(options)
    try:
        yield systems
    finally:
        await systems.stop()
