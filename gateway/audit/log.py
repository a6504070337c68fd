"""Writing access records off the request path, without ever dropping one silently.

`record()` seals a record into the chain at once (so the chain's order is the order of
requests) and queues it; one writer task writes batches to the sink. When the queue is
full or the sink fails, records go to a local spill file, in order, and every record
after them goes there too until the writer has replayed the spill into the sink: the
order per chain holds. Each process claims a chain of its own when it starts
(gateway/audit/writers.py); with `checkpoint_every`, the writer grows its chain's Merkle
tree from what the sink has taken and signs a checkpoint of it every that many records
(and when it stops). In `fail_closed` mode a request waits until its record is durable
(in the sink, or fsynced in the spill) and is refused (503) when it cannot be; otherwise
its record is made a moment after its answer (`later()`). With `[audit] encrypt`, the
spill file's lines are sealed as the JSONL log's are (gateway/audit/encryption.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit import checkpoint as checkpoints
from gateway.audit import merkle, otel
from gateway.audit.alerts import Alert, AlertSettings, build_alert_tracker
from gateway.audit.chain import GENESIS, ChainHead
from gateway.audit.encryption import EncryptionSettings, LineCodec, Unreadable
from gateway.audit.sinks import AccessSink, JsonlSink, SinkUnavailable
from gateway.audit.writers import ChainClaim, claim_chain, suffixed
from gateway.errors import ConfigError

log = logging.getLogger("c360.audit")

# How long after an answer its record is made (AccessLog.later): past the time the
# client's next request takes to reach its systems, so that the record stays off that
# request's critical path (bench (a) overhead, `python -m bench.variants`; the figures
# behind 10 ms are in bench/HISTORY.md).
AFTER_ANSWER_S = 0.01


class AuditUnavailable(Exception):
    """A record could not be made durable (fail_closed refuses the request)."""


@dataclass(frozen=True)
class AuditSettings:
    chain: str
    spill_path: Path
    fail_closed: bool = False
    queue_size: int = 10_000
    batch_size: int = 500
    durable_timeout_s: float = 2.0
    retry_interval_s: float = 1.0
    # A record must be in the sink this long after it was made, or it goes to the spill
    # file (fsynced) with everything after it: what a crash can lose while a sink stalls.
    write_timeout_s: float = 1.0
    alerts: AlertSettings = field(default_factory=AlertSettings)
    checkpoints: checkpoints.CheckpointSettings | None = None
    retention_days: int = 0  # `c360 audit prune` without --before keeps this many days
    encryption: EncryptionSettings | None = None  # `[audit] encrypt`: JSONL and spill lines


@dataclass
class _Pending:
    record: dict[str, Any]
    durable: asyncio.Future[None] | None
    made: float = field(default_factory=time.monotonic)


class AccessLog:
    # How long stop() lets the writer take what the alert windows handed on as they closed.
    WRITER_GRACE_S = 2.0

    def __init__(self, settings: AuditSettings, sink: AccessSink) -> None:
        self.settings = settings
        self.sink = sink
        self.head = ChainHead(settings.chain)
        self.patterns = build_alert_tracker(settings.alerts)
        self.codec = LineCodec.of(settings.encryption)  # the spill file's lines
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(settings.queue_size)
        self._writer: asyncio.Task[None] | None = None
        self._spilling = False
        self._replayed = 0  # bytes of the spill already in the sink
        self.written = 0
        self.spilled = 0
        self.lost = 0
        self._due: list[Callable[[], None]] = []  # see later()
        self._due_at: asyncio.TimerHandle | None = None
        self._claim: ChainClaim | None = None
        self._stalled: asyncio.Future[None] | None = None  # a write past its time, not undone
        self._stalled_head = 0  # replay: the sink's head when it began (non-idempotent sinks)
        self._abandoned: set[asyncio.Future[None]] = set()
        self.tree: checkpoints.WriterTree | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self.checkpoints_written = 0
        self.export: otel.AccessExport | None = None  # OTEL_LOGS_EXPORTER

    # -- life cycle ------------------------------------------------------------------

    def claim(self) -> None:
        """Take this process's own chain (the configured name, or with a worker's suffix)
        and the spill file that goes with it."""
        if self._claim is not None:
            return
        settings = self.settings
        claim = claim_chain(settings.chain, settings.spill_path.parent)
        self._claim = claim
        self.settings = dataclasses.replace(
            settings, chain=claim.chain, spill_path=suffixed(settings.spill_path, claim.suffix)
        )
        self.head = ChainHead(claim.chain)

    async def start(self) -> None:
        # The key ring first: a key that does not load stops start-up here, not the writer.
        await asyncio.to_thread(self.codec.load_keys)
        self.claim()
        self.export = otel.from_environ(os.environ)
        await self.sink.open()
        self._advise_on_key_placement()
        if self.settings.alerts.unshared:
            log.warning(
                "access pattern alerts counted per instance: %s", self.settings.alerts.unshared
            )
        self.head = await self.sink.head(self.settings.chain)
        spill = self.settings.spill_path
        if spill.exists() and spill.stat().st_size:
            # Records spilled before a restart are newer than the sink's: continue from them.
            self._spilling = True
            for record in _read_spill(spill, 0, self.codec)[0]:
                if record.get("chain") == self.head.name and record["seq"] > self.head.seq:
                    self.head = ChainHead(self.head.name, record["seq"], record["hash"])
        cp = self.settings.checkpoints
        if cp is not None and cp.every > 0:
            self.tree = await self._resume_tree(cp)
        self._writer = asyncio.create_task(self._run(), name="c360-access-log")

    async def _resume_tree(self, cp: checkpoints.CheckpointSettings) -> checkpoints.WriterTree:
        """The chain's tree as the sink holds it: from this chain's latest checkpoint that
        this key set trusts (its frontier), then the records after it; from the cut or
        the start when there is none (or the log no longer matches it, which is logged:
        `verify --checkpoint` names what changed)."""
        chain = self.settings.chain
        start = checkpoints.WriterTree()
        cut = await self.sink.cut()
        if cut is not None and chain in cut["chains"]:
            start = _tree_at(cut["chains"][chain])
        start_of_cut = start
        keys = cp.public_keys()

        def usable(found: dict[str, Any]) -> bool:
            entry = found["chains"].get(chain)
            return (
                entry is not None
                and start.frontier.size <= int(entry["size"])
                and checkpoints.check_signature(found, keys) is None
            )

        latest = await asyncio.to_thread(checkpoints.newest, cp.directory, usable)
        if latest is not None:
            start = _tree_at(latest[1]["chains"][chain])
        tree = start
        resumed = tree is not start_of_cut and tree.frontier.size > start_of_cut.frontier.size
        # From a checkpoint: its last record too, which must still be there as it was.
        records = await self.sink.chain_records(chain, tree.frontier.size + (0 if resumed else 1))
        if resumed:
            last = records.pop(0) if records else {}
            if last.get("seq") != tree.frontier.size or last.get("hash") != tree.last_hash:
                log.critical(
                    "the access log does not match its latest checkpoint: run "
                    "`c360 audit verify --checkpoint`",
                    extra={"chain": chain, "size": tree.frontier.size},
                )
                tree = start_of_cut
                records = await self.sink.chain_records(chain, tree.frontier.size + 1)
        for record in records:
            tree.add(record)
        return tree

    def rotate_checkpoint_keys(self, current: AuditSettings, new: AuditSettings) -> bool:
        """SIGHUP: when only `audit.checkpoint_key` changed, sign with the new first key
        from the next checkpoint on (and trust all of them). False when anything else of
        `[audit]` changed too (that needs a restart)."""
        if current.checkpoints is None or new.checkpoints is None:
            return False
        same_keys = dataclasses.replace(
            new, checkpoints=dataclasses.replace(new.checkpoints, keys=current.checkpoints.keys)
        )
        if same_keys != current or self.settings.checkpoints is None:
            return False
        self.settings = dataclasses.replace(
            self.settings,
            checkpoints=dataclasses.replace(self.settings.checkpoints, keys=new.checkpoints.keys),
        )
        return True

    def _advise_on_key_placement(self) -> None:
        """One warning when the keys sealing the log share its file system: a copy of that
        disk (a backup, a snapshot, a stolen volume) then carries both."""
        encryption = self.settings.encryption
        if encryption is None or not encryption.encrypt:
            return
        places = [self.settings.spill_path.parent]
        if isinstance(self.sink, JsonlSink):
            places.append(self.sink.path.parent)
        keys = _device(encryption.key_dir)
        beside = [str(place) for place in places if keys is not None and _device(place) == keys]
        if beside:
            log.warning(
                "the access log's encryption keys are on the same file system as the log: "
                "consider audit.encryption_key_dir on another volume or a secret mount",
                extra={"key_dir": str(encryption.key_dir), "log_dirs": beside},
            )

    async def flush(self) -> None:
        """Wait until every record, those due after an answer too (and the alerts they
        raise), is in the sink (or spilled)."""
        self._run_due()
        await self.patterns.settled()
        await self._queue.join()

    @property
    def spilling(self) -> bool:
        return self._spilling

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (or spill it), then stop the writer."""
        if self._writer is None:
            return
        self._run_due()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.patterns.settled()
                await self._queue.join()
        # Before the writer stops: what Redis has not answered yet is counted in memory,
        # and the alerts it raises are queued with the rest, for the writer to take (a
        # short grace of its own: the time above may have gone to a silent Redis).
        await self.patterns.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.WRITER_GRACE_S):
                await self._queue.join()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
        leftovers: list[_Pending] = []
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        if leftovers:
            self._spill(leftovers)
        if self._checkpointing is not None:
            with contextlib.suppress(Exception):
                await self._checkpointing
        if self.tree is not None and self.tree.frontier.size > self.tree.checkpointed:
            await self._checkpoint()
        await self.sink.close()
        if self.export is not None:
            await asyncio.to_thread(self.export.shutdown)
            self.export = None
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    # -- recording ---------------------------------------------------------------------

    def later(self, job: Callable[[], None]) -> None:
        """Run `job` (a request's bookkeeping after its answer, its record among it) a
        moment from now, with any others due by then. A client sends its next request as
        soon as an answer arrives; that request then does not wait behind the last one's
        record (bench (a) overhead, `python -m bench.variants`). flush() and stop() run
        what is due first, so the delay loses nothing that an orderly stop would keep
        (tests/test_audit.py)."""
        self._due.append(job)
        if self._due_at is None:
            self._due_at = asyncio.get_running_loop().call_later(AFTER_ANSWER_S, self._run_due)

    def _run_due(self) -> None:
        if self._due_at is not None:
            self._due_at.cancel()
            self._due_at = None
        jobs, self._due = self._due, []
        for job in jobs:
            try:
                job()
            except Exception:
                log.exception("recording a request after its answer failed")

    def record(
        self, record: dict[str, Any], *, awaited: bool = True
    ) -> asyncio.Future[None] | None:
        """Seal and queue one record. In fail_closed mode, returns a future that resolves
        when the record is durable (await it through `durable()`); not for a record
        nobody waits for (`awaited=False`)."""
        self.head.seal(record)
        wanted = self.settings.fail_closed and awaited
        future = asyncio.get_running_loop().create_future() if wanted else None
        pending = _Pending(record, future)
        if self._spilling:
            self._spill([pending])
            return future
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            log.warning("access log queue full: spilling to disk")
            self._spilling = True
            self._spill([pending])
        return future

    async def durable(self, future: asyncio.Future[None] | None) -> None:
        if future is None:
            return
        try:
            async with asyncio.timeout(self.settings.durable_timeout_s):
                await future
        except TimeoutError as error:
            raise AuditUnavailable("the access record was not durable in time") from error

    def count_alerts(self, record: dict[str, Any], read_customers: set[str], denied: int) -> None:
        """Count a request's reads and denials in its subject's alert windows, and record
        the alerts that raises after the request's record: at once when the windows are
        in memory, once Redis has answered when they are shared (off the request's path;
        flush() and stop() wait for it)."""
        subject = record.get("subject")
        if not subject or (not read_customers and not denied):
            return
        self.patterns.submit(
            subject, read_customers, denied, lambda alerts: self._record_alerts(record, alerts)
        )

    def _record_alerts(self, record: Mapping[str, Any], alerts: list[Alert]) -> None:
        for alert in alerts:
            log.warning(
                "access pattern alert",
                extra={
                    "subject": record.get("subject"),
                    "trace_id": record.get("trace_id"),
                    **alert,
                },
            )
            self.record(alert_record(record, alert), awaited=False)

    # -- the writer --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if self._spilling:
                try:
                    await self._replay()
                except Exception:  # never the writer's end: the replay is tried again
                    log.exception("access log spill replay failed")
                if self._spilling:
                    await asyncio.sleep(self.settings.retry_interval_s)
                continue
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self.settings.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            taken = len(batch)
            deadline = batch[0].made + self.settings.write_timeout_s
            try:
                await self._write_by([pending.record for pending in batch], deadline)
            except asyncio.CancelledError:
                # Stopped while writing: the batch goes to the spill file, which the next
                # start replays (skipping what the sink took after all), never nowhere.
                self._spill(batch)
                raise
            except Exception as error:  # SinkUnavailable, TimeoutError, or a bug
                # Anything else a sink raises is a bug there, but the writer must outlive
                # it: a dead writer loses every later record without a word.
                log.error(
                    "access log sink unavailable: spilling to disk",
                    exc_info=not isinstance(error, SinkUnavailable | TimeoutError),
                    extra={"reason": str(error) or "the write took too long"},
                )
                # Everything still queued is newer than this batch: spill it all, in order.
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    taken += 1
                self._spilling = True
                self._spill(batch)
            else:
                self.written += len(batch)
                for pending in batch:
                    _resolve(pending.durable)
                self._grown([pending.record for pending in batch])
            for _ in range(taken):
                self._queue.task_done()

    # -- checkpoints -------------------------------------------------------------------

    def _grown(self, records: list[dict[str, Any]]) -> None:
        """Records the sink has taken, in order: to OpenTelemetry when it is on; into the
        tree; a checkpoint when due."""
        if self.export is not None:
            self.export.emit(records)
        tree, cp = self.tree, self.settings.checkpoints
        if tree is None or cp is None:
            return
        for record in records:
            tree.add(record)
        due = tree.frontier.size - tree.checkpointed >= cp.every
        if due and (self._checkpointing is None or self._checkpointing.done()):
            self._checkpointing = asyncio.create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Sign and store a checkpoint of this chain as the sink holds it now (synced
        first: a checkpoint never covers what a crash of the machine could still lose)."""
        tree, cp = self.tree, self.settings.checkpoints
        if tree is None or cp is None:
            return
        entry = tree.entry()
        tree.checkpointed = entry["size"]
        try:
            await self.sink.sync()
            made = checkpoints.make({self.settings.chain: entry}, "chain", self.sink.label(), cp)
            await asyncio.to_thread(checkpoints.store, made, cp)
            self.checkpoints_written += 1
        except OSError as error:
            log.error(
                "access log checkpoint not written",
                extra={"chain": self.settings.chain, "reason": str(error)},
            )

    def _spill(self, batch: list[_Pending]) -> None:
        """Append to the spill file and fsync: durable, in order. Synchronous on purpose,
        so nothing can be queued between two spilled records."""
        path = self.settings.spill_path
        try:
            data = b"".join(self.codec.encode(pending.record) + b"\n" for pending in batch)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except (OSError, ValueError, TypeError) as error:
            # ValueError: a key file that does not load; TypeError: a record that is not
            # JSON (a bug upstream). Either way the writer runs on and says what was lost.
            self.lost += len(batch)
            log.critical(
                "access records could not be written anywhere",
                extra={
                    "records": len(batch),
                    "reason": getattr(error, "strerror", None) or str(error),
                },
            )
            for pending in batch:
                _fail(pending.durable, AuditUnavailable("neither the sink nor the spill file"))
            return
        self.spilled += len(batch)
        for pending in batch:
            _resolve(pending.durable)

    async def _write_by(self, records: list[dict[str, Any]], deadline: float) -> None:
        """Write, or raise TimeoutError once `deadline` has passed. A sink whose writes are
        idempotent (PostgreSQL: a record already there is skipped) has the write
        cancelled (it may have committed; the replay does not mind); any other's (JSONL,
        on a thread that cannot be stopped) is waited for before anything else is
        written, so that nothing lands out of order."""
        await self._settle()
        task = asyncio.ensure_future(self.sink.write(records))
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
        if task in done:
            task.result()
            return
        if getattr(self.sink, "idempotent", False):
            task.cancel()
            self._abandoned.add(task)  # its clean-up may wait on the stalled server
            task.add_done_callback(self._forget)
        else:
            self._stalled = task
        raise TimeoutError(f"{self.sink.name}: no answer within the write timeout")

    async def _settle(self) -> None:
        """Wait for a write that ran past its time and could not be cancelled."""
        if self._stalled is not None:
            with contextlib.suppress(Exception):
                await self._stalled
            self._stalled = None

    def _forget(self, task: asyncio.Future[None]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: it is expected

    async def _replay(self) -> None:
        """Move spilled records into the sink, oldest first; done when caught up."""
        path = self.settings.spill_path
        await self._settle()
        if self._replayed == 0 and not getattr(self.sink, "idempotent", False):
            # A write that ran past its time may have landed after all: skip what the sink
            # has (JSONL appends are not idempotent).
            try:
                self._stalled_head = (await self.sink.head(self.settings.chain)).seq
            except (SinkUnavailable, OSError, ConfigError):  # ConfigError: a key that fails
                return
        while True:
            try:
                records, end = await asyncio.to_thread(
                    _read_spill, path, self._replayed, self.codec
                )
            except (ConfigError, OSError) as error:
                # Kept, not skipped (a key missing or failing, the file unreadable): the
                # replay resumes once that is mended.
                log.critical("the spill file cannot be replayed", extra={"reason": str(error)})
                return
            if not records:
                # Caught up (checked with no await since the read): nothing can be appended
                # between this check and the truncation.
                if path.exists() and path.stat().st_size == end:
                    path.unlink()
                    self._replayed = 0
                    self._spilling = False
                    log.warning("access log sink is back: spill replayed")
                return
            records = [r for r in records if r["seq"] > self._stalled_head]
            try:
                for start in range(0, len(records), self.settings.batch_size):
                    batch = records[start : start + self.settings.batch_size]
                    await self._write_by(batch, time.monotonic() + self.settings.write_timeout_s)
                    self._grown(batch)
            except (SinkUnavailable, TimeoutError):
                return
            except Exception:  # a bug in the sink: the replay tries again later, as for these
                log.exception("access log sink failed while replaying the spill file")
                return
            self.written += len(records)
            self._replayed = end


def _device(path: Path) -> int | None:
    """The file system a path is on (its nearest existing ancestor's, when it is not made
    yet)."""
    for place in (path, *path.parents):
        try:
            return place.stat().st_dev
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def _tree_at(entry: dict[str, Any]) -> checkpoints.WriterTree:
    """A writer's tree resumed from a checkpoint's (or cut's) entry of its chain."""
    size = int(entry["size"])
    return checkpoints.WriterTree(
        merkle.Frontier(size, [bytes.fromhex(node) for node in entry["frontier"]]),
        str(entry.get("hash") or GENESIS),
        str(entry.get("last", "")),
        checkpointed=size,
    )


def _read_spill(path: Path, offset: int, codec: LineCodec) -> tuple[list[dict[str, Any]], int]:
    """Complete records from `offset`; the returned offset ends at the last complete line.
    A line that is not a record (not JSON, or JSON but not a sealed object, or a sealed
    line that does not open) cannot have been spilled by the gateway: it is skipped, with a
    warning naming it. One sealed under a key nobody holds raises LogKeyMissing."""
    if not path.exists():
        return [], offset
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    records = []
    for at, line in enumerate(complete.splitlines()):
        if not line.strip():
            continue
        record = codec.decode(line, f"{path.name} (+{offset} bytes, line {at + 1})")
        if (
            not isinstance(record, Unreadable)
            and isinstance(record.get("seq"), int)
            and "hash" in record
        ):
            records.append(record)
        else:
            log.warning(
                "skipped a line of the spill file that is not a record", extra={"path": str(path)}
            )
    return records, offset + len(complete)


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[None] | None, error: Exception) -> None:
    if future is not None and not future.done():
        future.set_exception(error)


def alert_record(base: Mapping[str, Any], alert: Mapping[str, object]) -> dict[str, Any]:
    """An alert is a record of its own in the chain, tied to the request that raised it."""
    return {
        "kind": "alert",
        "ts": base["ts"],
        "request_id": base.get("request_id"),
        "trace_id": base.get("trace_id"),
        "subject": base.get("subject"),
        "roles": base.get("roles"),
        "customers": [],
        **alert,
    }
