"""REST connector features real systems need: batch answers in pages, keys as a repeated
query parameter, and an identity sync that resumes with the system's own (opaque) cursor.

Each test runs a small aiohttp system of its own that counts what it was asked.
"""

from __future__ import annotations

import base64
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from connectors.base import ConnectorConfigError, SourceUnavailable
from connectors.identity.keys import IdentityKeys
from connectors.identity.store import CrosswalkStore
from connectors.identity.sync import sync_identity
from connectors.registry import build_connector

KEYS = IdentityKeys(b"paging-test-key-0123456789")
PAGE = 3  # records per page of the test system's paged endpoints


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


@dataclass
class Shop:
    """A small REST system: customers with opaque-cursor scans, orders in pages."""

    customers: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    queries: list[list[tuple[str, str]]] = field(default_factory=list)
    # What a paged endpoint answers as the next cursor (tests make it misbehave).
    next_of: Callable[[int], str] = _cursor


def _offset(cursor: str | None) -> int | None:
    """The offset inside an opaque cursor; None when it is not one of ours."""
    if cursor is None:
        return 0
    try:
        kind, _, number = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return int(number) if kind == "offset" and number.isdigit() else None


def _page(shop: Shop, request: web.Request, items: list[dict[str, Any]], size: int) -> Any:
    offset = _offset(request.query.get("cursor"))
    if offset is None:
        return web.json_response({"error": "bad cursor"}, status=400)
    page = items[offset : offset + size]
    more = offset + size < len(items)
    return web.json_response(
        {"items": page, "page": {"next": shop.next_of(offset + size) if more else None}}
    )


def shop_app(shop: Shop) -> web.Application:
    async def scan(request: web.Request) -> web.StreamResponse:
        shop.calls["scan"] += 1
        return _page(shop, request, shop.customers, int(request.query["limit"]))

    async def orders_comma(request: web.Request) -> web.StreamResponse:
        shop.calls["orders"] += 1
        shop.queries.append(list(request.query.items()))
        wanted = set(request.query["customer_ids"].split(","))
        return _page(shop, request, [o for o in shop.orders if o["customer_id"] in wanted], PAGE)

    async def orders_repeat(request: web.Request) -> web.StreamResponse:
        shop.calls["orders-repeat"] += 1
        shop.queries.append(list(request.query.items()))
        wanted = set(request.query.getall("customer_id", []))
        if any("," in key for key in wanted):
            return web.json_response({"error": "one id per customer_id"}, status=400)
        return _page(shop, request, [o for o in shop.orders if o["customer_id"] in wanted], PAGE)

    async def orders_post(request: web.Request) -> web.StreamResponse:
        shop.calls["orders-post"] += 1
        wanted = set((await request.json())["customer_ids"])
        return _page(shop, request, [o for o in shop.orders if o["customer_id"] in wanted], PAGE)

    async def orders_of(request: web.Request) -> web.StreamResponse:
        shop.calls["orders-of"] += 1
        key = request.match_info["id"]
        if not any(c["id"] == key for c in shop.customers):
            return web.json_response({"error": "no such customer"}, status=404)
        return _page(shop, request, [o for o in shop.orders if o["customer_id"] == key], PAGE)

    app = web.Application()
    app.router.add_get("/customers", scan)
    app.router.add_get("/orders", orders_comma)
    app.router.add_get("/orders-repeat", orders_repeat)
    app.router.add_post("/orders", orders_post)
    app.router.add_get("/customers/{id}/orders", orders_of)
    return app


@contextlib.asynccontextmanager
async def running(shop: Shop) -> AsyncIterator[str]:
    runner = web.AppRunner(shop_app(shop), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def make_shop(customers: int, orders_each: int) -> Shop:
    shop = Shop()
    for n in range(customers):
        shop.customers.append(
            {"id": f"C{n:03d}", "email": f"person{n}@example.com", "phone": f"1380000{n:04d}"}
        )
        for k in range(orders_each):
            shop.orders.append({"id": f"O{n:03d}-{k}", "customer_id": f"C{n:03d}"})
    return shop


PAGING = {"next_field": "page.next", "cursor_param": "cursor"}


def settings(base_url: str, **orders: Any) -> dict[str, Any]:
    entity = {"key_field": "customer_id", "many": True, "items": "items", **orders}
    return {
        "kind": "rest",
        "base_url": base_url,
        "entities": {"orders": entity},
        "scan": {
            "path": "/customers",
            "items": "items",
            "next_field": "page.next",
            "cursor_param": "cursor",
        },
    }


def order_ids(found: dict[str, Any]) -> dict[str, list[str]]:
    return {key: sorted(o["id"] for o in records) for key, records in found.items()}


def expected_orders(shop: Shop, keys: list[str]) -> dict[str, list[str]]:
    return {key: sorted(o["id"] for o in shop.orders if o["customer_id"] == key) for key in keys}


async def test_a_paged_batch_answer_is_followed_to_its_last_page() -> None:
    shop = make_shop(customers=10, orders_each=2)  # 20 orders: 7 pages of 3
    batch = {"path": "/orders", "param": "customer_ids"}
    async with running(shop) as url:
        unpaged = build_connector("shop", settings(url, batch=batch))
        paged = build_connector("shop", settings(url, batch=batch, paging=PAGING))
        keys = [c["id"] for c in shop.customers]
        try:
            truncated = await unpaged.fetch("orders", keys)
            shop.calls.clear()
            shop.queries.clear()
            found = await paged.fetch("orders", keys)
        finally:
            await unpaged.close()
            await paged.close()
    # without paging the first page is all there is: the truncation this feature fixes
    assert sum(len(v) for v in truncated.values()) == PAGE
    assert order_ids(found) == expected_orders(shop, keys)
    assert shop.calls["orders"] == 7
    # every page repeats the keys and adds the cursor the previous page answered
    assert all(("customer_ids", ",".join(keys)) in query for query in shop.queries)
    assert [dict(q).get("cursor") for q in shop.queries] == [
        None,
        *(_cursor(3 * n) for n in range(1, 7)),
    ]


async def test_repeat_style_sends_each_key_as_its_own_parameter() -> None:
    shop = make_shop(customers=5, orders_each=1)
    batch = {"path": "/orders-repeat", "param": "customer_id", "style": "repeat"}
    async with running(shop) as url:
        connector = build_connector("shop", settings(url, batch=batch, paging=PAGING))
        keys = ["C001", "C003", "C004", "nobody"]
        try:
            found = await connector.fetch("orders", keys)
        finally:
            await connector.close()
    assert order_ids(found) == expected_orders(shop, keys)
    assert shop.calls["orders-repeat"] == 1  # 3 orders: one page
    assert shop.queries[0] == [("customer_id", key) for key in keys]


async def test_chunks_of_max_keys_each_follow_their_own_pages() -> None:
    shop = make_shop(customers=8, orders_each=2)
    batch = {"path": "/orders-repeat", "param": "customer_id", "style": "repeat", "max_keys": 4}
    async with running(shop) as url:
        connector = build_connector("shop", settings(url, batch=batch, paging=PAGING))
        keys = [c["id"] for c in shop.customers]
        try:
            found = await connector.fetch("orders", keys)
        finally:
            await connector.close()
    assert order_ids(found) == expected_orders(shop, keys)
    assert shop.calls["orders-repeat"] == 2 * 3  # 2 chunks of 8 orders, 3 pages each


async def test_a_post_batch_pages_with_the_cursor_in_the_query() -> None:
    shop = make_shop(customers=4, orders_each=2)
    batch = {"path": "/orders", "param": "customer_ids", "method": "POST"}
    async with running(shop) as url:
        connector = build_connector("shop", settings(url, batch=batch, paging=PAGING))
        keys = [c["id"] for c in shop.customers]
        try:
            found = await connector.fetch("orders", keys)
        finally:
            await connector.close()
    assert order_ids(found) == expected_orders(shop, keys)
    assert shop.calls["orders-post"] == 3


async def test_the_single_endpoint_pages_with_its_own_paging() -> None:
    shop = make_shop(customers=3, orders_each=7)  # 7 orders each: 3 pages each
    single = {"path": "/customers/{key}/orders", "items": "items", "paging": PAGING}
    async with running(shop) as url:
        connector = build_connector("shop", settings(url, single=single))
        keys = ["C000", "C002", "nobody"]
        try:
            found = await connector.fetch("orders", keys)
        finally:
            await connector.close()
    assert order_ids(found) == expected_orders(shop, ["C000", "C002"])  # the 404 is absent
    assert shop.calls["orders-of"] == 3 + 3 + 1


async def test_past_max_pages_the_source_is_unavailable() -> None:
    shop = make_shop(customers=10, orders_each=2)  # 7 pages
    batch = {"path": "/orders", "param": "customer_ids"}
    async with running(shop) as url:
        connector = build_connector(
            "shop", settings(url, batch=batch, paging={**PAGING, "max_pages": 6})
        )
        try:
            with pytest.raises(SourceUnavailable, match="more than 6 pages"):
                await connector.fetch("orders", [c["id"] for c in shop.customers])
        finally:
            await connector.close()
    assert shop.calls["orders"] == 6


async def test_a_system_that_repeats_its_cursor_is_unavailable_not_a_loop() -> None:
    shop = make_shop(customers=10, orders_each=2)
    shop.next_of = lambda offset: _cursor(3)  # always "the second page"
    batch = {"path": "/orders", "param": "customer_ids"}
    async with running(shop) as url:
        connector = build_connector("shop", settings(url, batch=batch, paging=PAGING))
        try:
            with pytest.raises(SourceUnavailable, match="same page cursor twice"):
                await connector.fetch("orders", [c["id"] for c in shop.customers])
        finally:
            await connector.close()
    assert shop.calls["orders"] == 2


BATCH = {"path": "/orders", "param": "ids"}


@pytest.mark.parametrize(
    ("orders", "key"),
    [
        (
            {"batch": BATCH, "paging": {**PAGING, "size": 3}},
            "sources.x.entities.orders.paging.size",
        ),
        (
            {"batch": BATCH, "paging": {"cursor_param": "c"}},
            "sources.x.entities.orders.paging.next_field",
        ),
        (
            {"batch": BATCH, "paging": {**PAGING, "max_pages": 0}},
            "sources.x.entities.orders.paging.max_pages",
        ),
        ({"batch": {**BATCH, "style": "csv"}}, "sources.x.entities.orders.batch.style"),
        (
            {"batch": {**BATCH, "method": "POST", "style": "repeat"}},
            "sources.x.entities.orders.batch.style",
        ),
        (
            {"single": {"path": "/o/{key}"}, "paging": PAGING},
            "sources.x.entities.orders.paging",
        ),
        (
            {"single": {"path": "/o/{key}", "paging": PAGING}, "many": False},
            "sources.x.entities.orders.single.paging",
        ),
    ],
)
def test_paging_and_style_errors_name_the_key(orders: dict[str, Any], key: str) -> None:
    with pytest.raises(ConnectorConfigError) as raised:
        build_connector("x", settings("http://h", **orders))
    assert str(raised.value).startswith(key + ":")


async def test_the_sync_resumes_with_the_systems_opaque_cursor(tmp_path: Path) -> None:
    """The system takes back only its own cursors (anything else is HTTP 400); a second
    sync, after new customers arrived, links just those."""
    shop = make_shop(customers=10, orders_each=0)
    store = CrosswalkStore(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    async with running(shop) as url:
        connector = build_connector("shop", settings(url, batch=BATCH))
        try:
            first = await sync_identity(store, [connector], KEYS, page_size=4)
            after_first = (await store.cursors())["shop"]
            calls_first = shop.calls["scan"]
            shop.customers.extend(make_shop(13, 0).customers[10:])  # C010..C012 are new
            second = await sync_identity(store, [connector], KEYS, page_size=4)
            third = await sync_identity(store, [connector], KEYS, page_size=4)
            links = await store.links()
        finally:
            await connector.close()
            await store.close()
    assert first.systems["shop"].error is None and first.systems["shop"].linked == 10
    assert calls_first == 3  # 4 + 4 + 2
    # the stored resume point is the system's cursor of the last page, not a customer id
    assert _offset(after_first) == 8
    assert second.systems["shop"].error is None
    assert second.systems["shop"].linked == 3
    assert second.systems["shop"].scanned == 5  # the last page again (2 known) and 3 new
    assert third.systems["shop"].error is None and third.systems["shop"].linked == 0
    assert sorted(link.system_id for link in links) == [f"C{n:03d}" for n in range(13)]


async def test_an_interrupted_sync_resumes_at_the_next_page(tmp_path: Path) -> None:
    """The cursor saved with each page is the next page's: a sync that stops half-way
    (the system failed) goes on where it stopped, without 400s and without gaps."""
    shop = make_shop(customers=10, orders_each=0)
    store = CrosswalkStore(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    async with running(shop) as url:
        connector = build_connector("shop", settings(url, batch=BATCH))
        real_scan = connector.scan
        scans = 0

        async def failing_third_page(after: str | None, limit: int) -> Any:
            nonlocal scans
            scans += 1
            if scans == 3:
                raise SourceUnavailable("shop", "down for a moment")
            return await real_scan(after, limit)

        try:
            connector.scan = failing_third_page  # type: ignore[method-assign]
            first = await sync_identity(store, [connector], KEYS, page_size=4)
            saved = (await store.cursors())["shop"]
            second = await sync_identity(store, [connector], KEYS, page_size=4)
        finally:
            await connector.close()
            await store.close()
    assert first.systems["shop"].error == "down for a moment"
    assert first.systems["shop"].linked == 8
    assert _offset(saved) == 8
    assert second.systems["shop"].error is None
    assert second.systems["shop"].linked == 2 and second.systems["shop"].scanned == 2
