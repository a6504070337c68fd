"""`c360 serve` as its own process: it serves, reloads policies on SIGHUP, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from demo.systems import DemoSystems
from harness import sales_token, start_serve, write_config
from policies.rules import DEFAULT_POLICY_PATH

QUERY = orjson.dumps({"query": "{ customers(first: 1) { edges { node { name } } } }"})


async def test_serve_answers_reloads_on_sighup_and_stops_on_sigterm(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policies.toml"
    policy_text = DEFAULT_POLICY_PATH.read_text(encoding="utf-8")
    policy_file.write_text(policy_text, encoding="utf-8")
    config_path, data = write_config(demo_systems, tmp_path, {"policies.file": str(policy_file)})
    token = sales_token(data)
    process, url = await start_serve(config_path)
    try:
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        async with aiohttp.ClientSession() as http:

            async def name() -> str:
                async with http.post(f"{url}/graphql", data=QUERY, headers=headers) as response:
                    body = await response.json()
                return str(body["data"]["customers"]["edges"][0]["node"]["name"])

            plain = await name()
            header = '[policy."customer.name"]\ndescription = "Customer.name"\nrules = [\n'
            stricter = policy_text.replace(
                header + '  { role = "sales", effect = "allow" },',
                header + '  { role = "sales", effect = "mask(name)" },',
            )
            assert stricter != policy_text
            policy_file.write_text(stricter, encoding="utf-8")
            process.send_signal(signal.SIGHUP)
            async with asyncio.timeout(10):
                # the reload happens in the server's own time: poll until it shows
                while (masked := await name()) == plain:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert masked.startswith(plain[0]) and "*" in masked
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_otel_variables_turn_on_tracing(demo_systems: DemoSystems, tmp_path: Path) -> None:
    """OTEL_TRACES_EXPORTER=console: `c360 serve` exports a server span per request and a
    span per source lookup, flushed at shutdown; never the query's literals."""
    import os

    config_path, data = write_config(demo_systems, tmp_path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "c360-test"},
    )
    assert process.stderr is not None
    async with asyncio.timeout(60):
        while True:
            entry = orjson.loads(await process.stderr.readline())
            if entry.get("msg") == "serving":
                url = str(entry["url"])
                break
    secret = "literal.secret@example.org"
    body = orjson.dumps({"query": f'query Who {{ customerByEmail(email: "{secret}") {{ id }} }}'})
    headers = {"authorization": f"Bearer {sales_token(data)}", "content-type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/graphql", data=body, headers=headers) as response,
    ):
        request_id = response.headers["x-request-id"]
    process.send_signal(signal.SIGTERM)
    out, _ = await process.communicate()
    exported = out.decode()
    assert process.returncode == 0
    assert '"c360-test"' in exported
    assert '"graphql.operation.name": "Who"' in exported
    assert f'"c360.request_id": "{request_id}"' in exported
    assert secret not in exported


BAD_KEY = {"audit.encrypt": True, "audit.encryption_key_dir": "keys"}
UNREACHABLE_STORE = {"identity.dsn": "postgresql+asyncpg://postgres@127.0.0.1:9/none"}


@pytest.mark.parametrize(
    ("overrides", "named", "flags"),
    [
        (BAD_KEY, "k1.json is not a key file", ()),
        (UNREACHABLE_STORE, "identity.dsn: the crosswalk store cannot be opened", ()),
        # Found once, before any worker starts (each worker's lifespan would traceback).
        (BAD_KEY, "k1.json is not a key file", ("--workers", "2")),
    ],
)
async def test_a_start_up_the_configuration_makes_impossible_is_one_line(
    demo_systems: DemoSystems,
    tmp_path: Path,
    overrides: dict[str, object],
    named: str,
    flags: tuple[str, ...],
) -> None:
    """What only the gateway's start finds (a key file that does not load, a crosswalk
    store that cannot be reached): `c360 serve` exits 1 with one line naming it, and no
    traceback."""
    config_path, _ = write_config(
        demo_systems, tmp_path, {**overrides, "identity.sync_on_start": False}
    )
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "k1.json").write_text("{not json")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path), *flags),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode == 1
    output = (stdout + stderr).decode()
    assert "Traceback" not in output, output
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], output
