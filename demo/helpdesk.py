"""The service department's helpdesk: requesters and tickets over a small JSON REST API (v2).

`PATCH /api/v2/requesters/{id}` with `{"phone": ...}` and/or `{"email": ...}` corrects a
requester (in memory, for the life of the process).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from demo.faults import install_faults, json_response
from demo.people import DemoWorld, HelpdeskRequester, HelpdeskTicket

__all__ = ["MAX_BATCH_REQUESTERS", "MAX_PAGE", "helpdesk_app"]

MAX_PAGE = 500
DEFAULT_PAGE = 100
MAX_BATCH_REQUESTERS = 200


def _requester_json(r: HelpdeskRequester) -> dict[str, Any]:
    return {"id": r.id, "email": r.email, "phone": r.phone, "name": r.name}


def _ticket_json(t: HelpdeskTicket) -> dict[str, Any]:
    return {
        "id": t.id,
        "requester_id": t.requester_id,
        "subject": t.subject,
        "status": t.status,
        "csat": t.csat,
        "created_at": t.created_at,
        "closed_at": t.closed_at,
    }


@dataclass(frozen=True)
class Helpdesk:
    """The helpdesk's records, indexed the ways its API reads them."""

    ids: list[str]  # sorted, for cursor pages
    requesters: dict[str, dict[str, Any]]
    by_email: dict[str, list[dict[str, Any]]]
    tickets: dict[str, list[dict[str, Any]]]

    @classmethod
    def of(cls, world: DemoWorld) -> Helpdesk:
        ordered = sorted(world.service.requesters, key=lambda r: r.id)
        by_email: dict[str, list[dict[str, Any]]] = defaultdict(list)
        requesters = {}
        for r in ordered:
            requesters[r.id] = _requester_json(r)
            by_email[_email_key(r.email)].append(requesters[r.id])
        tickets: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for t in world.service.tickets:
            tickets[t.requester_id].append(_ticket_json(t))
        return cls([r.id for r in ordered], requesters, dict(by_email), dict(tickets))


HELPDESK = web.AppKey("helpdesk", Helpdesk)


def _email_key(email: str) -> str:
    return email.strip().casefold()


def _bad_request(message: str) -> web.Response:
    return json_response({"error": message}, status=400)


async def _list_requesters(request: web.Request) -> web.Response:
    desk = request.app[HELPDESK]
    try:
        limit = int(request.query.get("limit", DEFAULT_PAGE))
    except ValueError:
        return _bad_request("limit must be an integer")
    if not 1 <= limit <= MAX_PAGE:
        return _bad_request(f"limit must be between 1 and {MAX_PAGE}")
    after = request.query.get("after")
    start = bisect.bisect_right(desk.ids, after) if after else 0
    page = desk.ids[start : start + limit]
    more = start + limit < len(desk.ids)
    return json_response(
        {
            "requesters": [desk.requesters[i] for i in page],
            "next_cursor": page[-1] if more and page else None,
        }
    )


async def _get_requester(request: web.Request) -> web.Response:
    requester = request.app[HELPDESK].requesters.get(request.match_info["id"])
    if requester is None:
        return json_response({"error": "requester not found"}, status=404)
    return json_response({"requester": requester})


async def _lookup_requesters(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _bad_request("body must be JSON")
    emails = body.get("emails") if isinstance(body, dict) else None
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        return _bad_request('body must be {"emails": [string, ...]}')
    desk = request.app[HELPDESK]
    found: dict[str, dict[str, Any]] = {}  # by id: an email asked twice is answered once
    for email in emails:
        for requester in desk.by_email.get(_email_key(email), ()):
            found.setdefault(requester["id"], requester)
    return json_response({"requesters": list(found.values())})


EDITABLE = ("email", "phone")


async def _patch_requester(request: web.Request) -> web.Response:
    desk = request.app[HELPDESK]
    requester = desk.requesters.get(request.match_info["id"])
    if requester is None:
        return json_response({"error": "requester not found"}, status=404)
    try:
        body = await request.json()
    except ValueError:
        return _bad_request("body must be JSON")
    if not isinstance(body, dict) or not body:
        return _bad_request('body must be an object, e.g. {"phone": "13800138000"}')
    unknown = sorted(set(body) - set(EDITABLE))
    if unknown:
        return _bad_request(f"{unknown[0]} cannot be changed (only {', '.join(EDITABLE)})")
    for name, value in body.items():
        if not isinstance(value, str) or not value.strip():
            return _bad_request(f"{name} must be a non-empty string")
    if "email" in body and _email_key(body["email"]) != _email_key(requester["email"]):
        old_key = _email_key(requester["email"])
        others = [r for r in desk.by_email[old_key] if r is not requester]
        if others:
            desk.by_email[old_key] = others
        else:
            del desk.by_email[old_key]
        desk.by_email.setdefault(_email_key(body["email"]), []).append(requester)
    requester.update(body)
    return json_response({"requester": requester})


async def _requester_tickets(request: web.Request) -> web.Response:
    desk = request.app[HELPDESK]
    requester_id = request.match_info["id"]
    if requester_id not in desk.requesters:
        return json_response({"error": "requester not found"}, status=404)
    return json_response({"tickets": desk.tickets.get(requester_id, [])})


async def _batch_tickets(request: web.Request) -> web.Response:
    if "requester_ids" not in request.query:
        return _bad_request("requester_ids is required")
    ids = list(dict.fromkeys(i for i in request.query["requester_ids"].split(",") if i))
    if len(ids) > MAX_BATCH_REQUESTERS:
        return _bad_request(f"at most {MAX_BATCH_REQUESTERS} requester_ids per request")
    tickets = request.app[HELPDESK].tickets
    return json_response({"tickets": [t for i in ids for t in tickets.get(i, ())]})


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    # aiohttp answers unknown paths and wrong methods in plain text; this API speaks JSON only.
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response({"error": exc.reason.lower()}, status=exc.status)


def helpdesk_app(world: DemoWorld, *, latency_ms: int = 0) -> web.Application:
    """The helpdesk REST API over `world.service`, with the `/_admin/*` fault hooks."""
    app = web.Application(middlewares=[_json_errors])
    app[HELPDESK] = Helpdesk.of(world)
    install_faults(app, latency_ms)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/v2/requesters", _list_requesters)
    # "lookup" is registered before "{id}" so that it is never taken for a requester id.
    app.router.add_post("/api/v2/requesters/lookup", _lookup_requesters)
    app.router.add_get("/api/v2/requesters/{id}", _get_requester)
    app.router.add_patch("/api/v2/requesters/{id}", _patch_requester)
    app.router.add_get("/api/v2/requesters/{id}/tickets", _requester_tickets)
    app.router.add_get("/api/v2/tickets", _batch_tickets)
    return app
