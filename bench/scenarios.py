"""The scenarios (a)-(e): which query, as whom, in what state of the systems, and what a
correct answer looks like. The peers get the same queries written in their schema, where a
customer's tickets hang off `requester` and its marketing fields off `contact` (federation
entities of the helpdesk and marketing subgraphs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# Fields from all three systems: sales (name, email, phone, lifetimeValue), service
# (tickets, satisfaction), marketing (segment, consents). No nested `orders`: that is a
# second batched call to sales, and (b)'s target is one call per system.
_FIELDS = """id name email phone lifetimeValue
    tickets { id subject status } satisfaction
    segment consents { channel granted }"""
_PEER_FIELDS = """id name email phone lifetimeValue
    requester { tickets { id subject status } satisfaction }
    contact { segment consents { channel granted } }"""


def _one(fields: str) -> str:
    return f"query One($id: ID!) {{ customer(id: $id) {{ {fields} }} }}"


def _page(fields: str) -> str:
    return (
        "query Page { customers(first: 100) { edges { cursor node { "
        + fields
        + " } } pageInfo { hasNextPage endCursor } } }"
    )


@dataclass(frozen=True)
class Query:
    name: str  # the scenario letter it comes from: "a", "b" or "d"
    c360: str
    peer: str | None  # None: the peers have nothing equivalent (no policies)
    per_customer: bool  # vary the customer id across requests

    def bodies(self, text: str, cuids: Sequence[str]) -> list[bytes]:
        """Request bodies to cycle through: one per customer, or the one page query."""
        if not self.per_customer:
            return [orjson.dumps({"query": text})]
        return [orjson.dumps({"query": text, "variables": {"id": cuid}}) for cuid in cuids]


ONE = Query("a", _one(_FIELDS), _one(_PEER_FIELDS), per_customer=True)
PAGE = Query("b", _page(_FIELDS), _page(_PEER_FIELDS), per_customer=False)
# As `marketing`: nationalId, orders, tickets and satisfaction are denied, phone and address
# masked, email allowed only with the customer's email consent: a decision per field and a
# consent check per customer, over a page of 100.
POLICY = Query(
    "d",
    _page(
        "id name email phone nationalId address lifetimeValue orders(first: 3) { id total } "
        "tickets { id subject } satisfaction segment consents { channel granted }"
    ),
    None,
    per_customer=False,
)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    queries: tuple[Query, ...]
    role: str = "sales"
    purpose: str = "sales"
    cache: bool = False
    fault: str | None = None  # a system put in fault mode "error" for the scenario
    allowed_codes: frozenset[str] = frozenset()
    required_codes: frozenset[str] = frozenset()
    peers: bool = False

    def label(self, query: Query) -> str:
        return self.key if len(self.queries) == 1 else f"{self.key}:{query.name}"


SCENARIOS: Mapping[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("a", "one customer, fields from all three systems", (ONE,), peers=True),
        Scenario("b", "customers(first: 100), fields from all three systems", (PAGE,), peers=True),
        Scenario("c", "(a) and (b) on a warm cache", (ONE, PAGE), cache=True),
        Scenario(
            "d",
            "policy-heavy page as marketing (denied, masked, consent-conditional fields)",
            (POLICY,),
            role="marketing",
            purpose="marketing",
            allowed_codes=frozenset({"FORBIDDEN"}),
        ),
        Scenario(
            "e",
            "(a) with the service system failing (fault mode error)",
            (ONE,),
            fault="service",
            allowed_codes=frozenset({"SOURCE_UNAVAILABLE"}),
            required_codes=frozenset({"SOURCE_UNAVAILABLE"}),
        ),
    )
}


def problem_with(status: int, body: Any, scenario: Scenario, *, peer: bool = False) -> str | None:
    """Why an answer is not what the scenario should get, or None when it is."""
    if status != 200:
        return f"HTTP {status}: {str(body)[:200]}"
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        return f"no data: {str(body)[:200]}"
    if not any(value is not None for value in body["data"].values()):
        return f"null root field: {str(body)[:200]}"
    errors = body.get("errors") or []
    if peer:
        # The peers phrase failures their own way; only (e) may have any.
        return None if scenario.fault or not errors else f"errors: {str(errors)[:200]}"
    codes = {(error.get("extensions") or {}).get("code") for error in errors}
    unexpected = codes - scenario.allowed_codes
    missing = scenario.required_codes - codes
    if unexpected:
        return f"unexpected error codes {sorted(map(str, unexpected))}: {str(errors)[:200]}"
    if missing:
        return f"missing error codes {sorted(missing)}"
    return None
