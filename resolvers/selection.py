"""Look-ahead: which Customer fields a query selects, so a parent resolver can fetch every
needed source for all its customers at once (one batched call per source per level).

It reads graphql-core's syntax tree directly (strawberry's `info.selected_fields` builds
a converted copy of the whole subtree, arguments and directives included, on every call,
in every request's path: bench (a), `python -m bench.inprocess --cold --calls`), and
leaves out what `@skip`/`@include` exclude, as execution will: a skipped field is neither
fetched nor decided (tests/test_execution.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from graphql import (
    BooleanValueNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    SelectionSetNode,
    VariableNode,
)
from strawberry.types import Info

from resolvers.upstream import raw_info


def _included(node: Any, variables: Mapping[str, Any]) -> bool:
    for directive in node.directives or ():
        name = directive.name.value
        if name not in ("skip", "include"):
            continue
        condition = next((a.value for a in directive.arguments if a.name.value == "if"), None)
        if isinstance(condition, BooleanValueNode):
            value = condition.value
        elif isinstance(condition, VariableNode):
            value = variables.get(condition.name.value) is True
        else:
            continue  # validation has refused anything else
        if value == (name == "skip"):
            return False
    return True


def included_fields(
    selection_set: SelectionSetNode | None,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any] | None,
) -> Iterator[FieldNode]:
    """The field nodes of a selection set, through fragments, that `@skip`/`@include`
    keep (with the coerced variables); with `variables` None, whatever they say."""
    for selection in selection_set.selections if selection_set else ():
        if variables is not None and not _included(selection, variables):
            continue
        if isinstance(selection, FieldNode):
            yield selection
        elif isinstance(selection, InlineFragmentNode):
            yield from included_fields(selection.selection_set, fragments, variables)
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is not None:
                yield from included_fields(fragment.selection_set, fragments, variables)


def field_names(
    selection_set: SelectionSetNode | None, fragments: Mapping[str, FragmentDefinitionNode]
) -> Iterator[str]:
    """The names of a selection set's fields, through fragments, whatever `@skip` and
    `@include` say: every field that may execute (and some that will not), known before
    the variables are coerced."""
    return (node.name.value for node in included_fields(selection_set, fragments, None))


class Selection(dict[str, str]):
    """Field name -> the response key it appears under first; `bare` holds the names
    whose field there carries no arguments (so their defaults apply), and `below` the
    names selected under each field with a selection of its own, under any of its
    response keys and whatever `@skip`/`@include` say (all that may be read of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.bare: set[str] = set()
        self.below: dict[str, set[str]] = {}

    def same_as(self, other: Selection) -> bool:
        return self == other and self.bare == other.bare and self.below == other.below


def selected_fields(info: Info[Any, Any], path: Sequence[str] = ()) -> Selection:
    """Field names selected below the resolving field, under `path` (e.g. ("edges",
    "node") below `customers`), through fragments, each with the response key it appears
    under first (its alias, or its name)."""
    raw = raw_info(info)
    variables: Mapping[str, Any] = info.variable_values or {}  # coerced, by strawberry
    return selection_below(raw.field_nodes, raw.fragments, variables, path)


def names_below(info: Info[Any, Any]) -> set[str]:
    """The names selected below the resolving field, under any of its nodes, through
    fragments, whatever `@skip`/`@include` say (`field_names`)."""
    raw = raw_info(info)
    return {
        name for node in raw.field_nodes for name in field_names(node.selection_set, raw.fragments)
    }


def selection_below(
    nodes: Iterable[FieldNode],
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    path: Sequence[str] = (),
) -> Selection:
    """`selected_fields` for these field nodes (one response key's, merged), from the
    syntax tree and the coerced variables alone."""
    level: Iterable[FieldNode] = [
        child
        for node in nodes
        for child in included_fields(node.selection_set, fragments, variables)
    ]
    for step in path:
        level = [
            child
            for field in level
            if field.name.value == step
            for child in included_fields(field.selection_set, fragments, variables)
        ]
    found = Selection()
    for field in level:
        name = field.name.value
        if name not in found:
            found[name] = (field.alias or field.name).value
            if not field.arguments:
                found.bare.add(name)
        if field.selection_set is not None:
            found.below.setdefault(name, set()).update(field_names(field.selection_set, fragments))
    return found
