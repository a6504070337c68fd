"""PostgreSQL over verified TLS (and mTLS), against a private PostgreSQL cluster this module
starts with ssl = on and a certificate from the test CA. The machine's own PostgreSQL is
left alone (it runs with ssl = off; tests/test_tls.py covers that case).

Needs the PostgreSQL server binaries, and to run as root (the cluster runs as `postgres`)
or as `postgres`; skips with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connectors.base import SourceUnavailable
from connectors.registry import build_connector
from demo.ca import DemoCA, IssuedCertificate
from gateway.tls import pin_postgres
from harness import unavailable


@dataclass
class TlsPostgres:
    port: int
    ca: DemoCA
    client: IssuedCertificate

    @property
    def dsn(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _as_postgres() -> list[str] | None:
    """The command prefix that runs a program as the `postgres` user, if we can."""
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        return None
    if os.geteuid() == account.pw_uid:
        return []
    if os.geteuid() == 0 and shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPostgres]:
    bin_dir, prefix = _postgres_bin(), _as_postgres()
    if bin_dir is None or prefix is None:
        unavailable("needs the PostgreSQL server binaries and root or the postgres user")
    ca = DemoCA.create(tmp_path_factory.mktemp("pg-ca"))
    server = ca.issue("sales-db")
    client = ca.issue("gateway-client", client=True)
    account = pwd.getpwnam("postgres")
    # Outside pytest's root-only temp directory, so that the postgres user can reach it.
    base = Path(tempfile.mkdtemp(prefix="c360-pgtls-"))
    os.chown(base, account.pw_uid, account.pw_gid)
    for source, name in ((server.cert_file, "server.crt"), (server.key_file, "server.key")):
        shutil.copy(source, base / name)
    shutil.copy(ca.ca_file, base / "ca.crt")
    for name in ("server.crt", "server.key", "ca.crt"):
        os.chown(base / name, account.pw_uid, account.pw_gid)
    (base / "server.key").chmod(0o600)  # PostgreSQL refuses a key others can read
    data, port = base / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=60)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-N")
        # TLS only, and a client certificate from the CA on every connection.
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n"
        )
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c ssl=on "
            f"-c ssl_cert_file={base}/server.crt -c ssl_key_file={base}/server.key "
            f"-c ssl_ca_file={base}/ca.crt"
        )
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l",
            str(base / "log"), "start")  # fmt: skip
    except subprocess.CalledProcessError as error:
        shutil.rmtree(base, ignore_errors=True)
        unavailable(f"could not start a private PostgreSQL: {error.stderr.decode()[-200:]}")
    try:
        yield TlsPostgres(port, ca, client)
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


def _settings(dsn: str, tls: dict[str, Any] | None) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "kind": "sql",
        "dsn": dsn,
        "timeout_ms": 5000,
        "entities": {
            # What this very connection is: TLS or not, and which version.
            "session": {
                "key_field": "k",
                "key_type": "int",
                "query": "SELECT 1 AS k, ssl, version FROM pg_stat_ssl "
                "WHERE pid = pg_backend_pid() AND 1 IN :keys",
            }
        },
    }
    if tls is not None:
        settings["tls"] = tls
    return settings


async def _session(settings: dict[str, Any]) -> Any:
    connector = build_connector("sales", settings)
    try:
        return await connector.fetch("session", ["1"])
    finally:
        await connector.close()


async def test_verify_full_with_a_client_certificate_reads_over_tls(
    tls_postgres: TlsPostgres,
) -> None:
    client = tls_postgres.client
    tls = {
        "ca_file": str(tls_postgres.ca.ca_file),
        "client_cert": str(client.cert_file),
        "client_key": str(client.key_file),
    }
    found = await _session(_settings(tls_postgres.dsn, tls))
    assert found["1"]["ssl"] is True and found["1"]["version"] in ("TLSv1.2", "TLSv1.3")


async def test_a_wrong_ca_or_a_missing_client_certificate_is_source_unavailable(
    tls_postgres: TlsPostgres, tmp_path: Path
) -> None:
    other = DemoCA.create(tmp_path / "other")
    client = tls_postgres.client
    wrong_ca = {
        "ca_file": str(other.ca_file),
        "client_cert": str(client.cert_file),
        "client_key": str(client.key_file),
    }
    with pytest.raises(SourceUnavailable) as failed:
        await _session(_settings(tls_postgres.dsn, wrong_ca))
    assert failed.value.reason.startswith("TLS: certificate verify failed")
    with pytest.raises(SourceUnavailable) as refused:  # the server requires a client cert
        await _session(_settings(tls_postgres.dsn, {"ca_file": str(tls_postgres.ca.ca_file)}))
    assert "certificate" in refused.value.reason


async def test_the_demo_pins_a_postgres_certificate_and_verifies_against_it(
    tls_postgres: TlsPostgres, tmp_path: Path
) -> None:
    table, note = await pin_postgres("127.0.0.1", tls_postgres.port, tmp_path)
    assert table is not None and table["mode"] == "verify-ca" and "pinned" in note
    pinned = await asyncio.to_thread(Path(table["ca_file"]).read_text)
    issued = await asyncio.to_thread(tls_postgres.ca.paths("sales-db").cert_file.read_text)
    assert pinned == issued
    client = tls_postgres.client
    tls = {**table, "client_cert": str(client.cert_file), "client_key": str(client.key_file)}
    found = await _session(_settings(tls_postgres.dsn, tls))
    assert found["1"]["ssl"] is True
