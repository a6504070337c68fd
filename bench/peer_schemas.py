"""The Node peers' subgraph schemas, derived from the graph declaration c360 serves.

The peers answer the same fields from the same systems, so their subgraphs are the
declaration's, cut along federation's seams: the sales CRM's `Customer` (every root field
bound to `sales.customer`, with the identity crosswalk's links to the other subgraphs) and
the helpdesk's `Requester` (the list bound to `service.tickets`, the values derived from
it, its item type and enums). What federation adds (the `@key` entities that join them,
the Relay connection) is the harness's, below. Each subgraph gets a JSON spec: its SDL and
how its resolvers read the system's rows (column per field, list rule, derivations), so
the Node scripts hold no field of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resolvers.bindings import parse_path
from resolvers.declaration import Declaration, EnumDecl, FieldDecl, TypeRef

NUMBERS = frozenset({"Int", "Float"})
FEDERATION = (
    'extend schema @link(url: "https://specs.apollo.dev/federation/v2.3", import: ["@key"])'
)
CUSTOMERS_FRAME = """
type Query {
  customer(id: ID!): Customer
  customers(first: Int = 20, after: String): CustomerConnection!
}

type Requester @key(fields: "id", resolvable: false) {
  id: ID!
}

type Contact @key(fields: "id", resolvable: false) {
  id: ID!
}

type CustomerConnection {
  edges: [CustomerEdge!]!
  pageInfo: PageInfo!
}

type CustomerEdge {
  cursor: String!
  node: Customer!
}

type PageInfo {
  hasNextPage: Boolean!
  endCursor: String
}
"""


class PeerSchemaError(ValueError):
    """The declaration has no shape the peers can serve (a bound field they cannot read)."""


@dataclass(frozen=True)
class PeerSchema:
    """One subgraph: its SDL and what its generic resolvers need to know."""

    sdl: str
    spec: dict[str, Any]

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps({"typeDefs": self.sdl, **self.spec}, indent=1))
        return path


def _field_sdl(f: FieldDecl) -> str:
    arguments = ""
    if f.arguments:
        parts = []
        for argument in f.arguments:
            default = "" if argument.default is None else f" = {json.dumps(argument.default)}"
            parts.append(f"{argument.name}: {argument.type.sdl()}{default}")
        arguments = f"({', '.join(parts)})"
    return f"  {f.name}{arguments}: {_scalar(f.type).sdl()}"


def _scalar(ref: TypeRef) -> TypeRef:
    """The peers serve DateTime as the systems' ISO text: graphql-js has no DateTime."""
    if ref.name == "DateTime":
        return TypeRef("String", ref.non_null, ref.is_list, ref.item_non_null)
    return ref


def _enum_sdl(enum: EnumDecl) -> str:
    return "enum {} {{\n{}\n}}".format(enum.name, "\n".join(f"  {v}" for v in enum.values))


def customers_subgraph(declaration: Declaration) -> PeerSchema:
    """The sales CRM's `Customer`: every plain root field bound to `sales.customer`."""
    columns: dict[str, dict[str, Any]] = {}
    lines = []
    for f in declaration.root.fields:
        if f.path is None or f.arguments or f.version or f.type.is_list:
            continue
        binding = parse_path(f.path)
        if binding.slot != ("sales", "customer") or binding.attribute is None:
            continue
        if f.type.name not in NUMBERS | {"String", "ID"}:
            raise PeerSchemaError(f"Customer.{f.name}: the peers read no {f.type.name}")
        columns[f.name] = {"column": binding.attribute, "number": f.type.name in NUMBERS}
        lines.append(_field_sdl(f))
    if not columns:
        raise PeerSchemaError("no Customer field is bound to sales.customer")
    customer = "type Customer {{\n  id: ID!\n{}\n  requester: Requester\n  contact: Contact\n}}"
    sdl = "\n".join([FEDERATION, CUSTOMERS_FRAME, customer.format("\n".join(lines))])
    return PeerSchema(sdl, {"columns": columns})


def helpdesk_subgraph(declaration: Declaration) -> PeerSchema:
    """The helpdesk's `Requester`: the root list bound to `service.tickets`, the values
    derived from it, its item type with each field's attribute, and the enums it uses."""
    root = declaration.root
    lists = [
        f
        for f in root.fields
        if f.path is not None and parse_path(f.path).slot == ("service", "tickets")
    ]
    if len(lists) != 1 or lists[0].list_rule is None:
        raise PeerSchemaError("one Customer list field must be bound to service.tickets")
    tickets = lists[0]
    rule = tickets.list_rule
    assert rule is not None
    derived = [f for f in root.fields if f.derive is not None and f.derive.source == tickets.name]
    item = declaration.types[tickets.type.name]
    used = [f.type.name for f in item.fields] + [a.type.name for a in tickets.arguments]
    enums = {name: declaration.enums[name] for name in used if name in declaration.enums}
    item_fields = {
        f.name: {
            "attribute": f.attribute,
            "codes": dict(enums[f.type.name].codes) if f.type.name in enums else None,
        }
        for f in item.fields
    }
    requester = 'type Requester @key(fields: "id") {{\n  id: ID!\n{}\n}}'.format(
        "\n".join(_field_sdl(f) for f in [tickets, *derived])
    )
    item_sdl = "type {} {{\n{}\n}}".format(item.name, "\n".join(_field_sdl(f) for f in item.fields))
    sdl = "\n\n".join([FEDERATION, requester, item_sdl, *map(_enum_sdl, enums.values())])
    limit = next((a for a in tickets.arguments if a.name == rule.limit), None)
    spec = {
        "list": {
            "name": tickets.name,
            "limit": rule.limit,
            "limitDefault": limit.default if limit is not None else None,
            "orderBy": rule.order_by,
            "descending": rule.descending,
            "filters": list(rule.filters),
        },
        "item": item_fields,
        "derived": [
            {
                "name": f.name,
                "op": f.derive.op,
                "of": f.derive.of,
                "where": list(f.derive.where) if f.derive.where else None,
                "round": f.derive.round,
            }
            for f in derived
            if f.derive is not None
        ],
    }
    return PeerSchema(sdl, spec)


def peer_schemas(declaration: Declaration) -> dict[str, PeerSchema]:
    return {
        "customers": customers_subgraph(declaration),
        "helpdesk": helpdesk_subgraph(declaration),
    }
