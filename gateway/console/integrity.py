"""The chains' integrity for the console: `c360 audit verify`'s own check (the same
`verify` over the same `scan`), run in the background and remembered, because on a large
log it takes longer than a page may wait (a million records in PostgreSQL: about two
minutes, in a worker process). A page gets the last finished report at once, with its
time, never waiting for a check, and a new check starts when that report is older than
`max_age_s`."""

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

from gateway.audit.chain import ChainReport, verify
from gateway.audit.sinks import AccessSink, PostgresSink

log = logging.getLogger("c360.console")

Item = tuple[str, Mapping[str, Any] | None]
BATCH = 2000


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    report: ChainReport
    torn_tail: str | None
    checked_at: dt.datetime


async def verify_sink(sink: AccessSink) -> tuple[ChainReport, str | None]:
    """`verify` over `sink.scan()`, streamed: the records pass through a bounded queue to
    a worker thread, so neither the whole log is held in memory nor the event loop
    blocked by the hashing."""
    batches: queue.Queue[list[Item] | None] = queue.Queue(maxsize=4)

    def items() -> Iterator[Item]:
        while (batch := batches.get()) is not None:
            yield from batch

    checking = asyncio.create_task(asyncio.to_thread(verify, items()))
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
    report = await checking
    return report, getattr(sink, "torn_at", None)


def verify_postgres(dsn: str) -> tuple[ChainReport, str | None]:
    """`verify_sink` in a worker process, over a connection of its own."""

    async def run() -> tuple[ChainReport, str | None]:
        sink = PostgresSink(dsn)
        try:
            return await verify_sink(sink)
        finally:
            await sink.close()

    return asyncio.run(run())


class IntegrityMonitor:
    def __init__(self, sink: AccessSink, max_age_s: float = 300.0) -> None:
        self.sink = sink
        self.max_age_s = max_age_s
        self.last: IntegrityReport | None = None
        self._finished_at = float("-inf")
        self._took_s = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def checking(self) -> bool:
        return self._task is not None and not self._task.done()

    def current(self, refresh: bool = False) -> IntegrityReport | None:
        """The last finished report, at once, starting a check when it is due. Never waits
        for one: the overview asks for it, and must answer within its time however large
        the log; the page asks again while `checking`."""
        # A check of a large log takes a while (a minute or so for a million records):
        # left alone, re-checks take at most a tenth of the time.
        age_limit = max(self.max_age_s, 10 * self._took_s)
        stale = time.monotonic() - self._finished_at > age_limit
        if (refresh or stale or self.last is None) and not self.checking:
            self._task = asyncio.create_task(self._check(), name="c360-console-verify")
        return self.last

    async def _check(self) -> None:
        started = time.perf_counter()
        try:
            if isinstance(self.sink, PostgresSink):
                # A shared log can hold millions of records: hash them in a process of
                # its own, or the hashing would hold the GIL against the requests served.
                with ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")
                ) as pool:
                    loop = asyncio.get_running_loop()
                    report, torn = await loop.run_in_executor(pool, verify_postgres, self.sink.dsn)
            else:
                report, torn = await verify_sink(self.sink)
        except Exception as error:  # the sink failed: keep the last report, retry later
            log.warning("integrity check failed", extra={"reason": type(error).__name__})
            return
        self.last = IntegrityReport(report, torn, dt.datetime.now(dt.UTC))
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


# One monitor per sink, that is per gateway: the console's readers are made per request,
# the check it remembers must outlive them. Weak keys: a gateway that is gone takes its
# monitor with it.
_monitors: weakref.WeakKeyDictionary[Any, IntegrityMonitor] = weakref.WeakKeyDictionary()


def monitor_for(sink: AccessSink) -> IntegrityMonitor:
    monitor = _monitors.get(sink)
    if monitor is None:
        monitor = _monitors[sink] = IntegrityMonitor(sink)
    return monitor
