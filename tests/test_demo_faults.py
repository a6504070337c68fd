"""The admin and fault hooks of both HTTP systems: counts, traceparent, latency and failures."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from demo.systems import DemoSystems

SYSTEMS = ["service", "marketing"]


async def _admin(
    http: aiohttp.ClientSession, systems: DemoSystems, system: str, path: str, body: Any = None
) -> dict[str, Any]:
    url = systems.admin_url(system) + "/_admin/" + path
    request = http.get(url) if path == "stats" else http.post(url, json=body)
    async with request as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def _wait_until_counted(
    http: aiohttp.ClientSession, systems: DemoSystems, system: str, total: int
) -> None:
    async with asyncio.timeout(5):
        while (await _admin(http, systems, system, "stats"))["total"] < total:
            pass  # each round trip yields to the event loop


@pytest.mark.parametrize("system", SYSTEMS)
async def test_stats_count_routes_and_keep_the_last_traceparent(
    fresh_demo_systems: DemoSystems, demo_http: aiohttp.ClientSession, system: str
) -> None:
    base = fresh_demo_systems.admin_url(system)
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with demo_http.get(base + "/healthz"):
        pass
    async with demo_http.get(base + "/healthz", headers={"traceparent": trace}):
        pass
    if system == "service":
        async with demo_http.get(base + "/api/v2/requesters/req_x/tickets"):
            pass
        route = "GET /api/v2/requesters/{id}/tickets"
    else:
        async with demo_http.post(base + "/graphql", json={"query": "{ contact(id: 1) { id } }"}):
            pass
        route = "POST /graphql"
    stats = await _admin(demo_http, fresh_demo_systems, system, "stats")
    assert stats["requests"] == {"GET /healthz": 2, route: 1}
    assert stats["total"] == 3  # the admin calls themselves are not counted
    assert stats["last_traceparent"] is None  # the most recent request had none

    async with demo_http.get(base + "/healthz", headers={"traceparent": trace}):
        pass
    assert (await _admin(demo_http, fresh_demo_systems, system, "stats"))["last_traceparent"] == (
        trace
    )
    reset = await _admin(demo_http, fresh_demo_systems, system, "reset")
    assert (reset["requests"], reset["total"], reset["last_traceparent"]) == ({}, 0, None)


@pytest.mark.parametrize("system", SYSTEMS)
async def test_error_mode_answers_503_until_reset(
    fresh_demo_systems: DemoSystems, demo_http: aiohttp.ClientSession, system: str
) -> None:
    url = fresh_demo_systems.admin_url(system) + "/healthz"
    await _admin(demo_http, fresh_demo_systems, system, "fault", {"mode": "error"})
    async with demo_http.get(url) as resp:
        assert resp.status == 503
        assert "error" in await resp.json()
    stats = await _admin(demo_http, fresh_demo_systems, system, "stats")
    assert stats["requests"] == {"GET /healthz": 1}  # failed requests are counted too
    await _admin(demo_http, fresh_demo_systems, system, "reset")
    async with demo_http.get(url) as resp:
        assert resp.status == 200


@pytest.mark.parametrize("system", SYSTEMS)
async def test_garbage_mode_answers_html(
    fresh_demo_systems: DemoSystems, demo_http: aiohttp.ClientSession, system: str
) -> None:
    await _admin(demo_http, fresh_demo_systems, system, "fault", {"mode": "garbage"})
    url = fresh_demo_systems.endpoints[system]["url"]
    async with demo_http.post(url, json={}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert await resp.text() == "<html>not json"


@pytest.mark.parametrize("system", SYSTEMS)
async def test_hang_mode_holds_the_answer_until_the_fault_is_lifted(
    fresh_demo_systems: DemoSystems, demo_http: aiohttp.ClientSession, system: str
) -> None:
    await _admin(demo_http, fresh_demo_systems, system, "fault", {"mode": "hang"})

    async def health() -> int:
        async with demo_http.get(fresh_demo_systems.admin_url(system) + "/healthz") as resp:
            return resp.status

    pending = asyncio.create_task(health())
    await _wait_until_counted(demo_http, fresh_demo_systems, system, 1)
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done  # arrived, but no answer
    await _admin(demo_http, fresh_demo_systems, system, "fault", {"mode": "ok"})
    assert await pending == 200


@pytest.mark.parametrize("system", SYSTEMS)
async def test_latency_can_change_at_run_time(
    fresh_demo_systems: DemoSystems, demo_http: aiohttp.ClientSession, system: str
) -> None:
    stats = await _admin(
        demo_http, fresh_demo_systems, system, "fault", {"mode": "ok", "latency_ms": 150}
    )
    assert stats["latency_ms"] == 150
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with demo_http.get(fresh_demo_systems.admin_url(system) + "/healthz") as resp:
        assert resp.status == 200
    # A lower bound only: the sleep guarantees it, however slow the machine is.
    assert loop.time() - started >= 0.14
    stats = await _admin(demo_http, fresh_demo_systems, system, "reset")
    assert stats["latency_ms"] == 0


@pytest.mark.parametrize(
    "body",
    [{"mode": "explode"}, {}, {"mode": "ok", "latency_ms": -5}, {"mode": "ok", "latency_ms": "9"}],
)
async def test_fault_rejects_bad_bodies(
    fresh_demo_systems: DemoSystems, demo_http: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    url = fresh_demo_systems.admin_url("service") + "/_admin/fault"
    async with demo_http.post(url, json=body) as resp:
        assert resp.status == 400
        assert "error" in await resp.json()
    async with demo_http.post(url, data=b"{nope") as resp:
        assert resp.status == 400
