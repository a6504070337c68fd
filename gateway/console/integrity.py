"""The chains' integrity for the console: `c360 audit verify [--checkpoint latest]`'s own
check (the same `verify` and checkpoint `compare` over the same `scan`), run in the
background and remembered, because a check reads and hashes every record and a page may
not wait for that. A page gets the last finished report at once, with its time.

A report stands for (the latest checkpoint, the log's state): a new check starts when
asked (`refresh`), when the newest checkpoint is another one, when the log's state changed
(a record added, edited or removed), and, changed or not, once the report is older than
`max_age_s`. Looking costs a directory listing and a `stat` per file, or one row of
PostgreSQL's table statistics: never a count, never a hash."""

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

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from gateway.audit import checkpoint as checkpoints
from gateway.audit.chain import ChainReport, verify
from gateway.audit.checkpoint import CheckpointSettings, Finding, LogScan
from gateway.audit.sinks import AccessSink, Item, JsonlSink, PostgresSink

log = logging.getLogger("c360.console")

BATCH = 2000


# What `c360 audit verify` says of a log: the chains' report, where a torn tail was cut,
# and the log compared with the checkpoint (None when it was not compared).
LogVerdict = tuple[ChainReport, str | None, tuple[Finding, ...] | None]
# What changes when the log does (`log_state`); equal states, the same records.
LogState = tuple[tuple[str, int, int], ...] | tuple[int, int, int, int]


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
    log_state: LogState | None = None  # the log's state the check started from


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


async def log_state(sink: AccessSink) -> LogState | None:
    """A cheap signal that changes when the log does, edits included: each JSONL file's
    size and modification time (an edit in place, same length or not, moves the time),
    or PostgreSQL's counts of rows inserted, updated and deleted in the table. Those are
    statistics, published a little after the change and lost on a statistics reset: the
    report's age (`max_age_s`) is the backstop. None when it cannot be read."""
    if isinstance(sink, JsonlSink):

        def state() -> LogState:
            files = []
            for path in [*sink.files(), sink.cut_path]:
                try:
                    found = path.stat()
                except FileNotFoundError:
                    continue  # rotated or pruned meanwhile, or no cut
                files.append((path.name, found.st_size, found.st_mtime_ns))
            return tuple(files)

        return await asyncio.to_thread(state)
    if isinstance(sink, PostgresSink):
        table = sink.table
        changes = text(
            # n_live_tup too: a TRUNCATE counts in none of the others.
            "SELECT n_tup_ins, n_tup_upd, n_tup_del, n_live_tup FROM pg_stat_user_tables"
            " WHERE relname = :name AND schemaname = coalesce(:schema, current_schema())"
        )
        try:
            async with sink.engine.connect() as connection:
                row = (
                    await connection.execute(changes, {"name": table.name, "schema": table.schema})
                ).first()
        except (SQLAlchemyError, OSError):
            return None  # the check that follows says what is wrong with the database
        return (int(row[0]), int(row[1]), int(row[2]), int(row[3])) if row is not None else None
    return None


def verify_and_scan(
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


async def verify_sink(sink: AccessSink, checkpoint: Mapping[str, Any] | None = None) -> LogVerdict:
    """`verify` over `sink.scan()` (and, with a trusted checkpoint, the log compared with
    it), streamed: the records pass through a bounded queue to a worker thread, so the
    event loop is never blocked by the hashing. Without a checkpoint nothing of the log
    is held in memory; with one, a leaf hash per record (the trees `compare` needs)."""
    batches: queue.Queue[list[Item] | None] = queue.Queue(maxsize=4)

    def items() -> Iterator[Item]:
        while (batch := batches.get()) is not None:
            yield from batch

    checking = asyncio.create_task(asyncio.to_thread(verify_and_scan, items(), checkpoint))
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
    torn = report.torn_tail
    # The trees' roots are hashed here: a thread too.
    found = await asyncio.to_thread(findings_of, checkpoint, scan, report, torn)
    return report, torn, found


def verify_postgres(dsn: str, checkpoint: Mapping[str, Any] | None = None) -> LogVerdict:
    """`verify_sink` in a worker process, over a connection of its own."""

    async def run() -> LogVerdict:
        sink = PostgresSink(dsn)
        try:
            return await verify_sink(sink, checkpoint)
        finally:
            await sink.close()

    return asyncio.run(run())


class IntegrityMonitor:
    """The last finished check of one sink's log, and the next one when it is due."""

    def __init__(
        self, sink: AccessSink, max_age_s: float = 300.0, changed_after_s: float = 30.0
    ) -> None:
        self.sink = sink
        self.max_age_s = max_age_s
        # Longer than the console's longest poll while a check runs: a page polling the
        # end of one check does not start the next over the records its own polls wrote.
        self.changed_after_s = changed_after_s
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
        state = await log_state(self.sink)
        last = self.last
        # Left alone, checks take at most a tenth of the time, however long one takes:
        # a busy log or a writer's periodic checkpoints never keep one running back to back.
        since = time.monotonic() - self._finished_at
        rested = since > 10 * self._took_s
        due = (
            refresh
            or last is None
            or (rested and since > self.max_age_s)
            or (rested and _key(last.checkpoint) != _key(latest))
            or (rested and since > self.changed_after_s and last.log_state != state)
        )
        if due and not self.checking:
            self._task = asyncio.create_task(self._check(latest, state), name="c360-console-verify")
        return last

    async def _check(self, latest: LatestCheckpoint | None, state: LogState | None) -> None:
        started = time.perf_counter()
        # Compared only with a checkpoint a configured key signed, as the CLI refuses one.
        against = latest.checkpoint if latest is not None and latest.trusted else None
        try:
            if isinstance(self.sink, PostgresSink):
                # A shared log has every gateway's records: hash them in a process of its
                # own, or the hashing would hold the GIL against the requests served.
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
            report, torn, dt.datetime.now(dt.UTC), latest, found, log_state=state
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
