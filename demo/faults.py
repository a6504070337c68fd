"""Admin and fault hooks shared by the demo HTTP systems: latency, injected failures, counts.

`/_admin/stats`, `/_admin/reset` and `/_admin/fault` let tests and benchmarks see how often a
system was called and make it slow, failing, garbled or hanging at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["FAULTS", "FAULT_MODES", "FaultState", "install_faults", "json_response"]

FAULT_MODES = ("ok", "error", "garbage", "hang")
HANG_SECONDS = 30.0
ADMIN_PREFIX = "/_admin/"


@dataclass
class FaultState:
    """What one system is told to do now, and what it has seen since the last reset."""

    default_latency_ms: int = 0
    latency_ms: int = 0
    mode: str = "ok"
    requests: Counter[str] = field(default_factory=Counter)
    last_traceparent: str | None = None
    # Set when the mode changes, so requests hung by the previous mode answer at once.
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def set_mode(self, mode: str) -> None:
        self.released.set()
        self.released = asyncio.Event()
        self.mode = mode

    def reset(self) -> None:
        self.set_mode("ok")
        self.latency_ms = self.default_latency_ms
        self.requests.clear()
        self.last_traceparent = None

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(sorted(self.requests.items())),
            "total": self.requests.total(),
            "last_traceparent": self.last_traceparent,
            "mode": self.mode,
            "latency_ms": self.latency_ms,
        }


FAULTS = web.AppKey("faults", FaultState)


def json_response(payload: Any, status: int = 200) -> web.Response:
    """JSON with non-ASCII kept as is, as the department systems send their names and emails."""
    return web.json_response(
        payload, status=status, dumps=lambda obj: json.dumps(obj, ensure_ascii=False)
    )


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource else '(unmatched)'}"


@web.middleware
async def _fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(ADMIN_PREFIX):
        return await handler(request)
    state = request.app[FAULTS]
    state.requests[_route_template(request)] += 1
    state.last_traceparent = request.headers.get("traceparent")
    if state.latency_ms > 0:
        await asyncio.sleep(state.latency_ms / 1000)
    if state.mode == "error":
        return json_response({"error": "service unavailable (injected fault)"}, status=503)
    if state.mode == "garbage":
        return web.Response(status=200, text="<html>not json", content_type="text/html")
    if state.mode == "hang":
        # No answer for 30 s, or until the fault is changed or reset (so tests need not wait).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANG_SECONDS):
                await state.released.wait()
    return await handler(request)


async def _stats(request: web.Request) -> web.Response:
    return json_response(request.app[FAULTS].stats())


async def _reset(request: web.Request) -> web.Response:
    state = request.app[FAULTS]
    state.reset()
    return json_response(state.stats())


async def _set_fault(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return json_response({"error": "body must be JSON"}, status=400)
    if not isinstance(body, dict) or body.get("mode") not in FAULT_MODES:
        return json_response({"error": f"mode must be one of {', '.join(FAULT_MODES)}"}, 400)
    latency = body.get("latency_ms")
    if latency is not None and (type(latency) is not int or latency < 0):
        return json_response({"error": "latency_ms must be a non-negative integer"}, 400)
    state = request.app[FAULTS]
    state.set_mode(body["mode"])
    if latency is not None:
        state.latency_ms = latency
    return json_response(state.stats())


def install_faults(app: web.Application, latency_ms: int = 0) -> FaultState:
    """Add the fault middleware and the `/_admin/*` routes to `app` (before it starts)."""
    state = FaultState(default_latency_ms=latency_ms, latency_ms=latency_ms)
    app[FAULTS] = state
    app.middlewares.append(_fault_middleware)
    app.router.add_get("/_admin/stats", _stats)
    app.router.add_post("/_admin/reset", _reset)
    app.router.add_post("/_admin/fault", _set_fault)
    return state
