"""Fetch every source a selection needs for a set of customers at once.

Parents (`customer`, `customers`, `customerByEmail`) call this before returning, so all
systems are asked concurrently, one batched call per source, and the fields then
resolve without awaiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import strawberry

from connectors.base import SourceUnavailable
from policies.engine import Conditional, Decision, RecordFacts
from resolvers.bindings import GraphBindings
from resolvers.context import GraphContext
from resolvers.guard import policies_of
from resolvers.types import Customer

CUSTOMER_POLICIES = policies_of(Customer)


def needed_slots(ctx: GraphContext, fields: Iterable[str]) -> set[tuple[str, str]]:
    """The (source, entity) pairs the selected fields need: none for a denied field, and
    the fact sources (consents, owner) for a field whose policy depends on the record."""
    slots: set[tuple[str, str]] = set()
    for name in fields:
        binding = ctx.bindings.customer.get(name)
        if binding is None:
            continue
        decision = ctx.guard.static(CUSTOMER_POLICIES.get(name))
        if isinstance(decision, Decision) and decision.effect == "deny":
            continue
        slots.add(binding.slot)
        if isinstance(decision, Conditional):
            for need in decision.needs:
                fact = ctx.bindings.facts.get("owner" if need == "owner" else "consents")
                if fact is not None:
                    slots.add(fact.slot)
    return slots


def record_facts(bindings: GraphBindings, customer: Any) -> RecordFacts:
    """What policy conditions may read of a customer: only what was fetched for it."""
    if not isinstance(customer, Customer):
        return RecordFacts()
    owner_binding = bindings.facts.get("owner")
    consents_binding = bindings.facts.get("consents")
    owner = None
    if owner_binding is not None:
        record = customer.records.get(owner_binding.slot)
        if isinstance(record, dict):
            owner = record.get(owner_binding.attribute or "")
    consents: dict[str, bool] = {}
    if consents_binding is not None:
        record = customer.records.get(consents_binding.slot)
        rows = consents_binding.pick(record) if isinstance(record, dict) else None
        channel = bindings.attribute("Consent", "channel")
        granted = bindings.attribute("Consent", "granted")
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict) and isinstance(row.get(channel), str):
                consents[row[channel]] = row.get(granted) is True
    return RecordFacts(consents=consents, owner=str(owner) if owner is not None else None)


async def load_customers(
    ctx: GraphContext, cuids: Sequence[str], fields: Iterable[str]
) -> list[Customer]:
    customers = [
        Customer(id=strawberry.ID(cuid), links=ctx.identity.links(cuid) or {}, records={})
        for cuid in cuids
    ]
    ctx.touched.update(cuids)

    async def fill(slot: tuple[str, str]) -> None:
        source, _ = slot
        keyed = [(customer, customer.links.get(source)) for customer in customers]
        keys = [key for _, key in keyed if key is not None]
        # Per key: a failing system may still have served some keys stale from the cache.
        loader = ctx.loader(*slot)
        values = await asyncio.gather(*(loader.load(key) for key in keys), return_exceptions=True)
        for value in values:
            if isinstance(value, BaseException) and not isinstance(value, SourceUnavailable):
                raise value
        found = iter(values)
        for customer, key in keyed:
            customer.records[slot] = next(found) if key is not None else None

    await asyncio.gather(*(fill(slot) for slot in needed_slots(ctx, fields)))
    return customers
