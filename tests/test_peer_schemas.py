"""The bench peers' subgraph schemas are the graph declaration's: a field declared (or
re-bound) there is served by the Node peers too, from the same column."""

from __future__ import annotations

import pytest
from graphql import build_ast_schema, parse

from bench.peer_schemas import PeerSchemaError, customers_subgraph, peer_schemas
from demo import GRAPH_FILE
from resolvers.declaration import load_declaration, parse_declaration

FEDERATION_DEFINITIONS = """
directive @link(url: String, import: [String]) repeatable on SCHEMA
directive @key(fields: String!, resolvable: Boolean = true) repeatable on OBJECT
"""


def _schema(sdl: str):  # type: ignore[no-untyped-def]
    return build_ast_schema(parse(FEDERATION_DEFINITIONS + sdl))


def test_the_demo_subgraphs_carry_the_declared_fields_and_columns() -> None:
    declaration = load_declaration(GRAPH_FILE)
    schemas = peer_schemas(declaration)

    customers = _schema(schemas["customers"].sdl).get_type("Customer")
    bound = {
        f.name: f.path.split(".")[2]
        for f in declaration.root.fields
        if f.path and f.path.startswith("sales.customer.") and not f.version
    }
    assert set(customers.fields) == {"id", "requester", "contact", *bound}  # type: ignore[union-attr]
    columns = schemas["customers"].spec["columns"]
    assert {name: c["column"] for name, c in columns.items()} == bound
    assert columns["lifetimeValue"]["number"] and not columns["name"]["number"]

    helpdesk = _schema(schemas["helpdesk"].sdl)
    requester = helpdesk.get_type("Requester")
    assert set(requester.fields) == {"id", "tickets", "satisfaction"}  # type: ignore[union-attr]
    assert set(requester.fields["tickets"].args) == {"status", "first"}  # type: ignore[union-attr]
    ticket = declaration.types["Ticket"]
    assert set(helpdesk.get_type("Ticket").fields) == {f.name for f in ticket.fields}  # type: ignore[union-attr]
    spec = schemas["helpdesk"].spec
    assert spec["item"]["openedAt"]["attribute"] == "created_at"
    assert spec["list"] == {
        "name": "tickets",
        "limit": "first",
        "limitDefault": 10,
        "orderBy": "openedAt",
        "descending": True,
        "filters": ["status"],
    }
    assert spec["derived"] == [
        {
            "name": "satisfaction",
            "op": "mean",
            "of": "satisfaction",
            "where": ["status", "CLOSED"],
            "round": 2,
        }
    ]


def _with_field(line: str) -> str:
    """The demo declaration with one more Customer field, first in the type."""
    demo = GRAPH_FILE.read_text()
    opening = '@erase(actions: ["sales.erase_customer"]) {\n'
    assert demo.count(opening) == 1  # the demo's Customer, as this test knows it
    return demo.replace(opening, opening + line + "\n")


def test_a_field_added_to_the_declaration_reaches_the_peers() -> None:
    text = _with_field(
        '  region: String @from(path: "sales.customer.region") @policy(name: "customer.name")'
    )
    schema = customers_subgraph(parse_declaration(text))
    assert "region: String" in schema.sdl
    assert schema.spec["columns"]["region"] == {"column": "region", "number": False}


def test_a_declaration_the_peers_cannot_serve_is_refused_by_name() -> None:
    text = _with_field(
        '  joined: DateTime @from(path: "sales.customer.joined") @policy(name: "customer.name")'
    )
    with pytest.raises(PeerSchemaError, match=r"Customer\.joined"):
        customers_subgraph(parse_declaration(text))
