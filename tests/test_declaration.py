"""The graph declaration: what is refused (with FILE:LINE), and what a declaration builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from connectors.base import EntitySpec
from demo import GRAPH_FILE
from resolvers.bindings import BindingError, check_bindings
from resolvers.declaration import DeclarationError, parse_declaration
from resolvers.schema import build_schema
from resolvers.types import build_graph

SMALL = """
type Customer {
  name: String @from(path: "crm.person.name") @policy(name: "customer.name")
  tier: Tier @from(path: "loyalty.member.tier") @policy(name: "customer.tier")
  visits(first: Int = 5, store: String): [Visit!]
    @from(path: "stores.visits")
    @list(limit: "first", orderBy: "at", descending: true, filters: ["store"])
    @policy(name: "customer.visits")
  visitCount: Int @derive(from: "visits", op: "count") @policy(name: "customer.visits")
  spent: Float @derive(from: "visits", op: "sum", of: "amount") @policy(name: "customer.visits")
}
type Visit { store: String! amount: Float @from(path: "amount_cents") at: DateTime! }
enum Tier { GOLD @code(values: ["G"]) SILVER @code(values: ["S"]) BRONZE @code(values: ["B"]) }
"""


def refusal(text: str) -> DeclarationError:
    with pytest.raises(DeclarationError) as caught:
        parse_declaration(text, "dept.graphql")
    return caught.value


def test_a_small_declaration_builds_types_enums_lists_and_derived_values() -> None:
    graph = build_graph(parse_declaration(SMALL, "dept.graphql"))
    sdl = build_schema(graph).as_str()
    assert "tier: Tier @policy" in sdl
    assert (
        'visits(first: Int = 5, store: String = null): [Visit!] @policy(name: "customer.visits")'
        in sdl
    )
    assert "enum Tier {\n  GOLD\n  SILVER\n  BRONZE\n}" in sdl
    assert "@from" not in sdl and "@derive" not in sdl  # c360's own directives stay inside
    tier = graph.enums["Tier"]
    assert tier("G") is tier.type.GOLD and tier(" gold ") is tier.type.GOLD
    with pytest.raises(ValueError, match="PLATINUM"):
        tier("PLATINUM")
    visits = graph.arguments["visits"]
    records = [
        {"store": "A", "amount_cents": 3.0, "at": "2026-01-02T00:00:00"},
        {"store": "B", "amount_cents": 5.0, "at": "2026-01-03T00:00:00"},
        {"store": "A", "amount_cents": 7.0, "at": "2026-01-01T00:00:00"},
    ]

    class Ctx:
        max_page_size = 100

    shaped = visits(Ctx(), {"store": "A"}, None)(records)  # type: ignore[arg-type]
    assert [v.amount for v in shaped] == [3.0, 7.0]  # newest first, only store A
    assert [v.amount for v in visits(Ctx(), {"first": 1}, None)(records)] == [5.0]  # type: ignore[arg-type]
    count = graph.plain["visitCount"][1](Ctx(), None)  # type: ignore[arg-type]
    total = graph.plain["spent"][1](Ctx(), None)  # type: ignore[arg-type]
    assert count(records) == 3 and total(records) == 15.0


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            'type Customer {\n  email: String @from(path: "crm.person.email")\n}',
            2,
            "Customer.email: carries personal data unless said otherwise",
        ),
        ('type Customer {\n  x: Strin @from(path: "a.b.c") @public\n}', 2, "Unknown type 'Strin'"),
        ('type Customer {\n  name: String @policy(name: "p")\n}', 2, "declare where it comes from"),
        (
            'type Customer {\n  n: Int @derive(from: "nope", op: "count") @public\n}',
            2,
            "@derive(from:) names a bound list field",
        ),
        (
            'type Customer {\n  n: Int @from(path: "a.b.c") @public\n'
            '  links: String @from(path: "a.b.c") @public\n}',
            3,
            "this name is reserved",
        ),
        ('type Customer {\n  name: String @from(path: "a.b.c") @public\n', 3, "Syntax Error"),
        (
            'type Customer { a: Int @from(path: "a.b.c") @public }\n'
            "type Visit {\n  id: ID!\n  from: String\n}",
            4,
            "Visit.from: this name is reserved",
        ),
        (
            'type Customer { a: Int @from(path: "a.b.c") @public }\n'
            'type Query {\n  customerByEmail(email: String!): Customer @lookup(by: "email")\n}',
            3,
            "only a caller who may read it may look it up",
        ),
    ],
)
def test_a_bad_declaration_is_refused_naming_file_and_line(
    text: str, line: int, needle: str
) -> None:
    error = refusal(text)
    assert error.line == line, str(error)
    assert needle in str(error)
    assert str(error).startswith(f"dept.graphql:{line}: ")


def test_bindings_are_checked_against_the_configured_sources() -> None:
    declaration = parse_declaration(SMALL, "dept.graphql")
    entities = {
        "crm": {"person": EntitySpec("person", "id")},
        "loyalty": {"member": EntitySpec("member", "id")},
        "stores": {"visits": EntitySpec("visits", "shopper", many=True)},
    }
    check_bindings(declaration, entities)
    with pytest.raises(
        BindingError, match=r"dept.graphql:5: Customer.visits: 'visits' must be a one-to-many"
    ):
        check_bindings(declaration, {**entities, "stores": {"visits": EntitySpec("visits", "s")}})
    with pytest.raises(
        BindingError, match=r"dept.graphql:4: Customer.tier: no source named 'loyalty'"
    ):
        check_bindings(declaration, {k: v for k, v in entities.items() if k != "loyalty"})


def _c360(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_graph_check_cli(tmp_path: Path) -> None:
    ok = _c360("graph", "check", str(GRAPH_FILE), "--config", str(tmp_path / "none.toml"))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    bad = tmp_path / "bad.graphql"
    bad.write_text('type Customer {\n  name: String\n  email: String @from(path: "a.b.c")\n}\n')
    refused = _c360("graph", "check", str(bad), "--config", str(tmp_path / "none.toml"))
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith(f"c360: {bad}:2: Customer.name: declare where")
    assert "Traceback" not in refused.stderr
