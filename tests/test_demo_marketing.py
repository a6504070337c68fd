"""The marketing GraphQL subgraph over a real port: contacts, pages, segments and `_entities`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo.marketing import CHANNELS
from demo.people import DemoWorld, MarketingContact
from demo.systems import DemoSystems

CONTACT_FIELDS = "id email phone segment consents { channel granted updatedAt }"


@pytest.fixture
def graphql_url(demo_systems: DemoSystems) -> str:
    return demo_systems.endpoints["marketing"]["url"]


async def _query(
    http: aiohttp.ClientSession, url: str, query: str, **variables: Any
) -> dict[str, Any]:
    async with http.post(url, json={"query": query, "variables": variables}) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


def _as_json(c: MarketingContact) -> dict[str, Any]:
    return {
        "id": c.id,
        "email": c.email,
        "phone": c.phone,
        "segment": c.segment,
        "consents": [
            {"channel": k.channel, "granted": k.granted, "updatedAt": k.updated_at}
            for k in c.consents
        ],
    }


async def test_contact_by_id(
    graphql_url: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    contact = demo_world.marketing.contacts[5]
    query = f"query($id: ID!) {{ contact(id: $id) {{ {CONTACT_FIELDS} }} }}"
    body = await _query(demo_http, graphql_url, query, id=contact.id)
    assert body == {"data": {"contact": _as_json(contact)}}
    body = await _query(demo_http, graphql_url, query, id="MC-000000")
    assert body == {"data": {"contact": None}}


async def test_contacts_align_with_the_ids_asked(
    graphql_url: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    a, b = demo_world.marketing.contacts[10], demo_world.marketing.contacts[-1]
    query = "query($ids: [ID!]!) { contacts(ids: $ids) { id email } }"
    body = await _query(demo_http, graphql_url, query, ids=[b.id, "MC-nope", a.id, b.id])
    assert body["data"]["contacts"] == [
        {"id": b.id, "email": b.email},
        None,
        {"id": a.id, "email": a.email},
        {"id": b.id, "email": b.email},
    ]


async def test_contact_page_walks_every_contact_in_id_order(
    graphql_url: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    query = (
        "query($after: String) { contactPage(first: 250, after: $after) "
        "{ items { id } nextCursor } }"
    )
    ids: list[str] = []
    after = None
    while True:
        page = (await _query(demo_http, graphql_url, query, after=after))["data"]["contactPage"]
        ids += [c["id"] for c in page["items"]]
        after = page["nextCursor"]
        if after is None:
            break
        assert after == ids[-1]
    assert ids == sorted(c.id for c in demo_world.marketing.contacts)


async def test_contact_page_defaults_and_bounds(
    graphql_url: str, demo_http: aiohttp.ClientSession
) -> None:
    body = await _query(demo_http, graphql_url, "{ contactPage { items { id } nextCursor } }")
    assert len(body["data"]["contactPage"]["items"]) == 100
    body = await _query(demo_http, graphql_url, "{ contactPage(first: 0) { nextCursor } }")
    assert body["data"] is None
    assert "first must be between 1 and 500" in body["errors"][0]["message"]


async def test_segments_list_their_contacts(
    graphql_url: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    query = "query($names: [String!]!) { segments(names: $names) { name contactIds } }"
    body = await _query(demo_http, graphql_url, query, names=["vip", "unknown", "churn-risk"])
    segments = body["data"]["segments"]
    assert [s["name"] for s in segments] == ["vip", "unknown", "churn-risk"]
    for segment in segments:
        expected = sorted(
            c.id for c in demo_world.marketing.contacts if c.segment == segment["name"]
        )
        assert segment["contactIds"] == expected
    assert segments[0]["contactIds"]
    assert segments[1]["contactIds"] == []


async def test_entities_resolve_references_in_order(
    graphql_url: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    a, b = demo_world.marketing.contacts[0], demo_world.marketing.contacts[42]
    query = (
        "query($representations: [_Any!]!) { _entities(representations: $representations) "
        f"{{ ... on Contact {{ {CONTACT_FIELDS} }} }} }}"
    )
    representations = [
        {"__typename": "Contact", "id": b.id},
        {"__typename": "Contact", "id": "MC-000000"},
        {"__typename": "Contact", "id": a.id},
    ]
    body = await _query(demo_http, graphql_url, query, representations=representations)
    assert "errors" not in body
    assert body["data"]["_entities"] == [_as_json(b), None, _as_json(a)]


async def test_service_sdl_declares_the_contact_key(
    graphql_url: str, demo_http: aiohttp.ClientSession
) -> None:
    body = await _query(demo_http, graphql_url, "{ _service { sdl } }")
    sdl = body["data"]["_service"]["sdl"]
    assert 'type Contact @key(fields: "id")' in sdl
    assert "specs.apollo.dev/federation/v2" in sdl
    assert "contacts(ids: [ID!]!): [Contact]!" in sdl
    assert "segments(names: [String!]!): [Segment!]!" in sdl


async def test_marketing_healthz(
    demo_systems: DemoSystems, demo_http: aiohttp.ClientSession
) -> None:
    url = demo_systems.admin_url("marketing") + "/healthz"
    async with demo_http.get(url) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


# --- setConsent (on systems of their own: it changes them) -----------------------------

SET_CONSENT = (
    "mutation($id: ID!, $channel: String!, $granted: Boolean!) "
    "{ setConsent(contactId: $id, channel: $channel, granted: $granted) "
    "{ channel granted updatedAt } }"
)
CONSENTS = "query($id: ID!) { contact(id: $id) { consents { channel granted updatedAt } } }"


async def test_set_consent_updates_or_adds_the_channel(
    tmp_path: Path, demo_http: aiohttp.ClientSession
) -> None:
    async with DemoSystems(tmp_path, customers=40) as systems:
        url = systems.endpoints["marketing"]["url"]
        contacts = systems.world.marketing.contacts
        full = next(c for c in contacts if len(c.consents) == 3)
        sms = next(k for k in full.consents if k.channel == "sms")
        body = await _query(
            demo_http, url, SET_CONSENT, id=full.id, channel="sms", granted=not sms.granted
        )
        assert "errors" not in body
        changed = body["data"]["setConsent"]
        assert changed["channel"] == "sms" and changed["granted"] is (not sms.granted)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", changed["updatedAt"])
        assert changed["updatedAt"] > sms.updated_at
        after = (await _query(demo_http, url, CONSENTS, id=full.id))["data"]["contact"]
        assert after["consents"][1] == changed
        assert [k["channel"] for k in after["consents"]] == ["email", "sms", "phone"]

        partial = next(c for c in contacts if len(c.consents) < 3)
        had = [k.channel for k in partial.consents]
        missing = next(ch for ch in CHANNELS if ch not in had)
        body = await _query(
            demo_http, url, SET_CONSENT, id=partial.id, channel=missing, granted=True
        )
        assert body["data"]["setConsent"]["granted"] is True
        after = (await _query(demo_http, url, CONSENTS, id=partial.id))["data"]["contact"]
        channels = [k["channel"] for k in after["consents"]]
        assert channels == [ch for ch in CHANNELS if ch in {*had, missing}]  # listed in order


async def test_set_consent_refuses_bad_channels_and_unknown_contacts(
    graphql_url: str, demo_http: aiohttp.ClientSession, demo_world: DemoWorld
) -> None:
    contact = demo_world.marketing.contacts[3]
    before = await _query(demo_http, graphql_url, CONSENTS, id=contact.id)
    body = await _query(
        demo_http, graphql_url, SET_CONSENT, id=contact.id, channel="fax", granted=True
    )
    assert body["data"] == {"setConsent": None}
    assert body["errors"][0]["message"] == "channel must be one of email, sms, phone"
    body = await _query(
        demo_http, graphql_url, SET_CONSENT, id="MC-000000", channel="sms", granted=True
    )
    assert body["data"] == {"setConsent": None}
    assert body["errors"][0]["message"] == "no contact MC-000000"
    assert await _query(demo_http, graphql_url, CONSENTS, id=contact.id) == before


async def test_service_sdl_declares_the_mutation(
    graphql_url: str, demo_http: aiohttp.ClientSession
) -> None:
    body = await _query(demo_http, graphql_url, "{ _service { sdl } }")
    sdl = body["data"]["_service"]["sdl"]
    assert "setConsent(contactId: ID!, channel: String!, granted: Boolean!): Consent" in sdl
