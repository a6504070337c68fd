"""`c360 serve` as its own process: it serves, reloads policies on SIGHUP, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import orjson

from demo.systems import DemoSystems
from gateway.auth import AuthConfig, mint_token
from gateway.demo import to_toml
from harness import gateway_config
from policies.rules import DEFAULT_POLICY_PATH

QUERY = orjson.dumps({"query": "{ customers(first: 1) { edges { node { name } } } }"})


async def test_serve_answers_reloads_on_sighup_and_stops_on_sigterm(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policies.toml"
    policy_text = DEFAULT_POLICY_PATH.read_text(encoding="utf-8")
    policy_file.write_text(policy_text, encoding="utf-8")
    data = gateway_config(
        demo_systems, tmp_path, {"server.port": 0, "policies.file": str(policy_file)}
    )
    config_path = tmp_path / "c360.toml"
    config_path.write_text(to_toml(data), encoding="utf-8")
    token = mint_token(AuthConfig.parse(data["auth"]), "alice", ["sales"], ["sales"])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config_path),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        url = None
        async with asyncio.timeout(60):
            while url is None:
                line = await process.stderr.readline()
                assert line, "the gateway exited before serving"
                entry = orjson.loads(line)
                url = entry.get("url") if entry.get("msg") == "serving" else None
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
