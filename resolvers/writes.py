"""Declared writes: each Mutation field goes to the one system that owns what it changes.

Built from the declaration's `type Mutation` (`@write(action: "source.action",
customer:, policy:, version:)`, input fields `@edits(field:)`, `@check(as:)`). A write runs,
in order: the customer and its record in the owning system (NOT_FOUND), every value
checked and normalised (BAD_USER_INPUT naming the input field), every changed field
decided with the `edit` verb (FORBIDDEN, or INSUFFICIENT_AUTH naming the sign-in a rule
needs) — all before anything is sent; then `ifVersion` against a fresh read (CONFLICT),
the system's own write, once (no retry), and after it the cache entries of that
customer in that system dropped (every instance sharing Redis), the crosswalk's keys
moved when an email or phone changed, and a write entry for the access record that names
fields and keyed hashes of their values, never a value. One system per mutation field:
a request with several writes runs them in order and reports each (not atomic).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import inspect
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, Optional

import strawberry
from strawberry.types import Info

from connectors.base import SourceUnavailable, WriteConflict, WriteRefused, WriteValueError
from connectors.identity.keys import is_cuid
from policies.directive import Policy
from policies.engine import Conditional, Decision, RecordFacts
from resolvers.context import GraphContext
from resolvers.decisions import allowed, decided, static_rule
from resolvers.declaration import ROOT, Argument, WriteDecl
from resolvers.inputs import CHECKS
from resolvers.loading import CustomerLoad, record_facts
from resolvers.selection import selected_fields
from resolvers.types import Graph, user_error, version_token, with_signature

IDEMPOTENCY_HEADER = "idempotency-key"


@dataclass(frozen=True, slots=True)
class Change:
    """One value a write sends: its name in the system's action, where the caller put it
    (for errors), the Customer field it changes (None: the mutation's own policy)."""

    name: str
    at: str
    value: Any
    edits: str | None
    check: str | None


@dataclass
class IdempotentWrites:
    """Answers to writes by `Idempotency-Key` (per subject), so that a retried write
    happens once: in memory, bounded, for `ttl_s`. Per instance: a retry that reaches
    another instance is written again (docs/writes.md)."""

    ttl_s: float = 24 * 3600
    max_entries: int = 10_000
    _done: OrderedDict[tuple[str, str], tuple[float, str, Any]] = field(default_factory=OrderedDict)
    _running: dict[tuple[str, str], tuple[str, asyncio.Future[None]]] = field(default_factory=dict)

    def get(self, subject: str, key: str) -> tuple[str, Any] | None:
        found = self._done.get((subject, key))
        if found is None or found[0] < time.monotonic():
            return None
        return found[1], found[2]

    def put(self, subject: str, key: str, fingerprint: str, answer: Any) -> None:
        self._done[(subject, key)] = (time.monotonic() + self.ttl_s, fingerprint, answer)
        self._done.move_to_end((subject, key))
        while len(self._done) > self.max_entries:
            self._done.popitem(last=False)

    def running(self, subject: str, key: str) -> tuple[str, asyncio.Future[None]] | None:
        """A write under this key still under way (a retry sent before it answered)."""
        return self._running.get((subject, key))

    def begin(self, subject: str, key: str, fingerprint: str) -> None:
        self._running[(subject, key)] = (fingerprint, asyncio.get_running_loop().create_future())

    def end(self, subject: str, key: str) -> None:
        """The write is over, done or failed: a retry waiting on it looks again."""
        found = self._running.pop((subject, key), None)
        if found is not None and not found[1].done():
            found[1].set_result(None)


def _fingerprint(write: WriteDecl, given: Mapping[str, Any]) -> str:
    text = repr(sorted((k, repr(_plain(v))) for k, v in given.items()))
    return hashlib.sha256(f"{write.name}:{text}".encode()).hexdigest()


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


class WriteRun:
    """One mutation field's write, for one request."""

    def __init__(self, graph: Graph, write: WriteDecl, ctx: GraphContext) -> None:
        self.graph, self.write, self.ctx = graph, write, ctx
        self.entry: dict[str, Any] = {
            "mutation": write.name,
            "system": write.source,
            "action": write.action,
            "fields": [],
            "decisions": {},
            "outcome": "refused",
        }
        ctx.writes.append(self.entry)

    def changes(self, given: Mapping[str, Any]) -> list[Change]:
        """The values the caller gave (an input field left out is not a change; one given
        as null is refused)."""
        declaration = self.graph.declaration
        found: list[Change] = []
        for argument in self.write.arguments:
            if argument.name in (self.write.customer, self.write.version):
                continue
            value = given.get(argument.name)
            item = declaration.inputs.get(argument.type.name)
            if item is None:
                if value is not None or argument.type.non_null:
                    found.append(Change(argument.name, argument.name, value, None, argument.check))
                continue
            if value is None:
                continue
            for input_field in item.fields:
                inner = getattr(value, input_field.name, strawberry.UNSET)
                if inner is strawberry.UNSET:
                    continue
                at = f"{argument.name}.{input_field.name}"
                if inner is None:
                    # A declared write sends what it is given, and a system may keep its
                    # value for a null (SQL's COALESCE): the record would name a change
                    # that did not happen. Removing a value is not a write's to make.
                    raise user_error(
                        f"'{at}' cannot be null: give a value, or leave the field out",
                        "BAD_USER_INPUT",
                        field=at,
                    )
                found.append(
                    Change(input_field.name, at, inner, input_field.edits, input_field.check)
                )
        return found

    def checked(self, changes: list[Change]) -> list[Change]:
        out = []
        for change in changes:
            value = change.value
            if isinstance(value, str):
                value = value.strip()
                if len(value) > 2000 or not value.isprintable():
                    raise user_error(
                        f"'{change.at}' is not acceptable text", "BAD_USER_INPUT", field=change.at
                    )
            if change.check is not None and value is not None:
                try:
                    value = CHECKS[change.check](value)
                except ValueError as error:
                    raise user_error(
                        f"'{change.at}': {error}", "BAD_USER_INPUT", field=change.at
                    ) from None
            for reader in self.graph.enums.values():
                if value.__class__ is reader.type:  # the system gets its own code
                    value = reader.system_code[value]
            out.append(Change(change.name, change.at, value, change.edits, change.check))
        return out

    def rules(self, changes: list[Change]) -> dict[str, tuple[str, Decision | Conditional]]:
        """Every change's `edit` rule, and the refusal of one denied whatever the record:
        before the customer is looked up, so that a caller who may not make this edit
        learns nothing of which customers exist."""
        ctx = self.ctx
        rules: dict[str, tuple[str, Decision | Conditional]] = {}
        if self.write.policy is not None:
            rules[self.write.name] = (
                self.write.policy,
                static_rule(ctx, self.write.policy, "edit"),
            )
        for change in changes:
            policy = self.graph.policies.get(change.edits) if change.edits else self.write.policy
            if policy is None:
                raise user_error("This write is not governed by a policy.", "FORBIDDEN")
            rules[change.at] = (policy, static_rule(ctx, policy, "edit"))
        for at, (policy, rule) in rules.items():
            if decided(rule) and not allowed(rule):
                self._refuse(at, policy, rule)
        return rules

    async def decide(self, cuid: str, rules: dict[str, tuple[str, Decision | Conditional]]) -> None:
        """Every change decided for this customer before anything is sent: a person who
        restricted processing first, then the rules that read the record."""
        ctx = self.ctx
        if cuid in ctx.identity.restricted:  # every edit, whatever the purpose
            self.entry["outcome"] = "forbidden"
            raise user_error(
                "The person restricted the processing of their data.",
                "FORBIDDEN",
                policy="restriction",
            )
        facts: RecordFacts | None = None
        for at, (policy, rule) in rules.items():
            if isinstance(rule, Conditional):
                if facts is None:
                    facts = await self._facts(cuid, rule.needs)
                decision = ctx.guard.finish(rule, facts)
            else:
                decision = rule
            if decision.effect != "allow":
                self._refuse(at, policy, decision)
            self.entry["decisions"][at] = "allow"

    def _refuse(self, at: str, policy: str, decision: Decision) -> NoReturn:
        self.entry["decisions"][at] = "deny"
        if decision.step_up:
            self.entry["outcome"] = "insufficient_auth"
            required = {key: list(values) for key, values in decision.step_up}
            raise user_error(
                "This change needs a stronger sign-in.",
                "INSUFFICIENT_AUTH",
                required=required,
                policy=policy,
                field=at,
            )
        self.entry["outcome"] = "forbidden"
        raise user_error(f"Not allowed by policy '{policy}'.", "FORBIDDEN", policy=policy, field=at)

    async def _facts(self, cuid: str, needs: frozenset[str]) -> RecordFacts:
        """The record facts a conditional edit rule reads (its owner, its consents),
        fetched fresh for this customer."""
        ctx = self.ctx
        links = ctx.identity.links(cuid) or {}
        customer = ctx.graph.customer(id=strawberry.ID(cuid), links=links)
        for name in ("owner", "consents"):
            binding = ctx.bindings.facts.get(name)
            key = links.get(binding.source) if binding is not None else None
            if binding is None or key is None:
                continue
            found = await ctx.fetch_many(binding.source, binding.entity, [key])
            record = found.get(key)
            customer.records[binding.slot] = None if isinstance(record, Exception) else record
        return record_facts(ctx.bindings, customer)

    async def current(self, key: str) -> Mapping[str, Any] | None:
        """The customer's record in the owning system as it is now (not from the cache):
        its version and the values a write replaces."""
        ctx = self.ctx
        slot = self._record_slot()
        if slot is None:
            return None
        source, entity = slot
        await ctx.sources.invalidate(source, entity, [key])
        ctx.fetched_records.pop(slot, None)
        found = (await ctx.fetch_many(source, entity, [key])).get(key)
        if isinstance(found, SourceUnavailable):
            self.entry["outcome"] = "unavailable"
            raise user_error(
                f"The {source} system is unavailable; nothing was written.",
                "SOURCE_UNAVAILABLE",
                source=source,
            )
        return found if isinstance(found, Mapping) else None

    def _record_slot(self) -> tuple[str, str] | None:
        """The one-to-one entity of the owning system that Customer's fields read (the
        one a version and the replaced values come from)."""
        for name, binding in self.ctx.bindings.customer.items():
            decl = self.graph.declaration.root.field(name)
            if (
                binding.source == self.write.source
                and binding.attribute is not None
                and decl is not None
                and not decl.type.is_list
            ):
                return binding.slot
        return None

    def _version_attribute(self) -> str | None:
        for f in self.graph.declaration.root.fields:
            binding = self.ctx.bindings.customer.get(f.name)
            if f.version and binding is not None and binding.source == self.write.source:
                return binding.attribute
        return None

    def _attribute_of(self, field_name: str | None) -> str | None:
        binding = self.ctx.bindings.customer.get(field_name or "")
        if binding is None or binding.source != self.write.source:
            return None
        return binding.attribute


def _annotation(graph: Graph, argument: Argument, inputs: Mapping[str, Any]) -> Any:
    python: dict[str, Any] = {
        "String": str,
        "ID": strawberry.ID,
        "Int": int,
        "Float": float,
        "Boolean": bool,
        "Date": dt.date,
        "DateTime": dt.datetime,
    }
    python.update({name: reader.type for name, reader in graph.enums.items()})
    python.update(inputs)
    kind = python[argument.type.name]
    return kind if argument.type.non_null else Optional[kind]  # noqa: UP045


def _input_types(graph: Graph) -> dict[str, Any]:
    made: dict[str, Any] = {}
    for decl in graph.declaration.inputs.values():
        annotations: dict[str, Any] = {}
        namespace: dict[str, Any] = {"__annotations__": annotations}
        for f in decl.fields:
            annotations[f.name] = _annotation(graph, f, {})
            if f.type.non_null:
                namespace[f.name] = strawberry.field(name=f.name)
            else:  # left out: UNSET, not a change (null: a change to nothing)
                namespace[f.name] = strawberry.field(name=f.name, default=strawberry.UNSET)
        made[decl.name] = strawberry.input(
            type(decl.name, (), namespace), description=decl.description
        )
    return made


def build_mutations(graph: Graph) -> dict[str, Any]:
    """The declared writes as strawberry fields, by name (for the Mutation type)."""
    inputs = _input_types(graph)
    fields: dict[str, Any] = {}
    for write in graph.declaration.writes:
        returns = graph.customer if write.type.name == ROOT else graph.records[write.type.name].cls
        resolver = _resolver(graph, write)
        parameters = [
            (
                argument.name,
                _annotation(graph, argument, inputs),
                inspect.Parameter.empty if argument.type.non_null else None,
            )
            for argument in write.arguments
        ]
        with_signature(resolver, parameters, Optional[returns])  # noqa: UP045
        resolver.__name__ = write.name
        fields[write.name] = strawberry.field(
            resolver=resolver,
            name=write.name,
            description=write.description,
            directives=[Policy(name=write.policy)] if write.policy else [],
        )
    return fields


def _resolver(graph: Graph, write: WriteDecl) -> Any:
    async def resolve(self: Any, info: Info[GraphContext, None], **given: Any) -> Any:
        return await perform(graph, write, info, given)

    return resolve


async def perform(
    graph: Graph, write: WriteDecl, info: Info[GraphContext, None], given: Mapping[str, Any]
) -> Any:
    ctx = info.context
    run = WriteRun(graph, write, ctx)
    cuid = given[write.customer]
    if not isinstance(cuid, str) or not is_cuid(cuid):
        raise user_error(
            f"'{write.customer}' is not a customer id", "BAD_USER_INPUT", field=write.customer
        )
    run.entry["customer"] = cuid
    changes = run.checked(run.changes(given))
    if not changes:
        raise user_error("Nothing to change: give at least one value.", "BAD_USER_INPUT")
    run.entry["fields"] = [change.at for change in changes]
    rules = run.rules(changes)  # a refusal whatever the record comes before NOT_FOUND
    links = ctx.identity.links(cuid)
    key = links.get(write.source) if links is not None else None
    if key is None:
        run.entry["outcome"] = "not_found"
        raise user_error(
            f"No such customer in the {write.source} system.", "NOT_FOUND", source=write.source
        )
    await run.decide(cuid, rules)
    request = ctx.request
    idempotency = request.headers.get(IDEMPOTENCY_HEADER) if request is not None else None
    store: IdempotentWrites | None = ctx.idempotent_writes
    fingerprint = _fingerprint(write, given)
    subject = ctx.guard.principal.subject
    if not idempotency or store is None:
        record = await _write(ctx, run, write, given, key, changes)
        return await _answer(graph, write, info, cuid, record)
    while True:  # a retry waits for a write under its key still under way
        done = store.get(subject, idempotency)
        running = store.running(subject, idempotency) if done is None else None
        found = done[0] if done is not None else running[0] if running is not None else None
        if found is not None and found != fingerprint:
            raise user_error("This Idempotency-Key was used for another write.", "BAD_USER_INPUT")
        if done is not None:
            run.entry["outcome"] = "repeated"
            return await _answer(graph, write, info, cuid, done[1])
        if running is None:
            break
        await asyncio.shield(running[1])  # then: done, or it failed and this one writes
    store.begin(subject, idempotency, fingerprint)
    try:
        record = await _write(ctx, run, write, given, key, changes)
        store.put(subject, idempotency, fingerprint, record)
    finally:
        store.end(subject, idempotency)
    return await _answer(graph, write, info, cuid, record)


async def _write(
    ctx: GraphContext,
    run: WriteRun,
    write: WriteDecl,
    given: Mapping[str, Any],
    key: str,
    changes: list[Change],
) -> dict[str, Any] | None:
    """The version check, the system's write and what follows it; the system's record."""
    values: dict[str, Any] = {change.name: change.value for change in changes}
    values["key"] = key
    masks = ctx.guard.masks
    wanted_version = given.get(write.version) if write.version else None
    current = await run.current(key) if run._record_slot() is not None else None
    version_attribute = run._version_attribute()
    if wanted_version is not None:
        now = version_token(
            masks, current.get(version_attribute) if current and version_attribute else None
        )
        if now != wanted_version:
            run.entry["outcome"] = "conflict"
            raise user_error(
                "The record changed since it was read; read it again.",
                "CONFLICT",
                source=write.source,
            )
        if version_attribute is not None and current is not None:
            values["version"] = current.get(version_attribute)
    run.entry["before"] = {
        change.at: _hashed(masks, current.get(attribute) if current else None)
        for change in changes
        if (attribute := run._attribute_of(change.edits)) is not None
    }
    connector_values = _accepted(ctx, write, values)
    try:
        result = await ctx.sources.write(write.source, write.action, connector_values)
    except WriteConflict:
        run.entry["outcome"] = "conflict"
        raise user_error(
            "The record changed since it was read; read it again.", "CONFLICT", source=write.source
        ) from None
    except WriteRefused as refused:
        run.entry["outcome"] = "refused"
        if refused.status == 404:
            raise user_error(
                f"No such record in the {write.source} system.", "NOT_FOUND", source=write.source
            ) from None
        raise user_error(
            f"The {write.source} system refused the change; nothing was written.",
            "BAD_USER_INPUT",
            source=write.source,
        ) from None
    except (SourceUnavailable, WriteValueError):
        run.entry["outcome"] = "unavailable"
        raise user_error(
            f"The {write.source} system is unavailable; the change may not have been made.",
            "SOURCE_UNAVAILABLE",
            source=write.source,
        ) from None
    if wanted_version is not None and result.affected == 0:
        run.entry["outcome"] = "conflict"
        raise user_error(
            "The record changed since it was read; read it again.", "CONFLICT", source=write.source
        )
    run.entry["outcome"] = "ok"
    run.entry["after"] = {
        change.at: _hashed(masks, change.value) for change in changes if change.edits
    }
    await _after(ctx, write, key, changes)
    return dict(result.record) if result.record is not None else None


def _accepted(ctx: GraphContext, write: WriteDecl, values: dict[str, Any]) -> dict[str, Any]:
    """The values the system's action takes: `actor` (who writes) when it takes one, and
    `version` only where the statement checks it."""
    takes = ctx.sources.actions(write.source)[write.action].params
    if "actor" in takes:
        values["actor"] = ctx.guard.principal.subject
    return {name: value for name, value in values.items() if name in takes}


def _hashed(masks: Mapping[str, Any], value: Any) -> str | None:
    return None if value is None else str(masks["hash"](str(value)))


async def _after(ctx: GraphContext, write: WriteDecl, key: str, changes: list[Change]) -> None:
    """The cache forgets the customer in the written system (every instance sharing
    Redis), this request re-reads it, and the crosswalk follows a changed email or phone."""
    for entity in ctx.sources.connectors[write.source].entities():
        await ctx.sources.invalidate(write.source, entity, [key])
        ctx.fetched_records.pop((write.source, entity), None)
    keys = {
        change.check: change.value
        for change in changes
        if change.check in ("email", "phone") and isinstance(change.value, str)
    }
    if keys and ctx.rekey is not None:
        await ctx.rekey(write.source, key, keys)


async def _answer(
    graph: Graph,
    write: WriteDecl,
    info: Info[GraphContext, None],
    cuid: str,
    record: Mapping[str, Any] | None,
) -> Any:
    if write.type.name == ROOT:
        fields = selected_fields(info)
        here = info.path.as_list()
        load = CustomerLoad(info.context, [cuid], fields, lambda _, key: [*here, key])
        [customer] = await load.done()
        return customer
    if record is None:
        return None
    try:
        return graph.records[write.type.name].reader(None)(record)
    except (TypeError, ValueError, KeyError) as error:
        raise user_error(
            f"The {write.source} system answered the write with a record c360 cannot read "
            f"({type(error).__name__}); it was written.",
            "SOURCE_UNAVAILABLE",
            source=write.source,
        ) from None
