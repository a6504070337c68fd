"""Fetch every source a selection needs for a set of customers at once.

Parents (`customer`, `customers`, `customerByEmail`) call this before returning, so all
systems are asked concurrently, one batched call per source, and the fields then
resolve without awaiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import strawberry
from graphql import GraphQLError

from policies.engine import Conditional, Decision, RecordFacts
from resolvers.bindings import GraphBindings
from resolvers.context import GraphContext
from resolvers.guard import forbidden, policies_of
from resolvers.types import PLAIN_FIELDS, Customer, shape_value

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
    ctx: GraphContext,
    cuids: Sequence[str],
    fields: Mapping[str, str],
    path_of: Callable[[int, str], list[str | int]],
) -> list[Customer]:
    """Customers with every selected field ready: all needed systems asked at once, one
    batched call each, then each plain field decided, shaped and masked in bulk.
    `fields` maps a selected field to its response key; `path_of(index, key)` is where
    the index-th customer's field sits in the response (for errors)."""
    customers = [
        Customer(id=strawberry.ID(cuid), links=ctx.identity.links(cuid) or {}) for cuid in cuids
    ]
    ctx.touched.update(cuids)

    async def fill(slot: tuple[str, str]) -> None:
        source, entity = slot
        keys = [key for customer in customers if (key := customer.links.get(source))]
        # Per key: a failing system may still have served some keys stale from the cache.
        found = await ctx.fetch_many(source, entity, keys)
        for customer in customers:
            key = customer.links.get(source)
            customer.records[slot] = found.get(key) if key is not None else None

    await asyncio.gather(*(fill(slot) for slot in needed_slots(ctx, fields)))
    batch = CustomerBatch(customers, path_of)
    for name, key in fields.items():
        if name in PLAIN_FIELDS:
            batch.settle_plain(ctx, name, key)
    if len(customers) > 1:
        # Held by the context, not by the customers: a customer <-> batch cycle left each
        # page of 100 to the cyclic collector, whose full passes stalled for 70-90 ms.
        for customer in customers:
            ctx.siblings[id(customer)] = batch
    return customers


@dataclass(eq=False)
class CustomerBatch:
    """The customers one parent resolved together, whose fields are settled in bulk: the
    policy's static part once, its record part per customer only when the policy has
    one; then the value, masked if so.

    Plain fields are settled by the parent. A field with arguments (`tickets(first: 3)`)
    is settled when the first customer resolves it, with the arguments strawberry gave
    that resolver (the same for every sibling): each sibling's value goes to its
    `prepared`, where the executor reads it instead of calling the resolver again. A
    denied sibling gets nothing there, so its own resolver runs and its guard raises."""

    customers: Sequence[Customer]
    path_of: Callable[[int, str], list[str | int]]
    settled: set[str] = field(default_factory=set)  # response keys of fields with arguments

    def settle_plain(self, ctx: GraphContext, name: str, key: str) -> None:
        attribute, shape = PLAIN_FIELDS[name]
        errors: dict[Decision, GraphQLError] = {}

        def shaped(value: Any) -> Any:
            return shape(ctx, value)

        for index, customer, decision in self._decisions(ctx, name):
            ctx.guard.note(customer.id, name, decision)
            if decision.effect == "deny":
                # Returned, not raised: graphql-core reports it at this field's path.
                error = errors.get(decision) or errors.setdefault(decision, forbidden(decision))
                setattr(customer, attribute, error)
            else:
                value = self._value(ctx, name, key, index, decision, shaped)
                setattr(customer, attribute, value)

    def prepare(
        self,
        ctx: GraphContext,
        name: str,
        key: str,
        shape: Callable[[Any], Any],
        resolving: Customer,
    ) -> None:
        if key in self.settled:
            return
        self.settled.add(key)
        for index, customer, decision in self._decisions(ctx, name, skip=resolving):
            if decision.effect != "deny":  # else its guard notes and raises it
                ctx.guard.note(customer.id, name, decision)
                customer.prepared[key] = self._value(ctx, name, key, index, decision, shape)

    def _decisions(
        self, ctx: GraphContext, name: str, skip: Customer | None = None
    ) -> Iterator[tuple[int, Customer, Decision]]:
        """Each customer's decision on the field."""
        guard = ctx.guard
        static = guard.static(CUSTOMER_POLICIES.get(name))
        for index, customer in enumerate(self.customers):
            if customer is skip:
                continue
            decision = (
                static if isinstance(static, Decision) else guard.decide_for(static, customer)
            )
            yield index, customer, decision

    def _value(
        self,
        ctx: GraphContext,
        name: str,
        key: str,
        index: int,
        decision: Decision,
        shape: Callable[[Any], Any],
    ) -> Any:
        """An allowed or masked field's value from the fetched record."""
        binding = ctx.bindings.customer.get(name)
        if binding is None:
            return None
        customer = self.customers[index]
        value, failure = shape_value(binding, customer.records.get(binding.slot), shape)
        if failure is not None:
            ctx.fail(failure, self.path_of(index, key))
        return ctx.guard.mask(decision, value) if decision.effect == "mask" else value
