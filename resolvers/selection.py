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


def selected_names(selections: Iterable[Selection], path: Sequence[str] = ()) -> set[str]:
    """Field names selected under `path` (e.g. ("edges", "node") below `customers`),
    through fragments and aliases."""
    level = list(_fields(selections))
    for step in path:
        level = [
            child for field in level if field.name == step for child in _fields(field.selections)
        ]
    return {field.name for field in level}
