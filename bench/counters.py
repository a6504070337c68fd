"""Counting calls to the department systems: the demo HTTP systems count their own
(`/_admin/stats`), the gateway counts its SQL calls and its requests in `/metrics`, and the
peers' customers subgraph counts its SQL queries and operations at `/_admin/stats`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp

SYSTEMS = ("sales", "service", "marketing")


def metric_sum(exposition: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples of `name` (over all label sets, or those carrying `labels`)."""
    total = 0.0
    for line in exposition.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total


async def get_json(http: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with http.get(url) as response:
        response.raise_for_status()
        body = await response.json()
        return dict(body)


def _number(stats: Mapping[str, object], key: str) -> float:
    value = stats.get(key, 0)
    return float(value) if isinstance(value, int | float) else 0.0


async def admin_total(http: aiohttp.ClientSession, base_url: str) -> float:
    """Requests a demo HTTP system (or the peers' customers subgraph) has seen."""
    return _number(await get_json(http, base_url + "/_admin/stats"), "total")


async def gateway_metrics(http: aiohttp.ClientSession, base_url: str) -> str:
    async with http.get(base_url + "/metrics") as response:
        response.raise_for_status()
        return await response.text()


@dataclass(frozen=True)
class Counts:
    """Calls per system and the requests they served, at one moment."""

    calls: Mapping[str, float]
    requests: float

    def per_request(self, before: Counts) -> dict[str, float | None]:
        served = self.requests - before.requests
        if served <= 0:
            return {name: None for name in self.calls}
        return {
            name: round((self.calls[name] - before.calls.get(name, 0.0)) / served, 3)
            for name in self.calls
        }


CountSource = Callable[[], Awaitable[Counts]]


def c360_counts(
    http: aiohttp.ClientSession, gateway_url: str, admin: Mapping[str, str]
) -> CountSource:
    """Sales calls and requests from the gateway's /metrics, the HTTP systems' own counts."""

    async def snapshot() -> Counts:
        text = await gateway_metrics(http, gateway_url)
        calls = {
            "sales": metric_sum(text, "c360_source_requests_total", {"source": "sales"}),
            "service": await admin_total(http, admin["service"]),
            "marketing": await admin_total(http, admin["marketing"]),
        }
        return Counts(calls, metric_sum(text, "c360_requests_total"))

    return snapshot


def peer_counts(
    http: aiohttp.ClientSession, customers_subgraph: str, admin: Mapping[str, str]
) -> CountSource:
    """For the Node gateways: each of their requests is one operation on the customers
    subgraph (the query plan starts there), which also counts its SQL queries."""

    async def snapshot() -> Counts:
        stats = await get_json(http, customers_subgraph + "/_admin/stats")
        calls = {
            "sales": _number(stats, "total"),
            "service": await admin_total(http, admin["service"]),
            "marketing": await admin_total(http, admin["marketing"]),
        }
        return Counts(calls, _number(stats, "operations"))

    return snapshot
