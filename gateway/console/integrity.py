"""The chains' integrity for the console: `c360 audit verify [--checkpoint latest]`'s own
check (the same `verify` and checkpoint `compare` over the same `scan`), run in the
background and remembered, because on a large log it takes longer than a page may wait
(a million records in PostgreSQL: minutes, in a worker process). A page gets the last
finished report at once, with its time, never waiting for a check.

A report is kept per (latest checkpoint, log size): a new check starts when the newest
checkpoint is another one, when asked (`refresh`), or when the log changed size and the
report is older than `max_age_s`; a page reloaded over an unchanged log costs a directory
listing and a size, never a hash."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import multiprocessing
import queue
import time
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from gateway.audit import checkpoint as checkpoints
from gateway.audit.chain import ChainReport, verify
from gateway.audit.checkpoint import CheckpointSettings, Finding, LogScan
from gateway.audit.sinks import AccessSink, JsonlSink, PostgresSink

log = logging.getLogger("c360.console")

Item = tuple[str, Mapping[str, Any] | None]
BATCH = 2000


Checked = tuple[ChainReport, str | None, tuple[Finding, ...] | None]


@dataclass(frozen=True, slots=True)
class LatestCheckpoint:
    """The newest checkpoint of `checkpoint_dir` (not a prune's cut, when there is another),
    as `c360 audit verify --checkpoint latest` picks it, and whether a configured key
    signed exactly it (`signature_problem` None)."""

    file: str
    checkpoint: Mapping[str, Any]
    signature_problem: str | None

    @property
    def key(self) -> tuple[str, str]:
        return self.file, str(self.checkpoint.get("signature"))

    @property
    def trusted(self) -> bool:
        return self.signature_problem is None


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    report: ChainReport
    torn_tail: str | None
    checked_at: dt.datetime
    checkpoint: LatestCheckpoint | None = None
    # What the log no longer matches of the checkpoint, named as `verify --checkpoint`
    # names it; None when not compared (no checkpoint, or one no configured key signed).
    findings: tuple[Finding, ...] | None = None
    log_size: int | None = None  # the size the check started from (bytes, or records)


def latest_checkpoint(settings: CheckpointSettings | None) -> LatestCheckpoint | None:
    """Reads files: call it in a thread."""
    if settings is None:
        return None
    found = checkpoints.newest(settings.directory, lambda c: c["scope"] != "cut")
    found = found or checkpoints.newest(settings.directory, lambda c: True)
    if found is None:
        return None
    path, checkpoint = found
    problem = checkpoints.check_signature(checkpoint, settings.public_keys())
    return LatestCheckpoint(path.name, checkpoint, problem)


async def log_size(sink: AccessSink) -> int | None:
    """A cheap measure that changes whenever records are added or removed: the JSONL
    files' bytes, the PostgreSQL table's rows (an index-only count)."""
    if isinstance(sink, JsonlSink):

        def size() -> int:
            total = 0
            for path in [*sink.files(), sink.cut_path]:
                try:
                    total += path.stat().st_size
                except FileNotFoundError:
                    continue  # rotated or pruned meanwhile, or no cut
            return total

        return await asyncio.to_thread(size)
    if isinstance(sink, PostgresSink):
        try:
            async with sink.engine.connect() as connection:
                counted = await connection.scalar(select(func.count()).select_from(sink.table))
        except (SQLAlchemyError, OSError):
            return None  # the check that follows says what is wrong with the database
        return int(counted or 0)
    return None


def examine(
    items: Iterator[Item], checkpoint: Mapping[str, Any] | None
) -> tuple[ChainReport, LogScan | None]:
    """`verify` over the items, and the checkpoint's trees read on the way (one pass)."""
    if checkpoint is None:
        return verify(items), None
    wanted = {name: str(entry.get("last", "")) for name, entry in checkpoint["chains"].items()}
    scan = LogScan(wanted=wanted)

    def fed() -> Iterator[Item]:
        for item in items:
            scan.add(item[1])
            yield item

    return verify(fed()), scan


def findings_of(
    checkpoint: Mapping[str, Any] | None,
    scan: LogScan | None,
    report: ChainReport,
    torn: str | None,
) -> tuple[Finding, ...] | None:
    if checkpoint is None or scan is None:
        return None
    return tuple(checkpoints.compare(checkpoint, scan, report, torn))


async def verify_sink(sink: AccessSink, checkpoint: Mapping[str, Any] | None = None) -> Checked:
    """`verify` over `sink.scan()` (and, with a trusted checkpoint, the log compared with
    it), streamed: the records pass through a bounded queue to a worker thread, so the
    event loop is never blocked by the hashing. Without a checkpoint nothing of the log
    is held in memory; with one, a leaf hash per record (the trees `compare` needs)."""
    batches: queue.Queue[list[Item] | None] = queue.Queue(maxsize=4)

    def items() -> Iterator[Item]:
        while (batch := batches.get()) is not None:
            yield from batch

    checking = asyncio.create_task(asyncio.to_thread(examine, items(), checkpoint))
    try:
        batch: list[Item] = []
        async for item in sink.scan():
            batch.append(item)
            if len(batch) >= BATCH:
                await asyncio.to_thread(batches.put, batch)
                batch = []
        await asyncio.to_thread(batches.put, batch)
    finally:
        # Always end the worker's input, or a failed scan would leave the thread waiting.
        await asyncio.to_thread(batches.put, None)
    report, scan = await checking
    torn = getattr(sink, "torn_at", None)
    # The trees' roots are hashed here: a thread too.
    found = await asyncio.to_thread(findings_of, checkpoint, scan, report, torn)
    return report, torn, found


def verify_postgres(dsn: str, checkpoint: Mapping[str, Any] | None = None) -> Checked:
    """`verify_sink` in a worker process, over a connection of its own."""

    async def run() -> Checked:
        sink = PostgresSink(dsn)
        try:
            return await verify_sink(sink, checkpoint)
        finally:
            await sink.close()

    return asyncio.run(run())


class IntegrityMonitor:
    def __init__(self, sink: AccessSink, max_age_s: float = 300.0) -> None:
        self.sink = sink
        self.max_age_s = max_age_s
        self.last: IntegrityReport | None = None
        self.latest: LatestCheckpoint | None = None  # as the last page saw it
        self._finished_at = float("-inf")
        self._took_s = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def checking(self) -> bool:
        return self._task is not None and not self._task.done()

    async def current(
        self, refresh: bool = False, settings: CheckpointSettings | None = None
    ) -> IntegrityReport | None:
        """The last finished report, at once, starting a check when it is due. Never waits
        for one: the overview asks for it, and must answer within its time however large
        the log; the page asks again while `checking`. `settings`: the configured
        checkpoint keys and directory (read per call: keys rotate on SIGHUP)."""
        latest = self.latest = await asyncio.to_thread(latest_checkpoint, settings)
        size = await log_size(self.sink)
        last = self.last
        # A check of a large log takes a while (minutes for millions of records): left
        # alone, re-checks take at most a tenth of the time, and a writer's periodic
        # checkpoints do not keep one running back to back.
        since = time.monotonic() - self._finished_at
        stale = since > max(self.max_age_s, 10 * self._took_s)
        due = (
            refresh
            or last is None
            or (_key(last.checkpoint) != _key(latest) and since > 10 * self._took_s)
            or (stale and last.log_size != size)
        )
        if due and not self.checking:
            self._task = asyncio.create_task(self._check(latest, size), name="c360-console-verify")
        return last

    async def _check(self, latest: LatestCheckpoint | None, size: int | None) -> None:
        started = time.perf_counter()
        # Compared only with a checkpoint a configured key signed, as the CLI refuses one.
        against = latest.checkpoint if latest is not None and latest.trusted else None
        try:
            if isinstance(self.sink, PostgresSink):
                # A shared log can hold millions of records: hash them in a process of
                # its own, or the hashing would hold the GIL against the requests served.
                with ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")
                ) as pool:
                    loop = asyncio.get_running_loop()
                    report, torn, found = await loop.run_in_executor(
                        pool, verify_postgres, self.sink.dsn, against
                    )
            else:
                report, torn, found = await verify_sink(self.sink, against)
        except Exception as error:  # the sink failed: keep the last report, retry later
            log.warning("integrity check failed", extra={"reason": type(error).__name__})
            return
        self.last = IntegrityReport(
            report, torn, dt.datetime.now(dt.UTC), latest, found, log_size=size
        )
        self._finished_at = time.monotonic()
        self._took_s = time.perf_counter() - started
        log.info(
            "integrity checked",
            extra={
                "records": report.records,
                "intact": report.intact,
                "seconds": round(self._took_s, 3),
            },
        )


def _key(latest: LatestCheckpoint | None) -> tuple[str, str] | None:
    return latest.key if latest is not None else None


# One monitor per sink, that is per gateway: the console's readers are made per request,
# the check it remembers must outlive them. Weak keys: a gateway that is gone takes its
# monitor with it.
_monitors: weakref.WeakKeyDictionary[Any, IntegrityMonitor] = weakref.WeakKeyDictionary()


def monitor_for(sink: AccessSink) -> IntegrityMonitor:
    monitor = _monitors.get(sink)
    if monitor is None:
        monitor = _monitors[sink] = IntegrityMonitor(sink)
    return monitor
