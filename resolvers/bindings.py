"""Which department system serves which field: configuration, not code.

`[graph.Customer]` binds each Customer field to `source.entity[.attribute]`;
`[graph.Order]`, `[graph.Ticket]`, `[graph.Consent]` rename a nested record's attributes
to the graph's field names. Swapping the helpdesk for another is a change here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.base import EntitySpec


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


# The Customer fields that come from a department system, and the nested record types
# whose attributes may be renamed.
CUSTOMER_FIELDS = (
    "name",
    "email",
    "phone",
    "nationalId",
    "address",
    "lifetimeValue",
    "orders",
    "opportunities",
    "tickets",
    "satisfaction",
    "segment",
    "consents",
)
LIST_FIELDS = {
    "orders",
    "opportunities",
    "tickets",
    "satisfaction",
}  # bound to a one-to-many entity
NESTED_TYPES = {
    "Order": ("id", "placedAt", "total", "status"),
    "Ticket": ("id", "subject", "status", "satisfaction", "openedAt", "closedAt"),
    "Opportunity": ("id", "stage", "amount", "owner", "updatedAt"),
    "Consent": ("channel", "granted", "updatedAt"),
}
FILTERS = ("segment",)
# Record facts that policy conditions read: the customer's owner (a principal subject)
# and consents (records with channel and granted).
FACTS = ("owner", "consents")


@dataclass(frozen=True)
class GraphBindings:
    customer: Mapping[str, Binding]
    renames: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    filters: Mapping[str, Binding] = field(default_factory=dict)
    facts: Mapping[str, Binding] = field(default_factory=dict)
    _record_keys: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def attribute(self, type_name: str, graph_field: str) -> str:
        return self.renames.get(type_name, {}).get(graph_field, graph_field)

    def record_keys(self, type_name: str, fields: tuple[str, ...]) -> tuple[str, ...]:
        """The record keys that hold these graph fields, through the renames: worked
        out once per type and fields (a page shapes a customer's records at a time)."""
        found = self._record_keys.get((type_name, fields))
        if found is None:
            found = tuple(self.attribute(type_name, name) for name in fields)
            self._record_keys[(type_name, fields)] = found
        return found


def _parse_binding(path: str, value: Any) -> Binding:
    if not isinstance(value, str) or value.count(".") not in (1, 2):
        raise BindingError(f"{path}: expected 'source.entity' or 'source.entity.attribute'")
    source, entity, *rest = value.split(".")
    return Binding(source, entity, rest[0] if rest else None)


def parse_bindings(
    graph: Mapping[str, Any], entities: Mapping[str, Mapping[str, EntitySpec]]
) -> GraphBindings:
    """Read `[graph.*]` and check every binding against the configured sources' entities."""

    def check(path: str, binding: Binding, *, many: bool | None) -> Binding:
        if binding.source not in entities:
            raise BindingError(f"{path}: no source named '{binding.source}'")
        spec = entities[binding.source].get(binding.entity)
        if spec is None:
            raise BindingError(
                f"{path}: source '{binding.source}' has no entity '{binding.entity}'"
            )
        if many is not None and spec.many != many:
            kind = "a one-to-many" if many else "a one-to-one"
            raise BindingError(f"{path}: '{binding.entity}' must be {kind} entity")
        return binding

    known = {"Customer", "filters", "facts", *NESTED_TYPES}
    for key in graph:
        if key not in known:
            raise BindingError(f"graph.{key}: unknown table (known: {', '.join(sorted(known))})")
    customer_table = graph.get("Customer", {})
    customer: dict[str, Binding] = {}
    for name, value in customer_table.items():
        path = f"graph.Customer.{name}"
        if name not in CUSTOMER_FIELDS:
            raise BindingError(f"{path}: Customer has no such field")
        binding = _parse_binding(path, value)
        many = True if name in LIST_FIELDS else (False if binding.attribute else None)
        customer[name] = check(path, binding, many=many)
    renames: dict[str, dict[str, str]] = {}
    for type_name, fields in NESTED_TYPES.items():
        table = graph.get(type_name, {})
        for name, value in table.items():
            if name not in fields:
                raise BindingError(f"graph.{type_name}.{name}: {type_name} has no such field")
            if not isinstance(value, str):
                raise BindingError(f"graph.{type_name}.{name}: expected an attribute name")
        renames[type_name] = dict(table)
    filters: dict[str, Binding] = {}
    for name, value in graph.get("filters", {}).items():
        path = f"graph.filters.{name}"
        if name not in FILTERS:
            raise BindingError(f"{path}: unknown filter (known: {', '.join(FILTERS)})")
        filters[name] = check(path, _parse_binding(path, value), many=False)
    facts: dict[str, Binding] = {}
    for name, value in graph.get("facts", {}).items():
        path = f"graph.facts.{name}"
        if name not in FACTS:
            raise BindingError(f"{path}: unknown fact (known: {', '.join(FACTS)})")
        facts[name] = check(path, _parse_binding(path, value), many=False)
    return GraphBindings(customer, renames, filters, facts)
