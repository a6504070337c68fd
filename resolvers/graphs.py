"""Declarations, built once: a gateway, the CLI and the tests ask for a graph by file."""

from __future__ import annotations

import functools
from pathlib import Path

from resolvers.declaration import load_declaration, parse_declarations
from resolvers.types import Graph, build_graph


@functools.lru_cache(maxsize=16)
def _built(files: tuple[tuple[str, str], ...], federation: bool) -> Graph:
    return build_graph(parse_declarations(files), federation)


def load_graph(*paths: str | Path, federation: bool = False) -> Graph:
    """The built graph of declaration files (DeclarationError names file and line).
    Building the same text again gives the same types: a schema may be built many
    times in one process (tests, reloads), strawberry's types once per declaration.
    `federation`: Customer as a Federation 2 entity, for a subgraph."""
    return _built(load_declaration(*paths).files, federation)
