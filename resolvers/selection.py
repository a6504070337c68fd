"""Look-ahead: which Customer fields a query selects, so a parent resolver can fetch every
needed source for all its customers at once (one batched call per source per level)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField, Selection


def _fields(selections: Iterable[Selection]) -> Iterable[SelectedField]:
    for selection in selections:
        if isinstance(selection, SelectedField):
            yield selection
        elif isinstance(selection, FragmentSpread | InlineFragment):
            yield from _fields(selection.selections)


def selected_fields(selections: Iterable[Selection], path: Sequence[str] = ()) -> dict[str, str]:
    """Field names selected under `path` (e.g. ("edges", "node") below `customers`),
    through fragments, each with the response key it appears under first (its alias,
    or its name)."""
    level = list(_fields(selections))
    for step in path:
        level = [
            child for field in level if field.name == step for child in _fields(field.selections)
        ]
    found: dict[str, str] = {}
    for field in level:
        found.setdefault(field.name, field.alias or field.name)
    return found
