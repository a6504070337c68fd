"""Which department system serves which Customer field, read off the declaration.

Each Customer field's `@from(path: "source.entity[.attribute]")` is its binding; a derived
field is bound to the list it reads. Page filters (`@members`) and the policy facts
(`@facts(owner:, consents:)`) are bindings too. `check_bindings` holds them against the
configured sources' entities at start, naming the declaration's line at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connectors.base import EntitySpec
from resolvers.merging import PRIMARY, EntityMerge, MergeRule, ValueRule

if TYPE_CHECKING:
    from resolvers.declaration import Declaration


class BindingError(ValueError):
    """A binding names a source, entity or field that does not exist; names the key."""


@dataclass(frozen=True, slots=True)
class Binding:
    source: str
    entity: str
    attribute: str | None  # None: the entity's record(s) themselves

    @property
    def slot(self) -> tuple[str, str]:
        return (self.source, self.entity)

    def pick(self, fetched: Any) -> Any:
        if self.attribute is None or fetched is None:
            return fetched
        return fetched.get(self.attribute)


@dataclass(frozen=True)
class GraphBindings:
    customer: Mapping[str, Binding]
    filters: Mapping[str, Binding] = field(default_factory=dict)
    # What policy conditions read: "owner" (a principal subject) and "consents" (records
    # with channel and granted, under `consent_keys`' attribute names).
    facts: Mapping[str, Binding] = field(default_factory=dict)
    consent_keys: tuple[str, str] = ("channel", "granted")
    # (source, entity) -> how a person's several records there read as one (`@merge`);
    # an entity absent here reads its one-to-one values from the primary record.
    merges: Mapping[tuple[str, str], EntityMerge] = field(default_factory=dict)


def parse_path(value: str) -> Binding:
    source, entity, *rest = value.split(".")
    return Binding(source, entity, rest[0] if rest else None)


def bindings_of(declaration: Declaration) -> GraphBindings:
    root = declaration.root
    customer: dict[str, Binding] = {}
    for f in root.fields:
        if f.path is not None:
            customer[f.name] = parse_path(f.path)
    for f in root.fields:
        if f.derive is not None:
            customer[f.name] = customer[f.derive.source]
    filters = {a.name: parse_path(a.members) for a in declaration.page_filters if a.members}
    facts: dict[str, Binding] = {}
    if root.owner:
        facts["owner"] = parse_path(root.owner)
    consent_keys = ("channel", "granted")
    if root.consents:
        facts["consents"] = customer[root.consents]
        consents = root.field(root.consents)
        item = declaration.types[consents.type.name] if consents else None
        if item is not None:
            channel, granted = item.field("channel"), item.field("granted")
            if channel is not None and granted is not None:
                consent_keys = (channel.attribute, granted.attribute)
    return GraphBindings(customer, filters, facts, consent_keys, merges_of(declaration, facts))


def merges_of(
    declaration: Declaration, facts: Mapping[str, Binding]
) -> dict[tuple[str, str], EntityMerge]:
    """Each entity's `@merge` rules: the entity's own (on `type Customer`), each field's
    for the attribute it reads, and PRIMARY for what policy facts and `@version` read,
    unless a field reading a fact declares otherwise (a version never may)."""
    root = declaration.root
    defaults: dict[tuple[str, str], ValueRule] = {}
    for merge in root.merges:
        if merge.path is not None:
            defaults[parse_path(merge.path).slot] = ValueRule(MergeRule(merge.rule), merge.by)
    attributes: dict[tuple[str, str], dict[str, ValueRule]] = {}
    for binding in facts.values():
        if binding.attribute is not None:
            attributes.setdefault(binding.slot, {})[binding.attribute] = PRIMARY
    for f in root.fields:
        if f.path is None or f.path.count(".") != 2 or (f.merge is None and not f.version):
            continue
        binding = parse_path(f.path)
        rule = PRIMARY if f.merge is None else ValueRule(MergeRule(f.merge.rule), f.merge.by)
        attributes.setdefault(binding.slot, {})[binding.attribute or ""] = rule
    return {
        slot: EntityMerge(defaults.get(slot, PRIMARY), attributes.get(slot, {}))
        for slot in {*defaults, *attributes}
    }


def check_bindings(
    declaration: Declaration,
    entities: Mapping[str, Mapping[str, EntitySpec]],
    actions: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Every binding names a configured source and entity, of the right cardinality: a
    list of records on a one-to-many entity (or an attribute holding a list), one value
    on a one-to-one entity. Raises BindingError as `FILE:LINE: Customer.field: ...`."""
    root = declaration.root

    def check(
        where: str, line: int | None, path: str, *, many: bool | None, file: str = ""
    ) -> None:
        binding = parse_path(path)
        file = file or declaration.source
        prefix = f"{file}:{line}: {where}" if line else f"{file}: {where}"
        if binding.source not in entities:
            known = ", ".join(sorted(entities)) or "none"
            raise BindingError(
                f"{prefix}: no source named '{binding.source}' (configured: {known})"
            )
        spec = entities[binding.source].get(binding.entity)
        if spec is None:
            raise BindingError(
                f"{prefix}: source '{binding.source}' has no entity '{binding.entity}'"
            )
        if many is not None and spec.many != many:
            kind = "a one-to-many" if many else "a one-to-one"
            raise BindingError(f"{prefix}: '{binding.entity}' must be {kind} entity")

    for f in root.fields:
        if f.path is None:
            continue
        whole_list = f.type.is_list and f.path.count(".") == 1
        many = True if whole_list else (False if f.path.count(".") == 2 else None)
        if not f.type.is_list and f.path.count(".") == 1:
            many = False  # a single record
        check(f"{root.name}.{f.name}", f.line, f.path, many=many, file=f.file)
    for argument in declaration.page_filters:
        if argument.members:
            check(
                f"Query.customers({argument.name}:)",
                argument.line,
                argument.members,
                many=False,
                file=argument.file,
            )
    for write in declaration.writes if actions is not None else ():
        prefix = f"{write.file}:{write.line}: Mutation.{write.name}"
        configured = actions.get(write.source) if actions is not None else None
        if configured is None:
            raise BindingError(f"{prefix}: no source named '{write.source}'")
        spec = configured.get(write.action)
        if spec is None:
            known = ", ".join(sorted(configured)) or "none"
            raise BindingError(
                f"{prefix}: source '{write.source}' has no write '{write.action}' "
                f"([sources.{write.source}.writes.*]: {known})"
            )
        sent = _write_values(declaration, write)
        unknown = sorted(sent - spec.params)
        if unknown:
            raise BindingError(
                f"{prefix}: sources.{write.source}.writes.{write.action} takes no value "
                f"'{unknown[0]}'"
            )
        missing = sorted(spec.required - sent - {"key", "version", "actor"})
        if missing:
            raise BindingError(
                f"{prefix}: sources.{write.source}.writes.{write.action} needs '{missing[0]}', "
                "which the mutation does not take"
            )
    for action in declaration.root.erase if actions is not None else ():
        source, name = action.split(".", 1)
        if name not in (actions or {}).get(source, {}):
            raise BindingError(
                f"{root.file}:{root.line}: @erase: source '{source}' has no write '{name}'"
            )
    for lookup in declaration.lookups:
        if lookup.by not in ("email", "phone") and lookup.by not in entities:
            raise BindingError(
                f"{lookup.file}:{lookup.line}: Query.{lookup.name}: @lookup(by:) is email, "
                f"phone or a configured system, not '{lookup.by}'"
            )
    for merge in root.merges:
        if merge.path is not None:
            check(f"{root.name} @merge(path:)", merge.line, merge.path, many=False, file=merge.file)
    if root.owner:
        if root.owner.count(".") != 2:
            raise BindingError(
                f"{root.file}:{root.line}: @facts(owner:) reads 'source.entity.attribute'"
            )
        check(f"{root.name} @facts(owner:)", root.line, root.owner, many=False, file=root.file)


def _write_values(declaration: Declaration, write: Any) -> set[str]:
    """The names of the values a declared write may send (input fields flattened)."""
    names: set[str] = set()
    for argument in write.arguments:
        if argument.name in (write.customer, write.version):
            continue
        item = declaration.inputs.get(argument.type.name)
        if item is None:
            names.add(argument.name)
        else:
            names.update(f.name for f in item.fields)
    return names
