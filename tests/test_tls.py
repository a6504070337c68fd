"""TLS on every hop, with real handshakes: the demo systems behind HTTPS (the helpdesk
requiring a client certificate), a gateway over them served over HTTPS with HSTS, and what
happens when a certificate is wrong or missing. Certificates come from a test CA."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from connectors.base import ConnectorConfigError
from connectors.registry import build_connector
from connectors.tls import ClientTLS, client_context
from demo.ca import DemoCA, DemoCertificates
from demo.systems import DemoSystems
from gateway.app import Gateway
from gateway.config import ConfigError, parse_config
from gateway.logs import JsonFormatter
from gateway.tls import ServerTLS, pin_postgres, server_context
from harness import (
    RunningGateway,
    gateway_config,
    running_gateway,
    sales_token,
    start_serve,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
QUERY = "{ customers(first: 20) { edges { node { name segment tickets { subject } } } } }"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DemoCertificates:
    return DemoCertificates.create(tmp_path_factory.mktemp("tls") / "ca")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> DemoCA:
    """A CA nobody here trusts, with the same name as the real one (so only the
    signature tells them apart)."""
    return DemoCA.create(tmp_path_factory.mktemp("tls") / "other")


@pytest.fixture(scope="module")
async def tls_systems(
    certs: DemoCertificates, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DemoSystems]:
    async with DemoSystems(
        tmp_path_factory.mktemp("tls-demo"), customers=60, tls_dir=certs.ca.directory
    ) as systems:
        yield systems


@pytest.fixture(scope="module")
async def tls_gateway(
    tls_systems: DemoSystems, certs: DemoCertificates, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    """The gateway over the HTTPS systems, itself served over HTTPS."""
    async with running_gateway(
        tls_systems,
        tmp_path_factory.mktemp("tls-gateway"),
        certs.source_overrides(),
        server_tls=ServerTLS(certs.gateway.cert_file, certs.gateway.key_file),
        client_ssl=client_context(certs.ca_file),
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def misconfigured_gateway(
    tls_systems: DemoSystems,
    tls_gateway: RunningGateway,
    certs: DemoCertificates,
    other_ca: DemoCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RunningGateway]:
    """Towards the helpdesk: the right CA but no client certificate. Towards marketing:
    the wrong CA. It reads the crosswalk the good gateway built (its own sync could not
    reach two of the three systems)."""
    overrides = {
        "sources.service.tls": {"ca_file": str(certs.ca_file)},
        "sources.marketing.tls": {"ca_file": str(other_ca.ca_file)},
        "identity.dsn": tls_gateway.gateway.config.identity.dsn,
        "identity.sync_on_start": False,
    }
    async with running_gateway(
        tls_systems, tmp_path_factory.mktemp("bad-gateway"), overrides
    ) as running:
        yield running


def _sources(reply_errors: list[dict[str, Any]]) -> dict[str, str]:
    return {e["extensions"]["source"]: e["extensions"]["code"] for e in reply_errors}


def _log_lines(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as the gateway's JSON log writes it (extras included)."""
    formatter = JsonFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


# --- the happy path: every hop over TLS -------------------------------------------------


async def test_a_gateway_over_https_systems_answers_from_all_three(
    tls_systems: DemoSystems, tls_gateway: RunningGateway
) -> None:
    assert tls_systems.endpoints["service"]["url"].startswith("https://")
    assert tls_systems.endpoints["marketing"]["url"].startswith("https://")
    assert tls_gateway.url.startswith("https://")
    reply = await tls_gateway.query(QUERY)
    assert reply.status == 200 and reply.errors == []
    nodes = [edge["node"] for edge in reply.data["customers"]["edges"]]
    assert len(nodes) == 20
    # Each system answered: sales (names), marketing (segments), the helpdesk over mTLS.
    assert any(node["name"] for node in nodes) and any(node["segment"] for node in nodes)
    assert any(node["tickets"] for node in nodes)


async def test_the_gateway_serves_tls_with_hsts_on_every_response(
    tls_gateway: RunningGateway,
) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/no-such-path"):
        async with tls_gateway.http.get(tls_gateway.url + path) as response:
            assert response.headers["strict-transport-security"] == "max-age=31536000"
    reply = await tls_gateway.query("{ __typename }")
    assert reply.headers["strict-transport-security"] == "max-age=31536000"
    unauthenticated = await tls_gateway.query("{ __typename }", headers={"authorization": ""})
    assert unauthenticated.status == 401
    assert unauthenticated.headers["strict-transport-security"] == "max-age=31536000"


async def test_the_gateway_is_reachable_only_with_the_ca_and_only_over_tls(
    tls_gateway: RunningGateway,
) -> None:
    port = tls_gateway.url.rsplit(":", 1)[1]
    async with aiohttp.ClientSession() as untrusting:  # the system's trust store only
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await untrusting.get(tls_gateway.url + "/healthz")
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to the TLS port
            await untrusting.get(f"http://127.0.0.1:{port}/healthz")


async def test_old_protocols_and_weak_ciphers_are_refused(
    tls_gateway: RunningGateway, certs: DemoCertificates
) -> None:
    port = int(tls_gateway.url.rsplit(":", 1)[1])

    async def handshake(context: ssl.SSLContext) -> str:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        return str(version)

    assert await handshake(client_context(certs.ca_file)) == "TLSv1.3"
    old = ssl.create_default_context(cafile=certs.ca_file)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    cbc = ssl.create_default_context(cafile=certs.ca_file)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")
    for context in (old, cbc):
        # The server hangs up (EOF/reset); a client-side refusal would be another SSLError.
        with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):
            await handshake(context)


def test_server_and_client_contexts_have_a_modern_floor(certs: DemoCertificates) -> None:
    server = server_context(certs.gateway.cert_file, certs.gateway.key_file)
    client = client_context(certs.ca_file)
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        for cipher in context.get_ciphers():
            if cipher["protocol"] == "TLSv1.2":
                assert cipher["aead"] and cipher["kea"] in ("kx-ecdhe", "kx-dhe"), cipher
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    mtls = ServerTLS(certs.gateway.cert_file, certs.gateway.key_file, certs.ca_file).context()
    assert mtls.verify_mode == ssl.CERT_REQUIRED


def test_private_keys_are_written_for_the_owner_only(certs: DemoCertificates) -> None:
    keys = sorted(certs.ca.directory.glob("*-key.pem"))
    assert len(keys) == 6  # the CA, the gateway (server and client), three systems
    for key in keys:
        assert key.stat().st_mode & 0o777 == 0o600, key
    assert certs.ca.directory.stat().st_mode & 0o777 == 0o700


# --- what a wrong or missing certificate does -----------------------------------------


async def test_the_helpdesk_refuses_a_client_without_a_certificate(
    tls_systems: DemoSystems, certs: DemoCertificates
) -> None:
    url = tls_systems.endpoints["service"]["url"] + "/healthz"
    without = aiohttp.TCPConnector(ssl=client_context(certs.ca_file))
    async with aiohttp.ClientSession(connector=without) as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(url)
    client = certs.gateway_client
    with_cert = client_context(certs.ca_file, client.cert_file, client.key_file)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=with_cert)) as http,
        http.get(url) as response,
    ):
        assert response.status == 200


async def test_a_refused_or_unverifiable_system_is_source_unavailable_with_no_data(
    misconfigured_gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    reply = await misconfigured_gateway.query(QUERY)
    assert reply.status == 200
    assert _sources(reply.errors) == {
        "service": "SOURCE_UNAVAILABLE",
        "marketing": "SOURCE_UNAVAILABLE",
    }
    nodes = [edge["node"] for edge in reply.data["customers"]["edges"]]
    assert any(node["name"] for node in nodes)  # sales still answers
    assert all(node["tickets"] is None and node["segment"] is None for node in nodes)
    # The client learns the source's name; why is in the gateway's log only.
    raw = orjson.dumps(reply.body).decode().lower()
    assert "certificate" not in raw and "tls" not in raw
    log = _log_lines(caplog)
    assert "TLS: certificate verify failed" in log  # marketing: the wrong CA
    assert "client certificate" in log  # the helpdesk hung up on a client without one


async def test_a_wrong_ca_fails_the_connector_with_a_tls_reason(
    tls_systems: DemoSystems, certs: DemoCertificates, other_ca: DemoCA
) -> None:
    client = certs.gateway_client
    settings = {
        "kind": "graphql",
        "url": tls_systems.endpoints["marketing"]["url"],
        "tls": {
            "ca_file": str(other_ca.ca_file),
            "client_cert": str(client.cert_file),
            "client_key": str(client.key_file),
        },
        "entities": {
            "contact": {"key_field": "id", "federation_type": "Contact", "selection": "id"}
        },
    }
    connector = build_connector("marketing", settings)
    try:
        health = await connector.health()
        assert not health.ok and health.detail.startswith("TLS: certificate verify failed")
        with pytest.raises(Exception, match="TLS: certificate verify failed"):
            await connector.fetch("contact", ["MC-000001"])
    finally:
        await connector.close()
    settings["tls"] = {"ca_file": str(certs.ca_file)}
    connector = build_connector("marketing", settings)
    try:
        assert (await connector.health()).ok
    finally:
        await connector.close()


# --- start-up rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "key", "value"),
    [
        ("service", "base_url", "http://helpdesk.internal.example"),
        ("marketing", "url", "http://10.1.2.3:8080/graphql"),
        ("sales", "dsn", "postgresql+asyncpg://crm@crm-db.internal.example/crm"),
        ("sales", "dsn", "postgresql+asyncpg://crm@10.0.0.7/crm?ssl=require"),  # unverified
    ],
)
def test_plain_transport_to_a_remote_host_is_refused_at_start_unless_allowed(
    tls_systems: DemoSystems,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    source: str,
    key: str,
    value: str,
) -> None:
    path = f"sources.{source}.{key}"
    data = gateway_config(tls_systems, tmp_path, {path: value})
    with pytest.raises(ConfigError) as refused:
        Gateway(parse_config(data, base_dir=tmp_path))
    assert str(refused.value).startswith(f"{path}:")
    assert f"sources.{source}.allow_insecure" in str(refused.value)
    caplog.set_level(logging.WARNING)
    allowed = gateway_config(
        tls_systems, tmp_path, {path: value, f"sources.{source}.allow_insecure": True}
    )
    Gateway(parse_config(allowed, base_dir=tmp_path))  # builds; nothing is connected yet
    warning = [r for r in caplog.records if "allow_insecure" in r.getMessage()]
    assert warning and warning[0].levelno == logging.WARNING


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        (
            {"kind": "rest", "base_url": "http://127.0.0.1:1", "tls": {"ca_file": "ca.pem"}},
            "sources.x.tls",
        ),
        ({"kind": "rest", "base_url": "ftp://h"}, "sources.x.base_url"),
        (
            {"kind": "rest", "base_url": "https://h", "tls": {"ca_file": "/no/such/ca.pem"}},
            "sources.x.tls.ca_file",
        ),
        (
            {"kind": "graphql", "url": "https://h", "tls": {"client_cert": "c.pem"}},
            "sources.x.tls.client_key",
        ),
        (
            {"kind": "graphql", "url": "https://h", "tls": {"mode": "verify-ca"}},
            "sources.x.tls.mode",
        ),
        (
            {"kind": "rest", "base_url": "https://h", "allow_insecure": "yes"},
            "sources.x.allow_insecure",
        ),
        ({"kind": "sql", "dsn": "sqlite+aiosqlite://", "tls": {}}, "sources.x.tls"),
        (
            {"kind": "sql", "dsn": "postgresql+asyncpg://h/db", "tls": {"mode": "require"}},
            "sources.x.tls.mode",
        ),
    ],
)
def test_tls_settings_errors_name_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConnectorConfigError) as raised:
        build_connector("x", settings)
    assert str(raised.value).startswith(key + ":")


def test_loopback_plain_http_and_verified_postgres_need_no_opt_out() -> None:
    for settings in (
        {"kind": "rest", "base_url": "http://localhost:8101"},
        {"kind": "graphql", "url": "http://[::1]:8102/graphql"},
        {"kind": "sql", "dsn": "postgresql+asyncpg://crm@db.example/crm?ssl=verify-full"},
        {"kind": "sql", "dsn": "postgresql+asyncpg://crm@/crm?host=/var/run/postgresql"},
        {"kind": "sql", "dsn": "postgresql+asyncpg://crm@db.example/crm", "tls": {}},
    ):
        build_connector("x", settings)


# --- the gateway's own certificate: config, flags, mTLS -----------------------------------


def test_server_tls_settings_name_the_key(certs: DemoCertificates, tmp_path: Path) -> None:
    gateway = certs.gateway
    assert ServerTLS.from_server_table({}, tmp_path) is None
    with pytest.raises(ConfigError, match=r"^server\.tls_key: required"):
        ServerTLS.from_server_table({"tls_cert": str(gateway.cert_file)}, tmp_path)
    relative = ServerTLS.from_server_table({"tls_cert": "a.pem", "tls_key": "b.pem"}, tmp_path)
    assert relative is not None and relative.cert_file == tmp_path / "a.pem"
    with pytest.raises(ConfigError, match=r"^server\.tls_cert: no file"):
        relative.context()
    swapped = ServerTLS(gateway.key_file, gateway.cert_file)
    with pytest.raises(ConfigError, match=r"^server\.tls_cert: cannot load"):
        swapped.context()
    with pytest.raises(ConfigError, match=r"^--tls-key: required"):
        ServerTLS.resolve(str(gateway.cert_file), None, {}, tmp_path)
    with pytest.raises(ConfigError, match=r"^--tls-cert: cannot load"):
        ServerTLS.resolve(str(gateway.key_file), str(gateway.cert_file), {}, None)
    configured = {"tls_cert": "a.pem", "tls_key": "b.pem", "tls_client_ca": str(certs.ca_file)}
    flags = ServerTLS.resolve(str(gateway.cert_file), str(gateway.key_file), configured, None)
    assert flags is not None and flags.cert_file == gateway.cert_file
    assert flags.client_ca == certs.ca_file  # mTLS stays configured when flags name the pair


async def test_the_gateway_can_require_client_certificates(
    tls_systems: DemoSystems, certs: DemoCertificates, tmp_path: Path
) -> None:
    client = certs.gateway_client
    mtls = ServerTLS(certs.gateway.cert_file, certs.gateway.key_file, certs.ca_file)
    with_cert = client_context(certs.ca_file, client.cert_file, client.key_file)
    async with running_gateway(
        tls_systems, tmp_path, certs.source_overrides(), server_tls=mtls, client_ssl=with_cert
    ) as running:
        status, _ = await running.get("/healthz")
        assert status == 200
        without = aiohttp.TCPConnector(ssl=client_context(certs.ca_file))
        async with aiohttp.ClientSession(connector=without) as http:
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(running.url + "/healthz")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()


async def test_c360_serve_terminates_tls_with_the_flags(
    tls_systems: DemoSystems, certs: DemoCertificates, tmp_path: Path
) -> None:
    config_path, data = write_config(tls_systems, tmp_path, certs.source_overrides())
    gateway = certs.gateway
    process, url = await start_serve(
        config_path, "--tls-cert", str(gateway.cert_file), "--tls-key", str(gateway.key_file)
    )
    try:
        assert url.startswith("https://")
        token = sales_token(data)
        connector = aiohttp.TCPConnector(ssl=client_context(certs.ca_file))
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.get(url + "/healthz") as response:
                assert response.status == 200
                assert response.headers["strict-transport-security"] == "max-age=31536000"
            async with http.post(
                url + "/graphql",
                json={"query": QUERY},
                headers={"authorization": f"Bearer {token}"},
            ) as response:
                body = await response.json()
        assert "errors" not in body and len(body["data"]["customers"]["edges"]) == 20
    finally:
        await _stop(process)


def test_c360_serve_refuses_a_remote_plain_http_source_in_one_line(
    tls_systems: DemoSystems, tmp_path: Path
) -> None:
    config_path, _ = write_config(
        tls_systems, tmp_path, {"sources.service.base_url": "http://helpdesk.example:80"}
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("c360: sources.service.base_url: plain http://")
    assert result.stderr.strip().count("\n") == 0


async def test_c360_serve_terminates_mtls_from_the_config(
    tls_systems: DemoSystems, certs: DemoCertificates, tmp_path: Path
) -> None:
    overrides = {
        **certs.source_overrides(),
        "server.tls_cert": str(certs.gateway.cert_file),
        "server.tls_key": str(certs.gateway.key_file),
        "server.tls_client_ca": str(certs.ca_file),
    }
    config_path, _ = write_config(tls_systems, tmp_path, overrides)
    process, url = await start_serve(config_path)
    try:
        client = certs.gateway_client
        with_cert = client_context(certs.ca_file, client.cert_file, client.key_file)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=with_cert)) as http,
            http.get(url + "/healthz") as response,
        ):
            assert response.status == 200
        without = aiohttp.TCPConnector(ssl=client_context(certs.ca_file))
        async with aiohttp.ClientSession(connector=without) as http:
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(url + "/healthz")
    finally:
        await _stop(process)


async def test_c360_demo_tls_runs_every_hop_over_https(tmp_path: Path) -> None:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "demo",
        "--tls",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None and process.stderr is not None
    printed: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not printed or not printed[-1].startswith("Tokens"):
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise AssertionError((await process.stderr.read()).decode())
                printed.append(line.rstrip("\n"))
        text = "\n".join(printed)
        ca_file = tmp_path / "tls" / "ca.pem"
        assert f"CA file:   {ca_file}" in text
        assert f"curl --cacert {ca_file} https://127.0.0.1:{port}/healthz" in text
        assert "service    https://" in text and "marketing  https://" in text
        curl = shutil.which("curl")
        if curl is not None:  # exactly what the banner tells a person to run
            result = await asyncio.create_subprocess_exec(
                curl,
                "-sS",
                "--cacert",
                str(ca_file),
                f"https://127.0.0.1:{port}/healthz",
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await result.communicate()
            assert orjson.loads(out) == {"status": "ok"}
        connector = aiohttp.TCPConnector(ssl=client_context(ca_file))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(f"https://127.0.0.1:{port}/readyz") as response,
        ):
            ready = await response.json()
            assert response.status == 200, ready
            assert response.headers["strict-transport-security"] == "max-age=31536000"
        assert all(source["ok"] for source in ready["sources"].values())
        written = (tmp_path / "c360.toml").read_text(encoding="utf-8")
        assert "[sources.service.tls]" in written and "tls_cert" in written
        assert "PRIVATE KEY" not in text
    finally:
        await _stop(process)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- PostgreSQL on this machine ---------------------------------------------------------


@pytest.mark.postgres
async def test_a_postgres_without_tls_is_an_error_never_a_plain_fallback(
    postgres_dsn: str, certs: DemoCertificates
) -> None:
    """The machine's PostgreSQL runs with ssl = off: a source that asks for TLS fails
    with a TLS reason instead of quietly talking in clear."""
    settings = {
        "kind": "sql",
        "dsn": postgres_dsn,
        "tls": {"ca_file": str(certs.ca_file)},
        "entities": {"one": {"key_field": "id", "query": "SELECT 1 AS id WHERE 1 IN :keys"}},
    }
    connector = build_connector("sales", settings)
    try:
        health = await connector.health()
    finally:
        await connector.close()
    if health.ok:
        pytest.skip("this PostgreSQL offers TLS (and its certificate verified)")
    assert health.detail.startswith("TLS: "), health.detail
    table, note = await pin_postgres("127.0.0.1", 5432, certs.ca.directory)
    assert table is None and "does not offer TLS" in note


# --- nothing secret leaks ----------------------------------------------------------------


async def test_no_private_key_material_in_logs_or_responses(
    tls_gateway: RunningGateway,
    misconfigured_gateway: RunningGateway,
    certs: DemoCertificates,
    tls_systems: DemoSystems,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for running in (tls_gateway, misconfigured_gateway):
        seen.append(orjson.dumps((await running.query(QUERY)).body).decode())
        for path in ("/readyz", "/metrics", "/healthz"):
            seen.append((await running.get(path))[1])
    # Every error message that names a key file: swapped, unreadable, mismatched.
    gateway = certs.gateway
    for attempt in (
        lambda: ServerTLS(gateway.key_file, gateway.cert_file).context(),
        lambda: ServerTLS(gateway.cert_file, certs.systems["sales"].key_file).context(),
        lambda: ClientTLS(
            "sources.x.tls", certs.ca_file, gateway.key_file, gateway.cert_file
        ).context(),
        lambda: ClientTLS("sources.x.tls", gateway.key_file).context(),
    ):
        with pytest.raises((ConfigError, ConnectorConfigError)) as raised:
            attempt()
        seen.append(str(raised.value))
    allowed = gateway_config(
        tls_systems,
        tmp_path,
        {
            "sources.service.base_url": "http://helpdesk.example",
            "sources.service.allow_insecure": True,
        },
    )
    Gateway(parse_config(allowed, base_dir=tmp_path))
    everything = "\n".join([*seen, _log_lines(caplog)])
    assert "PRIVATE KEY" not in everything
    for key_file in certs.ca.directory.glob("*-key.pem"):
        body = key_file.read_text().splitlines()[1]  # the first line of base64
        assert body not in everything
    assert "TLS: certificate verify failed" in everything  # the failures' logs were seen


async def test_the_served_certificate_reloads_without_a_restart(tmp_path: Path) -> None:
    """Issue 10: every secret rotates without a restart, the TLS key included: replace the
    files in place, SIGHUP (here: reload_tls), and new connections get the new one."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from demo.ca import DemoCA
    from gateway.serving import bind, start_server
    from gateway.tls import ServerTLS

    ca = DemoCA.create(tmp_path / "ca")
    first, second = ca.issue("gateway-2026"), ca.issue("gateway-2027")
    served = ServerTLS(tmp_path / "served.pem", tmp_path / "served-key.pem")
    served.cert_file.write_bytes(first.cert_file.read_bytes())
    served.key_file.write_bytes(first.key_file.read_bytes())

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", ok)])
    running = await start_server(app, bind("127.0.0.1", 0), served)
    host, port = running.url.removeprefix("https://").split(":")
    trust = ssl.create_default_context(cafile=str(ca.ca_file))

    async def presented() -> str:
        _, writer = await asyncio.open_connection(host, int(port), ssl=trust)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        from cryptography import x509

        return x509.load_der_x509_certificate(der).subject.rfc4514_string()

    try:
        assert await presented() == "CN=gateway-2026"
        served.key_file.write_bytes(b"not a key")  # a bad pair is refused ...
        served.cert_file.write_bytes(second.cert_file.read_bytes())
        assert not running.reload_tls()
        assert await presented() == "CN=gateway-2026"  # ... and nothing changes
        served.key_file.write_bytes(second.key_file.read_bytes())
        assert running.reload_tls()
        assert await presented() == "CN=gateway-2027"
    finally:
        await running.stop()
