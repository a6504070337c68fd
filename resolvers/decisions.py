"""Where the graph's policy is decided: each declared field's rule for the request, made
once, and the one function that finishes a rule for a record.

Two steps, as the engine (policies/engine.py) has them:

- `decided`, `refused` and `allowed` read a static decision: whether it is final without
  the record, and if so whether it denies or allows. Nothing else looks inside one.
- `field_rule` is the static part of one declared Customer field for this request (role,
  purpose, verb, sign-in), with what follows from it: the systems to ask (none for a field
  refused outright; the fact sources too for a rule that reads the record), whether it is
  refused whatever the record, whether it is allowed outright (a lookup by its value needs
  that). `plan_selection` makes the rules of a whole selection in one pass: what to fetch,
  slowest system first, and what is refused. `static_rule` is the same for a policy named
  directly (a write's `edit` rules, the console's pages). Loading, planning ahead,
  lookups, writes and the console read these; none asks the engine itself.
- `FieldGuard.finish` (resolvers/guard.py) finishes a rule with one record's facts;
  `FieldGuard.decide_record` calls it for a customer, a person who restricted processing
  first. Plain fields settled in bulk, fields with arguments and a field resolved on its
  own go through `decide_record`; a write checks the restriction and calls `finish` with
  the facts it reads fresh from the owning system.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

from policies.engine import Conditional, Decision

if TYPE_CHECKING:
    from resolvers.context import GraphContext

Slot = tuple[str, str]  # (source, entity)


def decided(static: Decision | Conditional) -> TypeGuard[Decision]:
    """Final without the record: the same for every customer."""
    return static.__class__ is Decision


def refused(static: Decision | Conditional) -> TypeGuard[Decision]:
    """Denied whatever the record (role, purpose, sign-in)."""
    return static.__class__ is Decision and static.effect == "deny"


def allowed(static: Decision | Conditional) -> TypeGuard[Decision]:
    """Allowed whatever the record, unmasked."""
    return static.__class__ is Decision and static.effect == "allow"


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One declared Customer field, decided for a request without any record."""

    name: str
    static: Decision | Conditional
    slots: frozenset[Slot]  # what it needs fetched: nothing when refused outright

    @property
    def refused(self) -> bool:
        return refused(self.static)

    @property
    def allowed(self) -> bool:
        return allowed(self.static)


@dataclass(frozen=True, slots=True)
class SelectionPlan:
    """A Customer selection decided in one pass: each field's rule, the systems to ask
    (slowest first) and the fields refused whatever the record."""

    rules: Mapping[str, FieldRule]
    slots: tuple[Slot, ...]
    refused: frozenset[str]


def field_rule(ctx: GraphContext, name: str) -> FieldRule:
    """The request's rule for a declared Customer field, made once per request."""
    guard = ctx.guard
    found = guard.rules.get(name)
    if found is None:
        found = guard.rules[name] = _rule(ctx, name)
    return found


def _rule(ctx: GraphContext, name: str) -> FieldRule:
    static = ctx.guard.static(ctx.graph.policies.get(name))
    binding = ctx.bindings.customer.get(name)
    if binding is None or refused(static):
        return FieldRule(name, static, frozenset())
    slots = {binding.slot}
    if isinstance(static, Conditional):  # its conditions read the record's facts
        for need in static.needs:
            fact = ctx.bindings.facts.get("owner" if need == "owner" else "consents")
            if fact is not None:
                slots.add(fact.slot)
    return FieldRule(name, static, frozenset(slots))


def plan_selection(ctx: GraphContext, names: Iterable[str]) -> SelectionPlan:
    rules = {name: field_rule(ctx, name) for name in names}
    wanted: set[Slot] = set().union(*(rule.slots for rule in rules.values()))
    # The calls are set up one after the other (the SQL statement built, the HTTP request
    # written) before any answer can arrive, and the answer waits for the slowest call,
    # so that one goes out first.
    latency = ctx.sources.expected_latency_s
    slots = tuple(sorted(wanted, key=lambda slot: (-latency(slot[0]), slot)))
    refused = frozenset(name for name, rule in rules.items() if rule.refused)
    return SelectionPlan(rules, slots, refused)


def allowed_at_root(ctx: GraphContext) -> bool:
    """Whether the policy file's default policy, which governs the root fields, allows
    this request outright (what planning ahead needs to start a load early)."""
    return allowed(ctx.guard.static(None))


def static_rule(
    ctx: GraphContext, policy: str | None, verb: str | None = None
) -> Decision | Conditional:
    """The static part of a policy named directly, for this request (`verb`: the
    request's unless given): a write's `edit` rules, the console's pages."""
    return ctx.guard.static(policy, verb)
