"""The c360 command line: help, one-line errors, and the schema drift check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
