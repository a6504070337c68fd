"""The offline stores' REST API (v3), in process: shoppers and their store visits.

Its own shape and its own paging, unlike the demo helpdesk's:

- `GET /v3/shoppers?cursor=&limit=` scans shoppers in shopper-number order:
  `{"shoppers": [{"shopperNo", "mail", "mobile"}], "next": "<opaque>" | null}`; limit is
  capped at 200, a cursor it did not hand out is HTTP 400.
- `GET /v3/visits?shopper=S-1&shopper=S-2[&cursor=]` takes each shopper as its own
  parameter (at most 100; "S-1,S-2" is HTTP 400) and answers at most 25 visits a page:
  `{"visits": [{"visitNo", "shopperNo", "store", "amountCents", "visitedAt"}], "next"}`.
  A cursor belongs to its query: sent with other shoppers it is HTTP 400.
- `GET /healthz`.

`StoresSystem` counts requests per path and can be stopped (down) and started again on
the same port.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from tests.systems.data import StoreShopper, StoreVisit

__all__ = ["MAX_SHOPPERS", "SCAN_LIMIT", "VISITS_PAGE", "StoresSystem", "stores_app"]

SCAN_LIMIT = 200
VISITS_PAGE = 25
MAX_SHOPPERS = 100


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(
        payload, status=status, dumps=lambda obj: json.dumps(obj, ensure_ascii=False)
    )


def _bad(message: str) -> web.Response:
    return _json({"error": message}, status=400)


def _encode(kind: str, value: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}|{value}".encode()).decode().rstrip("=")


def _decode(kind: str, cursor: str) -> str | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    found, sep, value = text.partition("|")
    return value if sep and found == kind else None


def _shopper_json(s: StoreShopper) -> dict[str, Any]:
    return {"shopperNo": s.shopper_no, "mail": s.mail, "mobile": s.mobile}


def _visit_json(v: StoreVisit) -> dict[str, Any]:
    return {
        "visitNo": v.visit_no,
        "shopperNo": v.shopper_no,
        "store": v.store,
        "amountCents": v.amount_cents,
        "visitedAt": v.visited_at,
    }


class Stores:
    """The records, served as the API reads them; `add` stands for new shoppers signing up."""

    def __init__(self, shoppers: tuple[StoreShopper, ...]) -> None:
        self.shoppers: list[dict[str, Any]] = []
        self.visits: dict[str, list[dict[str, Any]]] = {}
        self.add(shoppers)

    def add(self, shoppers: tuple[StoreShopper, ...] | list[StoreShopper]) -> None:
        for shopper in shoppers:
            self.shoppers.append(_shopper_json(shopper))
            self.visits[shopper.shopper_no] = [_visit_json(v) for v in shopper.visits]
        self.shoppers.sort(key=lambda s: s["shopperNo"])


STORES = web.AppKey("stores", Stores)
REQUESTS = web.AppKey("requests", Counter[str])


async def _shoppers(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    try:
        limit = min(int(request.query.get("limit", "50")), SCAN_LIMIT)
    except ValueError:
        return _bad("limit must be an integer")
    if limit < 1:
        return _bad("limit must be positive")
    cursor = request.query.get("cursor")
    offset = 0
    if cursor:
        # The cursor holds the position as this system keeps it: an offset, encoded.
        position = _decode("shoppers", cursor)
        if position is None or not position.isdigit():
            return _bad("invalid cursor")
        offset = int(position)
    page = stores.shoppers[offset : offset + limit]
    more = offset + limit < len(stores.shoppers)
    return _json(
        {"shoppers": page, "next": _encode("shoppers", str(offset + limit)) if more else None}
    )


def _query_tag(shoppers: list[str]) -> str:
    return hashlib.sha256("\n".join(shoppers).encode()).hexdigest()[:12]


async def _visits(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    wanted = list(dict.fromkeys(request.query.getall("shopper", [])))
    if not wanted:
        return _bad("shopper is required (one parameter per shopper)")
    if any("," in s for s in wanted):
        return _bad("one shopper number per shopper parameter")
    if len(wanted) > MAX_SHOPPERS:
        return _bad(f"at most {MAX_SHOPPERS} shoppers per request")
    tag = _query_tag(wanted)
    offset = 0
    if cursor := request.query.get("cursor"):
        position = _decode("visits", cursor)
        found_tag, _, number = (position or "").partition(":")
        if found_tag != tag or not number.isdigit():
            return _bad("invalid cursor for this query")
        offset = int(number)
    every = [v for s in wanted for v in stores.visits.get(s, ())]
    page = every[offset : offset + VISITS_PAGE]
    more = offset + VISITS_PAGE < len(every)
    following = _encode("visits", f"{tag}:{offset + VISITS_PAGE}") if more else None
    return _json({"visits": page, "next": following})


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[REQUESTS][f"{request.method} {request.path}"] += 1
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"error": exc.reason.lower()}, status=exc.status)


def stores_app(stores: Stores, requests: Counter[str]) -> web.Application:
    app = web.Application(middlewares=[_count])
    app[STORES] = stores
    app[REQUESTS] = requests
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/v3/shoppers", _shoppers)
    app.router.add_get("/v3/visits", _visits)
    return app


class StoresSystem:
    """The stores API on 127.0.0.1: `start()` (a free port the first time, the same one
    after a `stop()`), `stop()` to take it down, `requests` counted per "METHOD /path"."""

    def __init__(self, shoppers: tuple[StoreShopper, ...]) -> None:
        self.stores = Stores(shoppers)
        self.requests: Counter[str] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the stores system was never started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def calls(self, path: str | None = None) -> int:
        """Requests since the last reset, to one path ("/v3/visits") or in all."""
        if path is None:
            return self.requests.total()
        return sum(n for key, n in self.requests.items() if key.split(" ", 1)[1] == path)

    def reset(self) -> None:
        self.requests.clear()

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(stores_app(self.stores, self.requests), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
