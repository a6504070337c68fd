"""c360 as a Federation 2 subgraph (`[federation] subgraph = true`): `_service { sdl }`,
`_entities` in one batched load, and a real Apollo Gateway (Node) composing it with a
second subgraph that extends Customer, c360's fields under c360's policies."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo.systems import DemoSystems
from harness import RunningGateway, node_and_npm, running_gateway

ROUTER_DIR = Path(__file__).parent / "systems" / "federation"
ENTITIES = """query($r: [_Any!]!) {
  _entities(representations: $r) { ... on Customer { id name nationalId } }
}"""


def nps_of(cuid: str) -> int:
    """The survey subgraph's score for a customer (tests/systems/federation/survey.mjs)."""
    return hashlib.sha256(cuid.encode()).digest()[0] % 11


@pytest.fixture(scope="module")
async def subgraph(
    demo_systems: DemoSystems, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    overrides = {"federation.subgraph": True}
    async with running_gateway(
        demo_systems, tmp_path_factory.mktemp("subgraph"), overrides
    ) as gateway:
        yield gateway


async def test_the_subgraph_publishes_its_sdl_with_customer_as_an_entity(
    subgraph: RunningGateway,
) -> None:
    reply = await subgraph.query("{ _service { sdl } }")
    assert not reply.errors, reply.errors
    sdl = reply.data["_service"]["sdl"]
    assert 'type Customer @key(fields: "id")' in sdl
    assert '@link(url: "https://specs.apollo.dev/federation/v2' in sdl
    assert '@policy(name: "customer.nationalId")' in sdl


async def test_entities_resolve_in_one_batched_load_under_the_tokens_policies(
    subgraph: RunningGateway,
) -> None:
    page = await subgraph.query("{ customers(first: 5) { edges { node { id } } } }")
    cuids = [edge["node"]["id"] for edge in page.data["customers"]["edges"]]
    representations = [{"__typename": "Customer", "id": cuid} for cuid in cuids[:3]]
    representations.insert(1, {"__typename": "Customer", "id": "cus_" + "a" * 16})
    before = subgraph.source_calls("sales")
    reply = await subgraph.query(ENTITIES, {"r": representations})
    assert not reply.errors, reply.errors
    entities = reply.data["_entities"]
    assert [e and e["id"] for e in entities] == [cuids[0], None, cuids[1], cuids[2]]
    assert all("*" in e["nationalId"] for e in entities if e and e["nationalId"])  # masked
    assert subgraph.source_calls("sales") - before == 1  # three customers, one call
    marketing = await subgraph.query(
        ENTITIES, {"r": representations}, headers=subgraph.as_role("marketing")
    )
    refused = [e for e in marketing.errors if e["extensions"]["code"] == "FORBIDDEN"]
    assert {tuple(e["path"]) for e in refused} == {
        ("_entities", 0, "nationalId"),
        ("_entities", 2, "nationalId"),
        ("_entities", 3, "nationalId"),
    }
    assert all(e is None or e["nationalId"] is None for e in marketing.data["_entities"])


async def _node_ready() -> str:
    node, npm = node_and_npm()
    if not (ROUTER_DIR / "node_modules" / "@apollo" / "gateway").exists():
        process = await asyncio.create_subprocess_exec(
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            cwd=ROUTER_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 300)
        assert process.returncode == 0, output.decode(errors="replace")
    return node


@contextlib.asynccontextmanager
async def _node_server(node: str, script: str, env: dict[str, str]) -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        node,
        script,
        cwd=ROUTER_DIR,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await process.stdout.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError(f"{script} ended: {''.join(lines)[-2000:]}")
                lines.append(line)
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    port = int(json.loads(line)["port"])
                    break
        drain = asyncio.ensure_future(process.stdout.read())
        yield f"http://127.0.0.1:{port}/"
        drain.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def test_a_real_apollo_gateway_composes_c360_with_another_subgraph(
    subgraph: RunningGateway,
) -> None:
    node = await _node_ready()
    page = await subgraph.query("{ customers(first: 2) { edges { node { id } } } }")
    cuid = page.data["customers"]["edges"][0]["node"]["id"]
    query = 'query { customer(id: "' + cuid + '") { id name nationalId nps } }'
    token = subgraph.token("router", ["security"], ["audit"])
    async with (
        _node_server(node, "survey.mjs", {}) as survey_url,
        _node_server(
            node,
            "router.mjs",
            {"C360_URL": subgraph.url + "/graphql", "SURVEY_URL": survey_url, "C360_TOKEN": token},
        ) as router_url,
        aiohttp.ClientSession() as http,
    ):

        async def ask(role: str) -> dict[str, Any]:
            headers = {**subgraph.as_role(role), "content-type": "application/json"}
            async with http.post(router_url, json={"query": query}, headers=headers) as reply:
                return dict(await reply.json())

        sales = await ask("sales")
        assert sales["data"]["customer"]["nps"] == nps_of(cuid)
        assert sales["data"]["customer"]["name"]
        assert "*" in sales["data"]["customer"]["nationalId"]  # c360's mask, via the router
        marketing = await ask("marketing")
        assert marketing["data"]["customer"]["nps"] == nps_of(cuid)
        assert marketing["data"]["customer"]["nationalId"] is None
        codes = [e.get("extensions", {}).get("code") for e in marketing.get("errors", [])]
        assert "FORBIDDEN" in codes
        async with http.post(router_url, json={"query": query}) as no_token:
            body = await no_token.json()
        # No token forwarded: c360 answers the router 401 and serves nothing.
        assert not (body.get("data") or {}).get("customer"), body
        assert body.get("errors"), body
    # The access records name the router as the client and the forwarded token's roles.
    await subgraph.gateway.access_log.flush()
    sink = subgraph.gateway.config.audit_sink
    records = [r for _, r in sink.lines() if r]  # type: ignore[attr-defined]
    routed = [
        r for r in records if r.get("client") == "supergraph-router" and cuid in r["customers"]
    ]
    assert {tuple(r["roles"]) for r in routed} >= {("sales",), ("marketing",)}
    assert any(r["fields"][cuid].get("nationalId") == "deny" for r in routed)
