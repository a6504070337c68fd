"""Declarations, built once: a gateway, the CLI and the tests ask for a graph by file."""

from __future__ import annotations

import functools
from pathlib import Path

from resolvers.declaration import Declaration, load_declaration, parse_declaration
from resolvers.types import Graph, build_graph


@functools.lru_cache(maxsize=16)
def _built(source: str, text: str) -> Graph:
    return build_graph(parse_declaration(text, source))


def load_graph(path: str | Path) -> Graph:
    """The built graph of a declaration file (DeclarationError names file and line).
    Building the same text again gives the same types: a schema may be built many
    times in one process (tests, reloads), strawberry's types once per declaration."""
    declaration: Declaration = load_declaration(path)
    return _built(declaration.source, declaration.text)
