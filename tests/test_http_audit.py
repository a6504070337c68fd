"""The graphql-http server audit (npm) against /graphql: no error, no warning."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest

from harness import RunningGateway, node_and_npm

AUDIT_DIR = Path(__file__).with_name("http_audit")


async def _run(*command: str, limit_s: float, token: str = "") -> tuple[int, bytes]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=AUDIT_DIR,
        env={**os.environ, "C360_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), limit_s)
    return process.returncode or 0, output


@pytest.fixture(scope="session")
async def audit_tool() -> Path:
    node, npm = node_and_npm()
    if not (AUDIT_DIR / "node_modules" / "graphql-http").exists():
        code, output = await _run(npm, "install", "--no-audit", "--no-fund", limit_s=300)
        assert code == 0, output.decode(errors="replace")
    return Path(node)


async def test_graphql_http_audit_passes_without_warnings(
    gateway: RunningGateway, audit_tool: Path
) -> None:
    code, output = await _run(
        str(audit_tool), "audit.mjs", gateway.url + "/graphql", limit_s=120, token=gateway.token()
    )
    assert code == 0, output.decode(errors="replace")
    summary = orjson.loads(output.splitlines()[-1])
    assert summary["problems"] == [], summary["problems"]
    assert summary["error"] == 0 and summary["warn"] == 0
    assert summary["ok"] >= 50
