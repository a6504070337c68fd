"""The c360 command line: help, one-line errors, and the schema drift check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["demo", "--help"],
        ["serve", "--help"],
        ["schema", "export", "--help"],
        ["identity", "sync", "--help"],
        ["audit", "rebuild", "--help"],
        ["audit", "seed", "--help"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_the_checked_in_schema_is_current() -> None:
    assert main(["schema", "check", "--file", str(ROOT / "schema.graphql")]) == 0


def test_schema_check_fails_on_drift(tmp_path: Path) -> None:
    stale = tmp_path / "schema.graphql"
    stale.write_text((ROOT / "schema.graphql").read_text().replace("nationalId", "nid"))
    result = run("schema", "check", "--file", str(stale))
    assert result.returncode == 1 and "out of date" in result.stderr
    assert run("schema", "export", "-o", str(stale)).returncode == 0
    assert run("schema", "check", "--file", str(stale)).returncode == 0


def test_errors_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    result = run("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.stderr and "missing.toml" in result.stderr
    bad = tmp_path / "c360.toml"
    bad.write_text(
        '[identity]\nkey = "0123456789abcdef0123"\n'
        '[auth]\nissuer = "i"\naudience = "a"\nhs256 = { k = "' + "s" * 32 + '" }\n'
        '[policies]\nhash_key = "0123456789abcdef"\n'
        '[sources.crm]\nkind = "soap"\n'
    )
    result = run("identity", "sync", "--config", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == "c360: sources.crm.kind: must be one of sql, rest, graphql"


def demo_config_file(tmp_path: Path) -> Path:
    from gateway.demo import DEMO_TEMPLATE

    path = tmp_path / "c360.toml"
    path.write_text(DEMO_TEMPLATE.read_text(), encoding="utf-8")
    return path


def test_token_mints_a_token_the_gateway_accepts(tmp_path: Path) -> None:
    import asyncio

    from gateway.auth import Authenticator
    from gateway.config import load_config

    config_path = demo_config_file(tmp_path)
    result = run(
        "token",
        "--config",
        str(config_path),
        "--sub",
        "bob",
        "--role",
        "service",
        "--purpose",
        "service",
        "--ttl",
        "60",
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    principal = asyncio.run(
        Authenticator(load_config(config_path).auth).authenticate(f"Bearer {token}", None)
    )
    assert principal.subject == "bob"
    assert principal.roles == frozenset({"service"})
    assert principal.purpose == "service"


def test_token_beside_a_demo_finds_its_config(tmp_path: Path) -> None:
    """After `make demo` (its config in ./data/c360.toml), `c360 token` needs no --config;
    with neither file, one line says where a config was looked for."""
    missing = run("token", "--sub", "x", "--role", "sales", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "c360: config: no file at c360.toml (nor data/c360.toml, written by `c360 demo`): "
        "pass --config FILE"
    )
    (tmp_path / "data").mkdir()
    demo_config_file(tmp_path / "data")
    found = run("token", "--sub", "x", "--role", "sales", "--purpose", "sales", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.count(".") == 2  # a JWT


def test_token_refuses_without_a_development_key(tmp_path: Path) -> None:
    config_path = demo_config_file(tmp_path)
    config_path.write_text(config_path.read_text().replace('dev_key = "dev"\n', ""))
    result = run("token", "--config", str(config_path), "--sub", "x", "--role", "sales")
    assert result.returncode == 1
    assert result.stderr.strip() == "c360: auth.dev_key: no development signing key is configured"


def test_policy_explain_prints_the_field_by_role_matrix(tmp_path: Path) -> None:
    config_path = demo_config_file(tmp_path)
    result = run("policy", "explain", "--config", str(config_path))
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "marketing" in lines["field"] and "security" in lines["field"]
    assert "mask(national_id)" in lines["Customer.nationalId"]
    assert "consent=email" in lines["Customer.email"]
    as_json = run(
        "policy", "explain", "--config", str(config_path), "--role", "marketing", "--json"
    )
    rows = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    by_field = {row["field"]: row["roles"]["marketing"] for row in rows}
    assert by_field["Customer.nationalId"] == "deny"
    assert by_field["Customer.phone"] == "mask(phone)"


def test_policy_check_names_the_line_of_a_broken_file(tmp_path: Path) -> None:
    from policies.rules import DEFAULT_POLICY_PATH

    good = tmp_path / "good.toml"
    good.write_text(DEFAULT_POLICY_PATH.read_text())
    assert run("policy", "check", str(good)).returncode == 0
    bad = tmp_path / "bad.toml"
    text = DEFAULT_POLICY_PATH.read_text().replace(
        'effect = "mask(phone)"', 'effect = "mask(fone)"', 1
    )
    bad.write_text(text)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "mask(fone)" in row)
    result = run("policy", "check", str(bad))
    assert result.returncode == 1
    assert f"bad.toml:{line}:" in result.stderr
    assert "fone" in result.stderr
    missing = tmp_path / "missing.toml"
    missing.write_text(
        DEFAULT_POLICY_PATH.read_text().replace(
            '[policy."customer.phone"]', '[policy."customer.fone"]'
        )
    )
    result = run("policy", "check", str(missing))
    assert result.returncode == 1
    assert "customer.phone" in result.stderr


def test_audit_rebuild_is_for_the_postgresql_log(tmp_path: Path) -> None:
    result = run("audit", "rebuild", "--config", str(demo_config_file(tmp_path)))
    assert result.returncode == 1
    assert (
        result.stderr.strip() == "c360: audit rebuild: the JSONL log has no read models to rebuild"
    )


def test_audit_seed_never_writes_the_configured_log(tmp_path: Path) -> None:
    """Not even while the gateway's log is new and empty: generated records go only into
    a log named on the command line that is not the configured one."""
    config_path = demo_config_file(tmp_path)
    real = tmp_path / "access.jsonl"  # the demo config's audit.path, not written yet
    refused = run(
        "audit", "seed", "--config", str(config_path), "--path", str(real), "--records", "5"
    )
    assert refused.returncode == 1
    assert "names for real use" in refused.stderr and str(config_path) in refused.stderr
    assert not real.exists()
    untargeted = run("audit", "seed", "--config", str(config_path), "--records", "5")
    assert untargeted.returncode == 2 and "--path" in untargeted.stderr
    seeded = tmp_path / "seed.jsonl"
    done = run(
        "audit", "seed", "--config", str(config_path), "--path", str(seeded), "--records", "5"
    )
    assert done.returncode == 0, done.stderr
    chains = {orjson.loads(line)["chain"] for line in seeded.read_text().splitlines()}
    assert chains == {"seed-1"}


def test_a_log_is_the_same_however_it_is_named(tmp_path: Path) -> None:
    from demo.console_seed import same_log
    from gateway.audit.sinks import JsonlSink, PostgresSink

    real = JsonlSink(tmp_path / "access.jsonl")
    (tmp_path / "access.00001.jsonl").write_text("")  # rotated: still the real log
    assert same_log(JsonlSink(tmp_path / "x" / ".." / "access.jsonl"), real)
    assert same_log(JsonlSink(tmp_path / "access.00001.jsonl"), real)
    assert not same_log(JsonlSink(tmp_path / "seed.jsonl"), real)
    configured = PostgresSink("postgresql+asyncpg://c360:secret@localhost/c360")
    assert same_log(PostgresSink("postgresql+asyncpg://other@127.0.0.1:5432/c360"), configured)
    assert not same_log(PostgresSink("postgresql+asyncpg://c360@localhost/c360_seed"), configured)
    assert not same_log(PostgresSink("postgresql+asyncpg://c360@db.internal/c360"), configured)
    assert not same_log(real, configured)
