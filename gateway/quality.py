"""Data quality (`c360 quality report`, `Gateway.quality()`, the `c360_quality_*` gauges).

Measured from what the systems hold, read through the connectors: the crosswalk gives
every system's records (the identity sync paged through their keys) and how they link;
each system's entities that back a declared Customer field are fetched for those records
in batches, and each field's values are counted:

- completeness: the share of a system's records with a non-empty value for the field;
- validity: the share of the non-empty values that pass the field's check: its own
  `@check(as:)`, else that of an input field that `@edits` it, else by its type
  (`DateTime`, `Date`) or its enum (a value's name in any case and spacing, or one of its
  `@code`s); null for a field with no check;
- per system, from the crosswalk: duplicates (a second record of one person), conflicts
  (email and phone pointing at different customers), unlinkable records, and the match
  rate (the share of its records whose customer some other system knows too).

Each run's summary figures are stored (`c360_quality_runs`) and the report shows the
previous run's beside them. The worst records are named by system id, never by value.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from connectors.base import EntitySpec, SourceUnavailable
from connectors.identity.store import CrosswalkStore, Issue, QualityRun
from gateway.metrics import Metrics
from resolvers import inputs
from resolvers.bindings import bindings_of
from resolvers.declaration import Declaration, EnumDecl

BATCH = 200  # keys per fetch: a system is asked in batches of this many, one at a time
WORST = 20


class Fetch(Protocol):
    """SourceHub.fetch, as the quality run uses it."""

    async def __call__(
        self, source: str, entity: str, keys: Sequence[str]
    ) -> Mapping[str, Any]: ...


# --- checks: a value -> does it pass --------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldCheck:
    kind: str  # email | phone | nationalId | date | datetime | enum
    passes: Callable[[Any], bool]


def _passing(check: Callable[[Any], Any]) -> Callable[[Any], bool]:
    def passes(value: Any) -> bool:
        try:
            check(value)
        except (ValueError, TypeError):
            return False
        return True

    return passes


def _datetime(value: Any) -> dt.datetime:
    """As the graph reads a DateTime: a timestamp, or ISO 8601 text."""
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str):
        raise TypeError("not a timestamp")
    return dt.datetime.fromisoformat(value.strip())


def _date(value: Any) -> dt.date:
    """As the graph reads a Date: a date, or text starting with an ISO 8601 date."""
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        raise TypeError("not a date")
    return dt.date.fromisoformat(value.strip()[:10])


def _enum_check(decl: EnumDecl) -> Callable[[Any], bool]:
    names, codes = frozenset(decl.values), frozenset(decl.codes)

    def passes(value: Any) -> bool:
        if isinstance(value, str) and (value in names or value in codes):
            return True
        return str(value).strip().upper() in names

    return passes


def field_checks(declaration: Declaration) -> dict[str, FieldCheck | None]:
    """Each Customer field's check, or None: its `@check(as:)`, else that of an input
    field that edits it, else its type or its enum. A list's items are not checked."""
    declared: dict[str, str] = {}
    for item in declaration.inputs.values():
        for input_field in item.fields:
            if input_field.edits and input_field.check:
                declared.setdefault(input_field.edits, input_field.check)
    checks: dict[str, FieldCheck | None] = {}
    for f in declaration.root.fields:
        kind = f.check or declared.get(f.name)
        check: FieldCheck | None = None
        if f.type.is_list:
            check = None
        elif kind is not None:
            check = FieldCheck(kind, _passing(inputs.CHECKS[kind]))
        elif f.type.name == "DateTime":
            check = FieldCheck("datetime", _passing(_datetime))
        elif f.type.name == "Date":
            check = FieldCheck("date", _passing(_date))
        elif f.type.name in declaration.enums:
            check = FieldCheck("enum", _enum_check(declaration.enums[f.type.name]))
        checks[f.name] = check
    return checks


@dataclass(frozen=True, slots=True)
class QualityField:
    """A Customer field bound to one attribute of a system's one-to-one entity."""

    name: str
    source: str
    entity: str
    attribute: str
    check: FieldCheck | None


def quality_fields(
    declaration: Declaration, entities: Mapping[str, Mapping[str, EntitySpec]]
) -> list[QualityField]:
    """The declared fields the report measures, in declaration order."""
    bound = bindings_of(declaration).customer
    checks = field_checks(declaration)
    found = []
    for f in declaration.root.fields:
        binding = bound.get(f.name)
        if f.derive is not None or binding is None or binding.attribute is None:
            continue
        spec = entities.get(binding.source, {}).get(binding.entity)
        if spec is None or spec.many:
            continue
        found.append(
            QualityField(f.name, binding.source, binding.entity, binding.attribute, checks[f.name])
        )
    return found


def is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | dict | tuple):
        return not value
    return False


# --- figures ---------------------------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass
class IdentityFigures:
    """A system as the crosswalk sees it: cheap, no system is asked."""

    records: int = 0
    matched: int = 0  # records whose customer another system knows too
    duplicates: int = 0
    conflicts: int = 0
    unlinkable: int = 0

    @property
    def match_rate(self) -> float | None:
        return _share(self.matched, self.records)


def identity_figures(
    records: Mapping[tuple[str, str], str], issues: Iterable[Issue], systems: Sequence[str]
) -> dict[str, IdentityFigures]:
    """Per system (the configured ones first), from the crosswalk's (system, id) -> CUID
    and its issues."""
    systems_of: dict[str, set[str]] = {}
    for (system, _), cuid in records.items():
        systems_of.setdefault(cuid, set()).add(system)
    figures = {system: IdentityFigures() for system in systems}
    for (system, _), cuid in records.items():
        stats = figures.setdefault(system, IdentityFigures())
        stats.records += 1
        stats.matched += len(systems_of[cuid]) > 1
    for issue in issues:
        stats = figures.setdefault(issue.system, IdentityFigures())
        if issue.kind == "duplicate":
            stats.duplicates += 1
        elif issue.kind == "conflict":
            stats.conflicts += 1
        elif issue.kind == "unlinkable":
            stats.unlinkable += 1
    return figures


@dataclass
class FieldFigures:
    entity: str
    attribute: str
    check: str | None
    records: int = 0  # records read
    filled: int = 0  # with a non-empty value
    valid: int = 0  # non-empty and passing the check

    @property
    def completeness(self) -> float | None:
        return _share(self.filled, self.records)

    @property
    def validity(self) -> float | None:
        return _share(self.valid, self.filled) if self.check is not None else None

    @property
    def invalid(self) -> int | None:
        return self.filled - self.valid if self.check is not None else None


@dataclass
class SystemQuality:
    identity: IdentityFigures
    fields: dict[str, FieldFigures] = field(default_factory=dict)
    missing: int = 0  # linked records the system no longer returns
    error: str | None = None  # the system could not be read: no field figures

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.identity.records,
            "match_rate": self.identity.match_rate,
            "duplicates": self.identity.duplicates,
            "conflicts": self.identity.conflicts,
            "unlinkable": self.identity.unlinkable,
            "fields": {
                name: {"completeness": f.completeness, "validity": f.validity}
                for name, f in self.fields.items()
            },
        }


@dataclass(frozen=True, slots=True)
class WorstRecord:
    system: str
    id: str
    customer: str | None
    failed: tuple[str, ...]  # the fields whose check it fails, then its crosswalk issues


@dataclass
class QualityReport:
    ran_at: str
    systems: dict[str, SystemQuality]
    worst: list[WorstRecord]
    previous: QualityRun | None = None

    def summary(self) -> dict[str, Any]:
        """What is stored for the trend: every figure, no record."""
        return {"systems": {name: system.summary() for name, system in self.systems.items()}}

    def as_dict(self) -> dict[str, Any]:
        before = (self.previous.figures if self.previous else {}).get("systems", {})
        systems: dict[str, Any] = {}
        for name, system in self.systems.items():
            now = system.summary()
            was = before.get(name)
            fields = {}
            for field_name, figures in system.fields.items():
                was_field = (was or {}).get("fields", {}).get(field_name)
                fields[field_name] = {
                    "entity": figures.entity,
                    "attribute": figures.attribute,
                    "check": figures.check,
                    "records": figures.records,
                    "filled": figures.filled,
                    "invalid": figures.invalid,
                    "completeness": figures.completeness,
                    "validity": figures.validity,
                    "previous": was_field,
                }
            systems[name] = {
                **{key: value for key, value in now.items() if key != "fields"},
                "missing": system.missing,
                "error": system.error,
                "previous": (
                    {key: value for key, value in was.items() if key != "fields"} if was else None
                ),
                "fields": fields,
            }
        return {
            "ran_at": self.ran_at,
            "previous_run_at": self.previous.ran_at if self.previous else None,
            "systems": systems,
            "worst_records": [
                {
                    "system": record.system,
                    "id": record.id,
                    "customer": record.customer,
                    "failed": list(record.failed),
                }
                for record in self.worst
            ],
        }


# --- the run ---------------------------------------------------------------------------


async def _read(
    fetch: Fetch, source: str, entity: str, keys: Sequence[str], batch: int
) -> dict[str, Any]:
    """Every key's record, a batch at a time; SourceUnavailable when the system fails."""
    found: dict[str, Any] = {}
    for start in range(0, len(keys), batch):
        answer = await fetch(source, entity, keys[start : start + batch])
        for key, value in answer.items():
            if isinstance(value, SourceUnavailable):
                raise value
            found[key] = value
    return found


async def quality_report(
    store: CrosswalkStore,
    fetch: Fetch,
    declaration: Declaration,
    entities: Mapping[str, Mapping[str, EntitySpec]],
    systems: Sequence[str],
    *,
    worst: int = WORST,
    record: bool = True,
    batch: int = BATCH,
    now: dt.datetime | None = None,
) -> QualityReport:
    """One quality run over the crosswalk's records; stored for the trend (`record`)."""
    links = await store.links()
    issues = await store.issues()
    previous_runs = await store.quality_runs(last=1)
    cuid_of = {(link.system, link.system_id): link.cuid for link in links}
    figures = identity_figures(cuid_of, issues, systems)
    report_systems = {name: SystemQuality(stats) for name, stats in figures.items()}
    keys_of: dict[str, list[str]] = {}
    for system, system_id in cuid_of:
        keys_of.setdefault(system, []).append(system_id)
    by_entity: dict[tuple[str, str], list[QualityField]] = {}
    for quality_field in quality_fields(declaration, entities):
        if quality_field.source not in report_systems:
            continue  # a system the crosswalk does not link
        by_entity.setdefault((quality_field.source, quality_field.entity), []).append(quality_field)
        report_systems[quality_field.source].fields[quality_field.name] = FieldFigures(
            quality_field.entity,
            quality_field.attribute,
            quality_field.check.kind if quality_field.check else None,
        )
    failed: dict[tuple[str, str], list[str]] = {}

    async def measure(source: str, entity: str, measured: list[QualityField]) -> None:
        system = report_systems[source]
        keys = sorted(keys_of.get(source, []))
        try:
            records = await _read(fetch, source, entity, keys, batch)
        except SourceUnavailable as error:
            system.error = error.reason
            return
        system.missing = max(system.missing, len(keys) - len(records))
        for quality_field in measured:
            counts = system.fields[quality_field.name]
            for key in keys:
                found = records.get(key)
                if not isinstance(found, Mapping):
                    continue
                counts.records += 1
                value = found.get(quality_field.attribute)
                if is_empty(value):
                    continue
                counts.filled += 1
                if quality_field.check is None or quality_field.check.passes(value):
                    counts.valid += 1
                else:
                    failed.setdefault((source, key), []).append(quality_field.name)

    await asyncio.gather(
        *(measure(source, entity, measured) for (source, entity), measured in by_entity.items())
    )
    order = {name: index for index, name in enumerate(report_systems)}
    # A field's failures in declaration order, then the record's crosswalk issues.
    declared = {f.name: index for index, f in enumerate(declaration.root.fields)}
    for key in failed:
        failed[key].sort(key=lambda name: declared.get(name, len(declared)))
    for issue in issues:
        failed.setdefault((issue.system, issue.system_id), []).append(issue.kind)
    ranked = sorted(
        failed.items(),
        key=lambda item: (-len(item[1]), order.get(item[0][0], len(order)), item[0][1]),
    )
    report = QualityReport(
        ran_at=_stamp(now or dt.datetime.now(dt.UTC)),
        systems=report_systems,
        worst=[
            WorstRecord(system, system_id, cuid_of.get((system, system_id)), tuple(names))
            for (system, system_id), names in ranked[: max(worst, 0)]
        ],
        previous=previous_runs[-1] if previous_runs else None,
    )
    if record:
        await store.save_quality_run(QualityRun(report.ran_at, report.summary()))
    return report


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- gauges ----------------------------------------------------------------------------


def show_identity(metrics: Metrics, figures: Mapping[str, IdentityFigures]) -> None:
    """The cheap figures, from the crosswalk: after every identity sync."""
    for gauge in (
        metrics.identity_match_rate,
        metrics.quality_duplicates,
        metrics.quality_conflicts,
    ):
        gauge.clear()
    for system, stats in figures.items():
        if stats.match_rate is not None:
            metrics.identity_match_rate.labels(system).set(stats.match_rate)
        metrics.quality_duplicates.labels(system).set(stats.duplicates)
        metrics.quality_conflicts.labels(system).set(stats.conflicts)


def show_quality(metrics: Metrics, report: QualityReport) -> None:
    """Every figure of a quality run."""
    show_identity(metrics, {name: system.identity for name, system in report.systems.items()})
    metrics.quality_completeness.clear()
    metrics.quality_validity.clear()
    for system, quality in report.systems.items():
        for name, figures in quality.fields.items():
            if figures.completeness is not None:
                metrics.quality_completeness.labels(system, name).set(figures.completeness)
            if figures.validity is not None:
                metrics.quality_validity.labels(system, name).set(figures.validity)


# --- the text report -------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _with_previous(now: str, was: str | None) -> str:
    return now if was is None else f"{now} ({was})"


def render_text(report: QualityReport) -> str:
    """The report as tables: each figure with the previous run's in parentheses."""
    data = report.as_dict()
    lines = [
        f"data quality at {data['ran_at']}"
        + (
            f"; previous run {data['previous_run_at']} in parentheses"
            if data["previous_run_at"]
            else "; the first run"
        ),
        "",
    ]
    rows = [("system", "records", "match rate", "duplicates", "conflicts", "unlinkable", "")]
    for name, system in data["systems"].items():
        was = system["previous"] or {}
        rows.append(
            (
                name,
                _with_previous(str(system["records"]), _str(was.get("records"))),
                _with_previous(
                    _percent(system["match_rate"]),
                    _percent(was.get("match_rate")) if was else None,
                ),
                _with_previous(str(system["duplicates"]), _str(was.get("duplicates"))),
                _with_previous(str(system["conflicts"]), _str(was.get("conflicts"))),
                _with_previous(str(system["unlinkable"]), _str(was.get("unlinkable"))),
                "; ".join(
                    ([f"error: {system['error']}"] if system["error"] else [])
                    + ([f"{system['missing']} linked records gone"] if system["missing"] else [])
                ),
            )
        )
    lines += _table(rows)
    rows = [("system", "field", "check", "records", "completeness", "validity", "invalid")]
    for name, system in data["systems"].items():
        for field_name, figures in system["fields"].items():
            was = figures["previous"]
            rows.append(
                (
                    name,
                    field_name,
                    figures["check"] or "-",
                    str(figures["records"]),
                    _with_previous(
                        _percent(figures["completeness"]),
                        _percent(was.get("completeness")) if was else None,
                    ),
                    _with_previous(
                        _percent(figures["validity"]),
                        _percent(was.get("validity")) if was and figures["check"] else None,
                    ),
                    "-" if figures["invalid"] is None else str(figures["invalid"]),
                )
            )
    lines += ["", *_table(rows), ""]
    if data["worst_records"]:
        lines.append(f"records to fix first ({len(data['worst_records'])}, by id):")
        lines += _table(
            [("record", "customer", "failed")]
            + [
                (
                    f"{record['system']}:{record['id']}",
                    record["customer"] or "-",
                    ", ".join(record["failed"]),
                )
                for record in data["worst_records"]
            ]
        )
    else:
        lines.append("no record fails a check")
    return "\n".join(lines)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
