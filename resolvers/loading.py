"""Fetch every source a selection needs for a set of customers at once.

Parents (`customer`, `customers`, `customerByEmail`) call this before returning, so all
systems are asked concurrently, one batched call per source, and the fields then
resolve without awaiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import strawberry
from graphql import GraphQLError

from connectors.base import SourceUnavailable
from policies.engine import Decision, RecordFacts
from resolvers.bindings import GraphBindings
from resolvers.context import GraphContext
from resolvers.decisions import Slot, decided, field_rule, plan_selection
from resolvers.guard import forbidden
from resolvers.merging import NO_RULES, merge_records
from resolvers.selection import Selection
from resolvers.types import CustomerBase, Wanted, shape_value


def not_linked(source: str) -> SourceUnavailable:
    """A system no customer is linked to: its identity sync never completed (it was down
    when the gateway synced), so its fields are unavailable rather than silently null."""
    return SourceUnavailable(source, "no record of this system is linked: sync incomplete")


def record_facts(bindings: GraphBindings, customer: Any) -> RecordFacts:
    """What policy conditions may read of a customer: only what was fetched for it."""
    if not isinstance(customer, CustomerBase):
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
        channel, granted = bindings.consent_keys
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict) and isinstance(row.get(channel), str):
                consents[row[channel]] = row.get(granted) is True
    return RecordFacts(consents=consents, owner=str(owner) if owner is not None else None)


async def load_customers(
    ctx: GraphContext,
    cuids: Sequence[str],
    fields: Selection,
    path_of: Callable[[int, str], list[str | int]],
) -> list[CustomerBase]:
    """Customers with every selected field ready: all needed systems asked at once, one
    batched call each; each plain field decided, shaped and masked in bulk as soon as
    the systems it needs have answered (while slower ones are still being waited for),
    and each field with arguments selected without any settled with its defaults (or,
    denied to the request outright, with its refusal whatever the arguments).
    `fields` maps a selected field to its response key; `path_of(index, key)` is where
    the index-th customer's field sits in the response (for errors)."""
    return await CustomerLoad(ctx, cuids, fields, path_of).done()


class CustomerLoad:
    """`load_customers`, started: its calls are tasks from the moment it is made, the
    slowest system's first, so a load started ahead of execution (resolvers/planning.py)
    has its requests out by the time the resolver awaits it."""

    def __init__(
        self,
        ctx: GraphContext,
        cuids: Sequence[str],
        fields: Selection,
        path_of: Callable[[int, str], list[str | int]],
    ) -> None:
        self.ctx = ctx
        self.cuids = list(cuids)
        self.fields = fields
        make = ctx.graph.customer
        self.customers = [
            make(id=strawberry.ID(cuid), links=ctx.identity.links(cuid) or {})
            for cuid in self.cuids
        ]
        # The customers with more than one record in a system (duplicates): all of their
        # records are read, in the same call, and merged. One lookup per customer; none
        # at all while the crosswalk holds no duplicate.
        duplicates = ctx.identity.duplicates
        self.duplicated = (
            [(c, others) for c in self.customers if (others := duplicates.get(c.id))]
            if duplicates
            else []
        )
        ctx.touched.update(self.cuids)
        self.batch = CustomerBatch(self.customers, path_of)
        plan = plan_selection(ctx, fields)
        plain, arguments = ctx.graph.plain, ctx.graph.arguments
        self.waiting = {
            name: rule.slots
            for name, rule in plan.rules.items()
            if name in plain
            or (name in arguments and (name in fields.bare or name in plan.refused))
        }
        self.answered: set[Slot] = set()
        self._settle_ready()  # refused fields need no system
        self.calls = [asyncio.ensure_future(self._fill(slot)) for slot in plan.slots]

    def _settle_ready(self) -> None:
        ctx, fields = self.ctx, self.fields
        for name in [name for name, slots in self.waiting.items() if slots <= self.answered]:
            del self.waiting[name]
            wanted = fields.below.get(name)
            if name in ctx.graph.plain:
                self.batch.settle_plain(ctx, name, fields[name], wanted)
            else:  # the defaults' shape; a refusal never shapes anything
                shape = ctx.graph.arguments[name](ctx, {}, wanted)
                self.batch.prepare(ctx, name, fields[name], shape, None)

    async def _fill(self, slot: Slot) -> None:
        source, entity = slot
        customers = self.customers
        if source not in self.ctx.identity.linked_systems:
            unlinked = not_linked(source)
            for customer in customers:
                customer.records[slot] = unlinked
        else:
            keys = [key for customer in customers if (key := customer.links.get(source))]
            others = [
                (customer, ids) for customer, dups in self.duplicated if (ids := dups.get(source))
            ]
            for _, ids in others:
                keys.extend(ids)
            # Per key: a failing system may still have served some keys stale from the cache.
            found = await self.ctx.fetch_many(source, entity, keys)
            for customer in customers:
                key = customer.links.get(source)
                customer.records[slot] = found.get(key) if key is not None else None
            if others:
                rules = self.ctx.bindings.merges.get(slot, NO_RULES)
                for customer, ids in others:
                    fetched = [customer.records[slot], *(found.get(key) for key in ids)]
                    customer.records[slot] = merge_records(fetched, rules)
        self.answered.add(slot)
        self._settle_ready()

    async def done(self) -> list[CustomerBase]:
        await asyncio.gather(*self.calls)
        if len(self.customers) > 1:
            # Held by the context, not by the customers: a customer <-> batch cycle left
            # each page of 100 to the cyclic collector, whose full passes stall every
            # request in flight (bench (b)'s tail).
            for customer in self.customers:
                self.ctx.siblings[id(customer)] = self.batch
        return self.customers

    def cancel(self) -> None:
        for call in self.calls:
            call.cancel()


@dataclass(eq=False)
class CustomerBatch:
    """The customers one parent resolved together, whose fields are settled in bulk: the
    policy's static part once, its record part per customer only when the policy has
    one; then the value, masked if so.

    Plain fields are settled by the parent. A field with arguments (`tickets(first: 3)`)
    is settled when the first customer resolves it, with the arguments strawberry gave
    that resolver (the same for every sibling), or by the parent when it has none or
    is denied outright: each customer's value goes to its `prepared`, where the executor
    reads it instead of calling the resolver again. A denied customer's value is the
    refusal, which the executor reports at the field's path as the guard would have."""

    customers: Sequence[CustomerBase]
    path_of: Callable[[int, str], list[str | int]]
    settled: set[str] = field(default_factory=set)  # response keys of fields with arguments
    refusals: dict[Decision, GraphQLError] = field(default_factory=dict)

    def settle_plain(self, ctx: GraphContext, name: str, key: str, wanted: Wanted = None) -> None:
        attribute, shape = ctx.graph.plain[name]
        for customer, value in self._settle(ctx, name, key, shape(ctx, wanted)):
            setattr(customer, attribute, value)

    def prepare(
        self,
        ctx: GraphContext,
        name: str,
        key: str,
        shape: Callable[[Any], Any],
        resolving: CustomerBase | None,
    ) -> None:
        if key in self.settled:
            return
        self.settled.add(key)
        for customer, value in self._settle(ctx, name, key, shape, skip=resolving):
            customer.prepared[key] = value

    def _settle(
        self,
        ctx: GraphContext,
        name: str,
        key: str,
        shape: Callable[[Any], Any],
        skip: CustomerBase | None = None,
    ) -> list[tuple[CustomerBase, Any]]:
        """Each customer's field, noted in the log: its value, masked if so, or for a
        denial the FORBIDDEN error, returned rather than raised (graphql-core, or the
        executor, reports it at the field's path) and one per decision for the batch.
        One loop per field with what is the same for every customer looked up once: a
        page settles some 800 values."""
        guard = ctx.guard
        static = field_rule(ctx, name).static
        binding = ctx.bindings.customer.get(name)
        slot = binding.slot if binding is not None else None
        blocked = guard.blocked  # people who restricted processing, for this purpose
        uniform = decided(static)  # the same for every customer not blocked
        if uniform:  # noted at once
            noted = [c.id for c in self.customers if c is not skip and c.id not in blocked]
            guard.note_all(noted, name, static)  # type: ignore[arg-type]
        settled: list[tuple[CustomerBase, Any]] = []
        for index, customer in enumerate(self.customers):
            if customer is skip:
                continue
            if uniform and not (blocked and customer.id in blocked):
                decision: Decision = static  # type: ignore[assignment]
            else:
                decision = guard.decide_record(static, customer)
                guard.note(customer.id, name, decision)
            if decision.effect == "deny":
                value = self.refusals.get(decision)
                if value is None:
                    value = self.refusals[decision] = forbidden(decision)
            elif binding is None or slot is None:
                value = None
            else:
                value, failure = shape_value(binding, customer.records.get(slot), shape)
                if failure is not None:
                    ctx.fail(failure, self.path_of(index, key))
                if decision.effect == "mask":
                    value = guard.mask(decision, value)
            settled.append((customer, value))
        return settled


class EntityBatch:
    """`_entities(representations:)` of a federation router: graphql-core asks each
    representation's reference in turn, synchronously; each gets a future here, and the
    customers are loaded together once the loop is done (one batched call per system, as
    for a page), their fields decided by the forwarded token's policies."""

    def __init__(self, ctx: GraphContext, fields: Selection, here: list[str | int]) -> None:
        self.ctx = ctx
        self.fields = fields
        self.here = here
        self.wanted: list[tuple[int, Any, asyncio.Future[Any]]] = []
        asyncio.get_running_loop().call_soon(self._start)

    def add(self, index: int, cuid: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.wanted.append((index, cuid, future))
        return future

    def _start(self) -> None:
        self.ctx.entity_batch = None  # a later _entities field starts its own
        self.task = asyncio.ensure_future(self._load())  # held: the futures wait on it

    async def _load(self) -> None:
        from connectors.identity.keys import is_cuid

        known = [
            (i, c, f)
            for i, c, f in self.wanted
            if isinstance(c, str) and is_cuid(c) and self.ctx.identity.links(c) is not None
        ]
        for _, _, future in self.wanted:
            if not future.done() and not any(future is f for _, _, f in known):
                future.set_result(None)
        if not known:
            return
        indices = [index for index, _, _ in known]
        here = self.here
        try:
            customers = await CustomerLoad(
                self.ctx,
                [cuid for _, cuid, _ in known],
                self.fields,
                lambda position, key: [*here, indices[position], key],
            ).done()
        except Exception as error:  # every waiting reference reports it
            for _, _, future in known:
                if not future.done():  # a reference whose request was cancelled is done
                    future.set_exception(error)
            return
        for (_, _, future), customer in zip(known, customers, strict=True):
            if not future.done():
                future.set_result(customer)


def entity_reference(info: Any, cuid: Any) -> Any:
    """A router's reference to a customer by CUID: its load, batched with the request's
    other references (None for an id that is no customer's)."""
    from resolvers.selection import selected_fields

    ctx: GraphContext = info.context
    batch = ctx.entity_batch
    if batch is None:
        here = info.path.as_list()
        batch = ctx.entity_batch = EntityBatch(ctx, selected_fields(info), here)
    # graphql-core asks the references in the representations' order: this one answers
    # at [_entities, index].
    return batch.add(len(batch.wanted), cuid)
