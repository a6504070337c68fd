"""Fetch every source a selection needs for a set of customers at once.

Parents (`customer`, `customers`, `customerByEmail`) call this before returning, so all
systems are asked concurrently, one batched call per source, and the fields then
resolve without awaiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import strawberry

from connectors.base import SourceUnavailable
from resolvers.context import GraphContext
from resolvers.types import Customer


def needed_slots(ctx: GraphContext, fields: Iterable[str]) -> set[tuple[str, str]]:
    return {
        binding.slot for name in fields if (binding := ctx.bindings.customer.get(name)) is not None
    }


async def load_customers(
    ctx: GraphContext, cuids: Sequence[str], fields: Iterable[str]
) -> list[Customer]:
    customers = [
        Customer(id=strawberry.ID(cuid), links=ctx.identity.links(cuid) or {}, records={})
        for cuid in cuids
    ]

    async def fill(slot: tuple[str, str]) -> None:
        source, _ = slot
        keyed = [(customer, customer.links.get(source)) for customer in customers]
        keys = [key for _, key in keyed if key is not None]
        try:
            values = await ctx.loader(*slot).load_many(keys) if keys else []
        except SourceUnavailable as error:
            for customer in customers:
                customer.records[slot] = error
            return
        found = iter(values)
        for customer, key in keyed:
            customer.records[slot] = next(found) if key is not None else None

    await asyncio.gather(*(fill(slot) for slot in needed_slots(ctx, fields)))
    return customers
