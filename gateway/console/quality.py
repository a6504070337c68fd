"""The data-quality page's figures: the stored runs (`c360_quality_runs`: every figure,
no record) for the latest state and the trend, and this process's last run for what only
a run has: each field's counts and the records to fix first, by system and id. A run
reads every system's records, so the page starts one in the background and never waits
for it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import strawberry

from connectors.identity.store import CrosswalkStore, QualityRun
from gateway.quality import QualityReport
from resolvers.console_pages import (
    DataQuality,
    QualityFieldFigures,
    QualityRunFigures,
    QualitySystemFigures,
    QualityWorstRecord,
)

log = logging.getLogger("c360.console")


class QualityRuns:
    """This gateway's data-quality runs, one at a time: the page's, `quality_on_sync`'s
    and `Gateway.quality()`'s all start here, and a run asked for while one runs is that
    run (`start` says False; `run` waits for it). Keeps the last finished report."""

    def __init__(
        self, store: CrosswalkStore, measure: Callable[..., Awaitable[QualityReport]]
    ) -> None:
        self.store = store
        self._measure = measure  # one run, its options passed on (`worst`, `record`)
        self.latest: QualityReport | None = None  # this process's last run
        self._task: asyncio.Task[QualityReport] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, **options: Any) -> bool:
        """A run in the background, unless one is running (False then)."""
        running = self.running
        self._current(options)
        return not running

    async def run(self, **options: Any) -> QualityReport:
        """A run, awaited: a new one, or the one running (whose options it then has).
        A caller that gives up does not cancel it: other callers wait for it too."""
        return await asyncio.shield(self._current(options))

    def _current(self, options: dict[str, Any]) -> asyncio.Task[QualityReport]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._kept(options), name="c360-quality-run")
            self._task.add_done_callback(_logged)
        return self._task

    async def wait(self) -> QualityReport | None:
        """The last run's report, once it finishes (None when none started, or it failed)."""
        if self._task is None:
            return None
        with contextlib.suppress(Exception):
            return await asyncio.shield(self._task)
        return None

    async def _kept(self, options: dict[str, Any]) -> QualityReport:
        report = await self._measure(**options)
        self.latest = report
        return report

    async def runs(self, last: int) -> list[QualityRun]:
        """The stored runs, oldest first."""
        return await self.store.quality_runs(last=last)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _logged(task: asyncio.Task[QualityReport]) -> None:
    # Retrieved here, so that a run nobody waits for (the page's) is not lost unsaid.
    if not task.cancelled() and task.exception() is not None:
        log.error("data-quality run failed", exc_info=task.exception())


def _moment(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


def stored_figures(run: QualityRun) -> QualityRunFigures:
    """A stored run's figures (its summary: shares and counts, no record counts)."""
    systems, fields = [], []
    for name, system in (run.figures.get("systems") or {}).items():
        systems.append(
            QualitySystemFigures(
                system=name,
                records=system.get("records"),
                match_rate=system.get("match_rate"),
                duplicates=system.get("duplicates"),
                conflicts=system.get("conflicts"),
                unlinkable=system.get("unlinkable"),
                missing=None,
                error=None,
            )
        )
        for field_name, shares in (system.get("fields") or {}).items():
            fields.append(
                QualityFieldFigures(
                    system=name,
                    field=field_name,
                    check=None,
                    completeness=shares.get("completeness"),
                    validity=shares.get("validity"),
                    records=None,
                    filled=None,
                    invalid=None,
                )
            )
    return QualityRunFigures(ran_at=_moment(run.ran_at), systems=systems, fields=fields)


def report_figures(report: QualityReport) -> QualityRunFigures:
    """A run of this process's: every figure, with the counts behind the shares."""
    systems, fields = [], []
    for name, system in report.systems.items():
        identity = system.identity
        systems.append(
            QualitySystemFigures(
                system=name,
                records=identity.records,
                match_rate=identity.match_rate,
                duplicates=identity.duplicates,
                conflicts=identity.conflicts,
                unlinkable=identity.unlinkable,
                missing=system.missing,
                error=system.error,
            )
        )
        for field_name, figures in system.fields.items():
            fields.append(
                QualityFieldFigures(
                    system=name,
                    field=field_name,
                    check=figures.check,
                    completeness=figures.completeness,
                    validity=figures.validity,
                    records=figures.records,
                    filled=figures.filled,
                    invalid=figures.invalid,
                )
            )
    return QualityRunFigures(ran_at=_moment(report.ran_at), systems=systems, fields=fields)


async def data_quality(quality: QualityRuns, runs: int) -> DataQuality:
    stored = await quality.runs(runs)
    trend = [stored_figures(run) for run in stored]
    report = quality.latest
    latest = trend[-1] if trend else None
    if report is not None and (latest is None or _moment(report.ran_at) >= latest.ran_at):
        latest = report_figures(report)
    return DataQuality(
        running=quality.running,
        latest=latest,
        trend=trend,
        worst=[
            QualityWorstRecord(
                system=record.system,
                id=record.id,
                customer=strawberry.ID(record.customer) if record.customer else None,
                failed=list(record.failed),
            )
            for record in (report.worst if report is not None else ())
        ],
        worst_ran_at=_moment(report.ran_at) if report is not None else None,
    )
