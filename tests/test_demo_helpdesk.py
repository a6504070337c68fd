"""The helpdesk REST API over a real port: pages, lookups, batches and its JSON errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo.people import DemoWorld
from demo.systems import DemoSystems


@pytest.fixture
def api(demo_systems: DemoSystems) -> str:
    return demo_systems.endpoints["service"]["url"] + "/api/v2"


async def _get(http: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, Any]:
    async with http.get(url, params=params) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def test_healthz(demo_systems: DemoSystems, demo_http: aiohttp.ClientSession) -> None:
    base = demo_systems.endpoints["service"]["url"]
    assert await _get(demo_http, base + "/healthz") == (200, {"status": "ok"})


async def test_pages_walk_every_requester_in_id_order(
    api: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 97} | ({"after": cursor} if cursor else {})
        status, body = await _get(demo_http, api + "/requesters", **params)
        assert status == 200
        assert len(body["requesters"]) <= 97
        seen += body["requesters"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert cursor == body["requesters"][-1]["id"]
    expected = sorted(demo_world.service.requesters, key=lambda r: r.id)
    assert [r["id"] for r in seen] == [r.id for r in expected]
    assert seen[0] == {
        "id": expected[0].id,
        "email": expected[0].email,
        "phone": expected[0].phone,
        "name": expected[0].name,
    }
    assert pages == -(-len(expected) // 97)


async def test_page_size_defaults_to_100_and_is_bounded(
    api: str, demo_http: aiohttp.ClientSession
) -> None:
    status, body = await _get(demo_http, api + "/requesters")
    assert status == 200
    assert len(body["requesters"]) == 100
    status, body = await _get(demo_http, api + "/requesters", limit=500)
    assert status == 200
    assert len(body["requesters"]) == 500
    for bad in ("0", "501", "-1", "ten"):
        status, body = await _get(demo_http, api + "/requesters", limit=bad)
        assert status == 400
        assert "limit" in body["error"]


async def test_one_requester_or_404(
    api: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    requester = demo_world.service.requesters[3]
    status, body = await _get(demo_http, f"{api}/requesters/{requester.id}")
    assert status == 200
    assert body["requester"]["email"] == requester.email
    status, body = await _get(demo_http, api + "/requesters/req_0000000000")
    assert status == 404
    assert body == {"error": "requester not found"}


async def test_lookup_by_email_ignores_case_and_spaces(
    api: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    odd = next(r for r in demo_world.service.requesters if r.email != r.email.lower())
    plain = next(r for r in demo_world.service.requesters if r.email == r.email.lower())
    asked = [f"  {odd.email.lower()} ", plain.email.upper(), "nobody@example.invalid", plain.email]
    async with demo_http.post(api + "/requesters/lookup", json={"emails": asked}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert [r["id"] for r in body["requesters"]] == [odd.id, plain.id]
    assert body["requesters"][0]["email"] == odd.email  # the helpdesk's own spelling


async def test_lookup_finds_non_ascii_emails(
    api: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    person = next(
        p for p in demo_world.persons if not p.email.isascii() and p.requester_id is not None
    )
    async with demo_http.post(api + "/requesters/lookup", json={"emails": [person.email]}) as resp:
        body = await resp.json()
    assert [r["id"] for r in body["requesters"]] == [person.requester_id]


@pytest.mark.parametrize(
    "payload", [b"not json", b'{"emails": "a@b.c"}', b"[1]", b'{"emails": [1]}', b"{}"]
)
async def test_lookup_rejects_malformed_bodies(
    api: str, demo_http: aiohttp.ClientSession, payload: bytes
) -> None:
    async with demo_http.post(api + "/requesters/lookup", data=payload) as resp:
        assert resp.status == 400
        assert "error" in await resp.json()


async def test_tickets_of_one_requester(
    api: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    ticket = demo_world.service.tickets[0]
    status, body = await _get(demo_http, f"{api}/requesters/{ticket.requester_id}/tickets")
    assert status == 200
    expected = [t for t in demo_world.service.tickets if t.requester_id == ticket.requester_id]
    assert [t["id"] for t in body["tickets"]] == [t.id for t in expected]
    assert body["tickets"][0] == {
        "id": ticket.id,
        "requester_id": ticket.requester_id,
        "subject": ticket.subject,
        "status": ticket.status,
        "csat": ticket.csat,
        "created_at": ticket.created_at,
        "closed_at": ticket.closed_at,
    }
    status, body = await _get(demo_http, api + "/requesters/req_ffffffffff/tickets")
    assert status == 404


async def test_batch_tickets_for_many_requesters(
    api: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    ids = [r.id for r in demo_world.service.requesters[:199]] + ["req_unknown"]
    status, body = await _get(demo_http, api + "/tickets", requester_ids=",".join(ids))
    assert status == 200
    wanted = set(ids)
    expected = {t.id for t in demo_world.service.tickets if t.requester_id in wanted}
    assert {t["id"] for t in body["tickets"]} == expected
    assert len(body["tickets"]) == len(expected)


async def test_batch_tickets_limits(
    api: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    ids = [r.id for r in demo_world.service.requesters[:201]]
    status, body = await _get(demo_http, api + "/tickets", requester_ids=",".join(ids))
    assert status == 400
    assert "200" in body["error"]
    assert await _get(demo_http, api + "/tickets", requester_ids="req_nobody") == (
        200,
        {"tickets": []},
    )
    status, _ = await _get(demo_http, api + "/tickets")
    assert status == 400


async def test_unknown_paths_and_methods_answer_json(
    demo_systems: DemoSystems, demo_http: aiohttp.ClientSession
) -> None:
    base = demo_systems.endpoints["service"]["url"]
    assert await _get(demo_http, base + "/api/v1/requesters") == (404, {"error": "not found"})
    async with demo_http.delete(base + "/api/v2/tickets") as resp:
        assert resp.status == 405
        assert await resp.json() == {"error": "method not allowed"}


# --- corrections: PATCH /api/v2/requesters/{id} (on systems of their own: they change) ---


async def _patch(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.patch(url, **kwargs) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def test_patch_corrects_phone_and_email(
    tmp_path: Path, demo_http: aiohttp.ClientSession
) -> None:
    async with DemoSystems(tmp_path, customers=10) as systems:
        api = systems.endpoints["service"]["url"] + "/api/v2"
        requester = systems.world.service.requesters[0]
        url = f"{api}/requesters/{requester.id}"
        status, body = await _patch(demo_http, url, json={"phone": "13912345678"})
        assert status == 200
        assert body == {
            "requester": {
                "id": requester.id,
                "email": requester.email,
                "phone": "13912345678",
                "name": requester.name,
            }
        }
        status, body = await _patch(demo_http, url, json={"email": "New.Address@Example.cn"})
        assert body["requester"]["email"] == "New.Address@Example.cn"
        assert body["requester"]["phone"] == "13912345678"
        assert await _get(demo_http, url) == (200, body)
        # The email lookup follows the change (matched case-insensitively, as before).
        async with demo_http.post(
            api + "/requesters/lookup", json={"emails": ["new.address@example.cn", requester.email]}
        ) as resp:
            found = (await resp.json())["requesters"]
        assert [r["id"] for r in found] == [requester.id]
        assert found[0]["email"] == "New.Address@Example.cn"
        async with demo_http.post(
            api + "/requesters/lookup", json={"emails": [requester.email]}
        ) as resp:
            assert (await resp.json())["requesters"] == []


async def test_patch_refusals_change_nothing(
    tmp_path: Path, demo_http: aiohttp.ClientSession
) -> None:
    async with DemoSystems(tmp_path, customers=10) as systems:
        api = systems.endpoints["service"]["url"] + "/api/v2"
        requester = systems.world.service.requesters[1]
        url = f"{api}/requesters/{requester.id}"
        _, before = await _get(demo_http, url)
        status, body = await _patch(
            demo_http, f"{api}/requesters/req_nobody00", json={"phone": "1"}
        )
        assert (status, body) == (404, {"error": "requester not found"})
        status, body = await _patch(
            demo_http, url, data=b"{not json", headers={"content-type": "application/json"}
        )
        assert (status, body) == (400, {"error": "body must be JSON"})
        for payload, needle in [
            ([], "must be an object"),
            ({}, "must be an object"),
            ({"name": "Mallory"}, "name cannot be changed"),
            ({"phone": 13912345678}, "phone must be a non-empty string"),
            ({"email": "  "}, "email must be a non-empty string"),
            ({"phone": "1", "id": "req_x"}, "id cannot be changed"),
        ]:
            status, body = await _patch(demo_http, url, json=payload)
            assert status == 400 and needle in body["error"], (payload, body)
        assert await _get(demo_http, url) == (200, before)
