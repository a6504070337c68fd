"""A person's records in one system, read as one: what the graph serves when the
crosswalk links more than one record of a system to a customer (a duplicate).

Lists of records (a one-to-many entity: orders, tickets) are every record's lists, the
primary record's first; the list's declared order, filters and page then apply to the
whole. One record's values follow the declared `@merge` rule of the field that reads them
(else of the entity, else PRIMARY). Nothing here is cached: the records are fetched,
and cached, under their own keys, and the merge is made per request.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from connectors.base import SourceUnavailable


class MergeRule(enum.Enum):
    PRIMARY = "PRIMARY"  # the primary record's value (the record writes go to)
    LATEST = "LATEST"  # the value of the record whose `by` attribute is greatest
    FIRST_NON_EMPTY = "FIRST_NON_EMPTY"  # the primary's, else the first other non-empty one
    SUM = "SUM"  # the sum of the records' numbers (a figure each record holds a part of)


@dataclass(frozen=True, slots=True)
class ValueRule:
    rule: MergeRule
    by: str | None = None  # LATEST: the attribute that orders the records

    def pick(self, records: Sequence[Mapping[str, Any]], attribute: str) -> Any:
        """The value of `attribute` over a person's records, the primary first."""
        if self.rule is MergeRule.FIRST_NON_EMPTY:
            return next(
                (v for r in records if not _empty(v := r.get(attribute))),
                records[0].get(attribute),
            )
        if self.rule is MergeRule.LATEST:
            by = self.by or ""
            # max keeps the first of equals: on a tie, or with no `by` at all, the primary
            latest = max(records, key=lambda r: _order_key(r.get(by)))
            return latest.get(attribute)
        if self.rule is MergeRule.SUM:
            return _sum([r.get(attribute) for r in records])
        return records[0].get(attribute)


PRIMARY = ValueRule(MergeRule.PRIMARY)


@dataclass(frozen=True)
class EntityMerge:
    """How one one-to-one entity's records of a person become one record."""

    default: ValueRule = PRIMARY  # `type Customer @merge(path: "source.entity", ...)`
    # attribute -> its rule: a field's own `@merge`, and PRIMARY for what policy facts and
    # `@version` read (unless a field reading a fact declares its own rule)
    attributes: Mapping[str, ValueRule] = field(default_factory=dict)

    def one(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        merged = dict(records[0])
        if self.default.rule is MergeRule.PRIMARY:
            names: Sequence[str] = [
                a for a, rule in self.attributes.items() if rule.rule is not MergeRule.PRIMARY
            ]
        else:
            names = list(dict.fromkeys(a for r in records for a in r))
        for name in names:
            merged[name] = self.attributes.get(name, self.default).pick(records, name)
        return merged


NO_RULES = EntityMerge()


def merge_records(fetched: Sequence[Any], rules: EntityMerge = NO_RULES) -> Any:
    """One value for a person's fetched records of one entity (the primary's first): a
    system's failure for any of them is the failure (a view missing some records would
    be silently wrong); records the system no longer has are left out."""
    present = []
    for value in fetched:
        if isinstance(value, SourceUnavailable):
            return value
        if value is not None:
            present.append(value)
    if len(present) < 2:
        return present[0] if present else None
    if all(isinstance(value, list) for value in present):
        return [item for value in present for item in value]
    if all(isinstance(value, dict) for value in present):
        return rules.one(present)
    return present[0]  # records of different shapes: the field reports the primary's


def _empty(value: Any) -> bool:
    """As the quality report counts it: absent, blank text, or an empty list."""
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


def _order_key(value: Any) -> tuple[int, Any]:
    """Orders `by` values of any one kind a system may give: timestamps (as datetimes or
    ISO 8601 text), numbers, other text; an absent value before all of them."""
    if value is None:
        return (0, 0)
    if isinstance(value, dt.datetime):
        return (1, _aware(value).timestamp())
    if isinstance(value, dt.date):
        return (1, _aware(dt.datetime.combine(value, dt.time())).timestamp())
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return (2, float(value))
    text = str(value)
    try:
        return (1, _aware(dt.datetime.fromisoformat(text)).timestamp())
    except ValueError:
        return (3, text)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class _NotANumber:
    """A sum over a value that is no number: the field reports a malformed record."""


def _sum(values: Sequence[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if any(isinstance(v, bool) for v in present):
        return _NotANumber()
    if all(isinstance(v, int | Decimal) for v in present):
        return sum(present)  # exact, as the system keeps it
    try:
        return sum(float(v) for v in present)
    except (TypeError, ValueError):
        return _NotANumber()
