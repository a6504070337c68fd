"""Where access records are kept: a JSON Lines file (default; size-based rotation) or a
PostgreSQL table (many instances, indexed by customer, subject and time), with read models
beside it that keep the security console's questions fast on millions of records.

A sink's `write` returns only when the records are durable (fsync, or a committed
transaction), and raises SinkUnavailable otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Protocol

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    and_,
    literal,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.audit import checkpoint as checkpoints
from gateway.audit import reach
from gateway.audit.chain import GENESIS, TORN_TAIL, ChainHead, Cut, TornTail
from gateway.audit.encryption import PLAIN, LineCodec, Unreadable, place
from gateway.audit.files import replace_file

log = logging.getLogger("c360.audit")

Record = Mapping[str, Any]
# What a scan yields per line: the record, why the line holds none (a sealed line that
# does not open, JSON that is not an object), or None (a row whose record is not one).
Item = tuple[str, Record | Unreadable | TornTail | None]


class SinkUnavailable(Exception):
    """The sink could not make records durable."""


@dataclass(frozen=True, slots=True)
class AccessQuery:
    customer: str | None = None
    subject: str | None = None
    field: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    kind: str | None = None  # "access" | "alert" | "ack"
    first: int = 50
    after: tuple[str, str, int] | None = None  # (ts, chain, seq) of the last record seen
    decision: str | None = None  # "allow" | "mask" | "deny"


def _ts(record: Record) -> dt.datetime:
    return dt.datetime.fromisoformat(str(record["ts"]))


def matches(record: Record, query: AccessQuery) -> bool:
    if query.kind is not None and record.get("kind", "access") != query.kind:
        return False
    if query.subject is not None and record.get("subject") != query.subject:
        return False
    if query.customer is not None and query.customer not in (record.get("customers") or []):
        return False
    if query.field is not None or query.decision is not None:
        fields: Mapping[str, Mapping[str, str]] = record.get("fields") or {}
        # With a customer, "who read this customer's nationalId", not another one's.
        scope = [fields.get(query.customer) or {}] if query.customer else fields.values()
        if not any(
            (query.field is None or name == query.field)
            and (query.decision is None or decision == query.decision)
            for seen in scope
            for name, decision in seen.items()
        ):
            return False
    moment = _ts(record)
    if query.since is not None and moment < query.since:
        return False
    return not (query.until is not None and moment >= query.until)


def sort_key(record: Record) -> tuple[str, str, int]:
    return (str(record["ts"]), str(record["chain"]), int(record["seq"]))


class AccessSink(Protocol):
    name: str

    async def open(self) -> None: ...

    async def write(self, records: Sequence[Record]) -> None: ...

    async def head(self, chain: str) -> ChainHead: ...

    def scan(self) -> AsyncIterator[Item]: ...

    async def search(self, query: AccessQuery) -> list[Record]: ...

    async def close(self) -> None: ...

    def label(self) -> str: ...

    async def sync(self) -> None: ...

    async def cut(self) -> dict[str, Any] | None: ...

    async def write_cut(self, checkpoint: Mapping[str, Any]) -> None: ...

    async def chain_records(self, chain: str, from_seq: int) -> list[Record]: ...

    async def prune(self, cuts: Mapping[str, int], before: dt.datetime | None) -> int: ...


_ROTATED = re.compile(r"\.(\d{5})\.jsonl$")


class JsonlSink:
    """`access.jsonl`, rotated to `access.00001.jsonl`, `access.00002.jsonl`, … (oldest
    first) when it passes `max_bytes`. The chain runs across files.

    Every batch is written to the file before `write` returns, so a crashing process
    loses none of it. With `sync_interval_s` = 0 (and always in fail_closed mode) each
    batch is also fsynced before `write` returns; otherwise fsync runs at most that often
    (group commit), so that a crash of the machine itself loses at most the last
    interval: an fsync per request puts a disk flush in every request's latency (bench
    (a) overhead at c=1; tests/test_audit.py).

    A small batch that needs no fsync is appended from the event loop: a write(2) of a few
    kB into the page cache takes microseconds, where handing it to a thread costs CPU on
    every request (the thread's wake-up and its GIL hand-offs, which land in the next
    request's critical path; bench (a) overhead and CPU per request). An fsync, a rotation
    and a large batch go to a thread.

    Several processes (`serve --workers N`, each its own chain) append to one file: an
    append holds a shared lock on `.<stem>.lock` for its write(2), a rotation (checked
    again under the lock, numbered under it) and the start-up repair an exclusive one, and
    so does `c360 audit prune` while it moves the head file aside. A pruned log starts at
    its cut (`<stem>.cut.json`, the signed checkpoint `prune` wrote).

    Lines are made and read by `codec` (gateway/audit/encryption.py): plain JSON, or with
    `[audit] encrypt` each sealed in an envelope; records are the same either way."""

    INLINE_BYTES = 64 * 1024

    name = "jsonl"
    idempotent = False

    def __init__(
        self,
        path: Path,
        max_bytes: int = 64 * 1024 * 1024,
        sync_interval_s: float = 0.0,
        codec: LineCodec = PLAIN,
    ) -> None:
        self.path = path
        self.codec = codec
        self.max_bytes = max_bytes
        self.sync_interval_s = sync_interval_s
        self.torn_bytes = 0
        self._synced_at = 0.0
        self._sync_later: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name.removesuffix('.jsonl')}.lock")

    @property
    def cut_path(self) -> Path:
        return self.path.with_name(f"{self.path.name.removesuffix('.jsonl')}.cut.json")

    def label(self) -> str:
        return str(self.path)

    @contextlib.contextmanager
    def locked(self, mode: int) -> Iterator[None]:
        """Hold the log's lock (fcntl.LOCK_SH to append, LOCK_EX to move files)."""
        if self._lock_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, mode)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _try_shared(self) -> bool:
        if self._lock_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def files(self) -> list[Path]:
        """Every file of the log, oldest first."""
        stem = self.path.name.removesuffix(".jsonl")
        rotated = sorted(
            (p for p in self.path.parent.glob(f"{stem}.*.jsonl") if _ROTATED.search(p.name)),
            key=lambda p: p.name,
        )
        return [*rotated, self.path] if self.path.exists() else rotated

    async def open(self) -> None:
        await asyncio.to_thread(self._repair)

    def _repair(self) -> None:
        """A crash can leave a torn last line; cut it off so the chain continues cleanly
        (under the exclusive lock: another worker's append in progress is not torn)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.locked(fcntl.LOCK_EX):
            self._repair_locked()

    def _repair_locked(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            tail = handle.read()
            if tail.endswith(b"\n"):
                return
            keep = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
            handle.truncate(keep)
            self.torn_bytes = size - keep
            log.warning("cut a torn record off the access log", extra={"bytes": self.torn_bytes})

    async def write(self, records: Sequence[Record]) -> None:
        encode = self.codec.encode
        try:
            data = b"".join(encode(record) + b"\n" for record in records)
        except (OSError, ValueError) as error:  # ConfigError too: a key that does not load
            raise SinkUnavailable(f"{self.path}: the lines could not be sealed: {error}") from error
        now = time.monotonic()
        sync = now - self._synced_at >= self.sync_interval_s
        try:
            # Decided once, here: the writer task is the only one appending, so nothing can
            # grow the file between this stat and the thread's write.
            rotate = self._rotation_due(len(data))
            if sync or rotate or len(data) > self.INLINE_BYTES or not self._try_shared():
                await asyncio.to_thread(self._append, data, sync, rotate)
            else:
                try:
                    self._write(data, False)
                finally:
                    fcntl.flock(self._lock_fd or -1, fcntl.LOCK_UN)
        except OSError as error:
            raise SinkUnavailable(f"{self.path}: {error.strerror}") from error
        if sync:
            self._synced_at = now
        elif self._sync_later is None:
            self._sync_later = asyncio.create_task(self._sync_after())

    async def _sync_after(self) -> None:
        """The deferred fsync of the batches written since the last one."""
        try:
            due = self._synced_at + self.sync_interval_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self._synced_at = time.monotonic()
            await asyncio.to_thread(self._fsync)
        except OSError as error:
            log.warning("fsync of the access log failed", extra={"error": error.strerror})
        finally:
            self._sync_later = None

    def _rotation_due(self, size: int) -> bool:
        try:
            return self.path.stat().st_size + size > self.max_bytes
        except FileNotFoundError:
            return False

    def _append(self, data: bytes, sync: bool, rotate: bool) -> None:
        if not rotate:
            with self.locked(fcntl.LOCK_SH):
                self._write(data, sync)
            return
        with self.locked(fcntl.LOCK_EX):
            # Another worker may have rotated since the size was read.
            with contextlib.suppress(FileNotFoundError):
                rotate = self.path.stat().st_size + len(data) > self.max_bytes
            if rotate and self.path.exists():
                self._fsync()  # what the deferred fsync has not reached yet, before it moves
                self._rotate()
            self._write(data, sync)

    async def sync(self) -> None:
        """fsync what has been written (before a checkpoint covers it)."""
        await asyncio.to_thread(self._fsync)

    def _write(self, data: bytes, sync: bool) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _fsync(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        stem = self.path.name.removesuffix(".jsonl")
        numbers = [int(m.group(1)) for p in self.files() if (m := _ROTATED.search(p.name))]
        target = self.path.with_name(f"{stem}.{max(numbers, default=0) + 1:05d}.jsonl")
        self.path.rename(target)

    def lines(self) -> Iterator[tuple[str, Record | None]]:
        """(file:line, record) in order; None for a line that is not a record (`entries`
        says why), which everything but `verify` skips."""
        for where, item in self.entries():
            if item is TORN_TAIL:
                return
            yield where, None if isinstance(item, Unreadable) else item  # type: ignore[misc]

    def entries(self) -> Iterator[tuple[str, Record | Unreadable | TornTail]]:
        """(file:line, record) in order, or why the line holds none: not JSON, JSON but
        not an object (`123`, `[]`), a sealed line that does not open (`codec`); `verify`
        names each. A line under a key nobody holds raises LogKeyMissing. The last line
        of the newest file, when it has no newline, is a write a crash cut short: it comes
        last as TORN_TAIL (the gateway cuts it off when it starts)."""
        decode = self.codec.decode
        files = self.files()
        for path in files:
            with path.open("rb") as handle:
                for number, line in enumerate(handle, 1):
                    where = f"{path.name}:{number}"
                    if not line.endswith(b"\n") and path == files[-1]:
                        yield where, TORN_TAIL
                        return
                    if not line.strip():
                        continue
                    yield where, decode(line, where)

    def _cut(self) -> dict[str, Any] | None:
        if not self.cut_path.exists():
            return None
        return checkpoints.load(self.cut_path)

    async def cut(self) -> dict[str, Any] | None:
        """The signed checkpoint of the last prune (where each pruned chain starts)."""
        try:
            return await asyncio.to_thread(self._cut)
        except checkpoints.CheckpointError as error:
            raise SinkUnavailable(str(error)) from error

    def cut_items(self) -> list[tuple[str, Record | None]]:
        """The cut as `Cut`s for `verify`, first; an unreadable cut file as a bad line."""
        try:
            cut = self._cut()
        except checkpoints.CheckpointError:
            return [(self.cut_path.name, None)]
        if cut is None:
            return []
        return [
            (self.cut_path.name, checkpoints.cut_of(name, cut, self.cut_path.name))
            for name in cut["chains"]
        ]

    async def write_cut(self, checkpoint: Mapping[str, Any]) -> None:
        data = orjson.dumps(checkpoint, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        await asyncio.to_thread(replace_file, self.cut_path, data + b"\n")

    async def scan(self) -> AsyncIterator[Item]:
        items: list[Item] = await asyncio.to_thread(lambda: [*self.cut_items(), *self.entries()])
        for item in items:
            yield item

    async def chain_records(self, chain: str, from_seq: int) -> list[Record]:
        """The chain's records from `from_seq` on, in order."""

        def read() -> list[Record]:
            return [
                r
                for _, r in self.lines()
                if r is not None
                and r.get("chain") == chain
                and isinstance(r.get("seq"), int)
                and r["seq"] >= from_seq
            ]

        return await asyncio.to_thread(read)

    async def prune(self, cuts: Mapping[str, int], before: dt.datetime | None) -> int:
        """Remove each chain's records up to its cut (its cut file is written already):
        the head file is moved aside under the exclusive lock when it holds any (the
        writers' next append starts a new one), then every rotated file that holds some
        is rewritten without them (a temporary file renamed over it) or removed."""
        return await asyncio.to_thread(self._prune, cuts)

    def _prune(self, cuts: Mapping[str, int]) -> int:
        def drop(line: bytes) -> bool:
            # By the place a line claims, unopened: prune runs after `verify` opened every
            # line, and needs no key (one retired meanwhile does not stop it part-way).
            claimed = place(line)
            return claimed is not None and claimed[1] <= cuts.get(claimed[0], 0)

        with self.locked(fcntl.LOCK_EX):
            if self.path.exists() and self.path.stat().st_size:
                self._fsync()
                self._rotate()
        removed = 0
        for path in self.files():
            if path == self.path:
                continue
            with path.open("rb") as handle:
                lines = handle.readlines()
            kept = [line for line in lines if not line.strip() or not drop(line)]
            if len(kept) == len(lines):
                continue
            removed += len(lines) - len(kept)
            if kept:
                replace_file(path, b"".join(kept))
            else:
                path.unlink()
        return removed

    async def head(self, chain: str) -> ChainHead:
        def last() -> ChainHead:
            """The chain's last sealed record; a line that is not one (`verify` names it)
            does not stop the gateway: the chain continues after it. A chain pruned to
            nothing continues from its cut."""
            found = ChainHead(chain)
            for _, item in self.cut_items():
                if isinstance(item, Cut) and item["chain"] == chain:
                    found = ChainHead(chain, int(item["seq"]), str(item["hash"]))
            for _, record in self.lines():
                if record is None or record.get("chain") != chain:
                    continue
                seq, sealed = record.get("seq"), record.get("hash")
                if (
                    isinstance(seq, int)
                    and not isinstance(seq, bool)
                    and isinstance(sealed, str)
                    and seq > found.seq
                ):
                    found = ChainHead(chain, seq, sealed)
            return found

        return await asyncio.to_thread(last)

    async def search(self, query: AccessQuery) -> list[Record]:
        def run() -> list[Record]:
            found = [r for _, r in self.lines() if r is not None and matches(r, query)]
            found.sort(key=sort_key, reverse=True)
            if query.after is not None:
                found = [r for r in found if sort_key(r) < query.after]
            return found[: query.first]

        return await asyncio.to_thread(run)

    async def close(self) -> None:
        pending, self._sync_later = self._sync_later, None
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
            await asyncio.to_thread(self._fsync)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


metadata = MetaData()
access_table = Table(
    "c360_access_log",
    metadata,
    Column("chain", String(128), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("ts", TIMESTAMP(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("subject", Text),
    Column("request_id", String(64)),
    Column("outcome", String(16)),
    Column("customers", ARRAY(Text), nullable=False),
    Column("fields", ARRAY(Text), nullable=False),
    Column("record", JSONB, nullable=False),
    Index("ix_c360_access_ts", "ts"),
    Index("ix_c360_access_subject_ts", "subject", "ts"),
    Index("ix_c360_access_customers", "customers", postgresql_using="gin"),
)
# A rights request's record (gateway/console/rights.py reads them): a subject report, an
# erasure or a restriction. Literal, so that the partial index below serves the query
# that repeats it (a bound parameter would not prove the index's condition).
RIGHTS_REQUEST = text(
    '(record @> \'{"audit_query": {"view": "subject-report"}}\''
    ' OR record @> \'{"writes": [{"mutation": "subjectErase"}]}\''
    ' OR record @> \'{"writes": [{"mutation": "subjectRestrict"}]}\')'
)
# Added after the table first shipped, so `open()` creates them on an existing table too.
# Alerts and acknowledgements are a sliver of the log: a partial index finds them without
# walking the access records.
LATER_INDEXES = (
    Index(
        "ix_c360_access_events",
        access_table.c.ts,
        access_table.c.chain,
        access_table.c.seq,
        postgresql_where=access_table.c.kind != "access",
    ),
    Index(
        "ix_c360_access_acks",
        access_table.c.record["alert_id"].astext,
        postgresql_where=access_table.c.kind == "ack",
    ),
    # A subject's requests per day, counted from the index alone.
    Index(
        "ix_c360_access_subject_kind_ts",
        access_table.c.subject,
        access_table.c.kind,
        access_table.c.ts,
    ),
    # The rights requests, a sliver of the log, for the console's list of them.
    Index(
        "ix_c360_access_rights",
        access_table.c.ts,
        access_table.c.chain,
        access_table.c.seq,
        postgresql_where=RIGHTS_REQUEST,
    ),
)

# Read models of the log for the security console, written in the same transaction as
# the records they derive from (so they never disagree with the log) and never read by
# `verify`: the chain stays the only evidence. One row per (record, customer): a
# customer's timeline and a subject's footprint are index range scans, and a filter on one
# customer's field decisions is exact (the log table's `fields` is the union over all the
# customers of a request).
EFFECT_BITS = {"allow": 1, "mask": 2, "deny": 4}
customer_table = Table(
    "c360_access_customer",
    metadata,
    Column("chain", String(128), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("customer", Text, primary_key=True),
    Column("ts", TIMESTAMP(timezone=True), nullable=False),
    Column("subject", Text),
    Column("decisions", ARRAY(Text), nullable=False),  # "field:decision", sorted
    Column("effects", SmallInteger, nullable=False),  # EFFECT_BITS of the decisions
    Index("ix_c360_access_customer_ts", "customer", "ts", "chain", "seq"),
    Index("ix_c360_access_customer_time", "ts", "subject", "customer"),
    # Covering: a subject's footprint is an index-only scan of its own rows.
    Index(
        "ix_c360_access_customer_by_subject",
        "subject",
        "ts",
        postgresql_include=["customer", "effects", "chain", "seq"],
    ),
    Index(
        "ix_c360_access_customer_denied",
        "subject",
        "ts",
        postgresql_include=["chain", "seq"],
        postgresql_where=text("effects & 4 <> 0"),
    ),
)
# Read models earlier versions wrote, replaced by `reach` (distinct customers per subject
# over a range); `rebuild_read_models` drops them.
RETIRED_MODELS = ("c360_access_subject_customer", "c360_access_subject_day")
# Hourly counts (UTC hours) for the charts: a day of them is a few thousand rows, whatever
# the traffic. Only access records count; '' stands for "none" in a key column.
hourly_table = Table(
    "c360_access_hourly",
    metadata,
    Column("hour", TIMESTAMP(timezone=True), primary_key=True),
    Column("subject", Text, primary_key=True),
    Column("roles", Text, primary_key=True),  # sorted, comma-separated
    Column("outcome", String(16), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Index("ix_c360_access_hourly_subject", "subject", "hour"),
)
decision_hourly_table = Table(
    "c360_access_decision_hourly",
    metadata,
    Column("hour", TIMESTAMP(timezone=True), primary_key=True),
    Column("subject", Text, primary_key=True),
    Column("field", Text, primary_key=True),
    Column("decision", String(8), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Index("ix_c360_access_decision_hourly_subject", "subject", "hour"),
)
# Where each pruned chain starts (`c360 audit prune`): the seq and hash of its last pruned
# record, and the signed cut checkpoint they come from (the only part `verify` trusts).
cut_table = Table(
    "c360_access_cut",
    metadata,
    Column("chain", String(128), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("checkpoint", JSONB, nullable=False),
)


def _row(record: Record) -> dict[str, Any]:
    fields = sorted({name for seen in (record.get("fields") or {}).values() for name in seen})
    return {
        "chain": record["chain"],
        "seq": record["seq"],
        "ts": _ts(record),
        "kind": record.get("kind", "access"),
        "subject": record.get("subject"),
        "request_id": record.get("request_id"),
        "outcome": record.get("outcome"),
        "customers": list(record.get("customers") or []),
        "fields": fields,
        "record": dict(record),
    }


def customer_rows(record: Record) -> list[dict[str, Any]]:
    """The record's rows of `c360_access_customer`: one per customer it touched."""
    decided: Mapping[str, Mapping[str, str]] = record.get("fields") or {}
    moment = _ts(record)
    rows = []
    for customer in record.get("customers") or []:
        seen = decided.get(customer) or {}
        effects = 0
        for decision in seen.values():
            effects |= EFFECT_BITS.get(decision, 0)
        rows.append(
            {
                "chain": record["chain"],
                "seq": record["seq"],
                "customer": customer,
                "ts": moment,
                "subject": record.get("subject"),
                "decisions": sorted(f"{name}:{decision}" for name, decision in seen.items()),
                "effects": effects,
            }
        )
    return rows


@dataclass
class Rollup:
    """Hourly counts of a batch of records, added to the tables in one upsert each."""

    requests: Counter[tuple[dt.datetime, str, str, str]] = dataclass_field(default_factory=Counter)
    decisions: Counter[tuple[dt.datetime, str, str, str]] = dataclass_field(default_factory=Counter)

    def add(self, record: Record) -> None:
        if record.get("kind", "access") != "access":
            return
        hour = _ts(record).astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
        subject = str(record.get("subject") or "")
        roles = ",".join(sorted(record.get("roles") or []))
        self.requests[hour, subject, roles, str(record.get("outcome") or "")] += 1
        for seen in (record.get("fields") or {}).values():
            for name, decision in seen.items():
                self.decisions[hour, subject, name, decision] += 1

    def request_rows(self) -> list[dict[str, Any]]:
        # Sorted: concurrent writers then lock the rows they share in the same order.
        return [
            {"hour": h, "subject": s, "roles": r, "outcome": o, "requests": n}
            for (h, s, r, o), n in sorted(self.requests.items())
        ]

    def decision_rows(self) -> list[dict[str, Any]]:
        return [
            {"hour": h, "subject": s, "field": f, "decision": d, "n": n}
            for (h, s, f, d), n in sorted(self.decisions.items())
        ]


async def write_read_models(connection: AsyncConnection, records: Sequence[Record]) -> None:
    """Add records (new to the log: a replayed record must not count twice) to the read
    models, inside the caller's transaction."""
    rows = [row for record in records for row in customer_rows(record)]
    if rows:
        # COPY: a page of customers makes a row each, several times the records' own rows.
        # The records are new to the log, so their rows cannot be in the table yet.
        raw = await connection.get_raw_connection()
        columns = [column.name for column in customer_table.columns]
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            customer_table.name,
            records=[tuple(row[name] for name in columns) for row in rows],
            columns=columns,
        )
    await reach.write_reach(connection, records)
    rollup = Rollup()
    for record in records:
        rollup.add(record)
    for table, count, values in (
        (hourly_table, "requests", rollup.request_rows()),
        (decision_hourly_table, "n", rollup.decision_rows()),
    ):
        if not values:
            continue
        statement = insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=[column.name for column in table.primary_key.columns],
            set_={count: table.c[count] + statement.excluded[count]},
        )
        await connection.execute(statement, values)


class PostgresSink:
    """One table and its read models; inserts batched in one transaction; replays are
    idempotent."""

    name = "postgresql"
    idempotent = True  # a record already in the table is skipped: a replay may repeat one

    def __init__(self, dsn: str, table: Table = access_table) -> None:
        self.dsn = dsn
        self.table = table
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_async_engine(
                self.dsn,
                pool_pre_ping=True,
                pool_size=4,
                # The log's queries are index range scans; compiling them (JIT) costs more
                # than it saves.
                connect_args={"server_settings": {"jit": "off"}},
            )
        return self._engine

    async def open(self) -> None:
        try:
            async with self.engine.begin() as connection:
                await connection.run_sync(metadata.create_all)
                await connection.run_sync(reach.metadata.create_all)
                # create_all skips the indexes of a table that exists: a log made by an
                # earlier version gets the ones added since.
                for index in (*LATER_INDEXES, *customer_table.indexes):
                    await connection.run_sync(index.create, checkfirst=True)
        except (SQLAlchemyError, OSError) as error:
            raise SinkUnavailable(f"postgresql: {type(error).__name__}") from error

    async def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        statement = (
            insert(self.table)
            .on_conflict_do_nothing(index_elements=["chain", "seq"])
            .returning(self.table.c.chain, self.table.c.seq)
        )
        try:
            async with self.engine.begin() as connection:
                result = await connection.execute(statement, [_row(record) for record in records])
                inserted = {(str(chain), int(seq)) for chain, seq in result}
                fresh = [r for r in records if (str(r["chain"]), int(r["seq"])) in inserted]
                await write_read_models(connection, fresh)
        except (SQLAlchemyError, OSError) as error:
            raise SinkUnavailable(f"postgresql: {type(error).__name__}") from error

    async def head(self, chain: str) -> ChainHead:
        query = (
            select(self.table.c.seq, self.table.c.record["hash"].astext)
            .where(self.table.c.chain == chain)
            .order_by(self.table.c.seq.desc())
            .limit(1)
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
            if row is None and await self._has_cuts(connection):
                row = (
                    await connection.execute(
                        select(cut_table.c.seq, cut_table.c.hash).where(cut_table.c.chain == chain)
                    )
                ).first()
        return ChainHead(chain, int(row[0]), str(row[1])) if row else ChainHead(chain, 0, GENESIS)

    def label(self) -> str:
        url = self._engine.url if self._engine is not None else None
        where = f"{url.host}:{url.port}/{url.database}" if url is not None else "postgresql"
        return f"postgresql://{where}#{self.table.name}"

    async def sync(self) -> None:
        """A write is committed before it returns: nothing to do."""

    @staticmethod
    async def _has_cuts(connection: AsyncConnection) -> bool:
        found = await connection.scalar(text(f"SELECT to_regclass('{cut_table.name}')"))
        return found is not None

    async def _cut_rows(self, connection: AsyncConnection) -> list[Any]:
        if not await self._has_cuts(connection):
            return []
        query = select(cut_table.c.chain, cut_table.c.checkpoint).order_by(cut_table.c.chain)
        return list(await connection.execute(query))

    async def cut(self) -> dict[str, Any] | None:
        try:
            async with self.engine.connect() as connection:
                rows = await self._cut_rows(connection)
        except (SQLAlchemyError, OSError) as error:
            raise SinkUnavailable(f"postgresql: {type(error).__name__}") from error
        if not rows:
            return None
        newest = max(rows, key=lambda row: str((row.checkpoint or {}).get("timestamp")))
        try:
            return checkpoints.validate(newest.checkpoint, cut_table.name)
        except checkpoints.CheckpointError as error:
            raise SinkUnavailable(str(error)) from error

    async def write_cut(self, checkpoint: Mapping[str, Any]) -> None:
        rows = [
            {
                "chain": name,
                "seq": int(entry["size"]),
                "hash": str(entry["hash"]),
                "checkpoint": dict(checkpoint),
            }
            for name, entry in checkpoint["chains"].items()
        ]
        statement = insert(cut_table)
        statement = statement.on_conflict_do_update(
            index_elements=["chain"],
            set_={c: statement.excluded[c] for c in ("seq", "hash", "checkpoint")},
        )
        try:
            async with self.engine.begin() as connection:
                await connection.run_sync(cut_table.create, checkfirst=True)
                await connection.execute(statement, rows)
        except (SQLAlchemyError, OSError) as error:
            raise SinkUnavailable(f"postgresql: {type(error).__name__}") from error

    async def prune(self, cuts: Mapping[str, int], before: dt.datetime | None) -> int:
        """Delete each chain's records up to its cut and their rows of the read models, in
        one transaction; with `before` (a prune of every chain), also the hourly counts and
        reach bitmaps of the hours before it."""
        table, removed = self.table, 0
        try:
            async with self.engine.begin() as connection:
                for chain, seq in sorted(cuts.items()):
                    for model in (customer_table, table):
                        result = await connection.execute(
                            model.delete().where(model.c.chain == chain, model.c.seq <= seq)
                        )
                        if model is table:
                            removed += result.rowcount or 0
                if before is not None:
                    for model in (hourly_table, decision_hourly_table):
                        await connection.execute(
                            model.delete().where(model.c.hour + text("interval '1 hour'") <= before)
                        )
                    reach_rows = reach.reach_table
                    await connection.execute(
                        reach_rows.delete().where(
                            reach_rows.c.start + reach_rows.c.hours * text("interval '1 hour'")
                            <= before
                        )
                    )
        except (SQLAlchemyError, OSError) as error:
            raise SinkUnavailable(f"postgresql: {type(error).__name__}") from error
        return removed

    async def chain_records(self, chain: str, from_seq: int) -> list[Record]:
        query = (
            select(self.table.c.record)
            .where(self.table.c.chain == chain, self.table.c.seq >= from_seq)
            .order_by(self.table.c.seq)
        )
        async with self.engine.connect() as connection:
            return [row[0] for row in await connection.execute(query)]

    async def scan(self) -> AsyncIterator[Item]:
        query = select(self.table.c.chain, self.table.c.seq, self.table.c.record).order_by(
            self.table.c.chain, self.table.c.seq
        )
        async with self.engine.connect() as connection:
            for name, cut in await self._cut_rows(connection):
                where = f"{cut_table.name}({name})"
                try:
                    checkpoint = checkpoints.validate(cut, where)
                    yield where, checkpoints.cut_of(name, checkpoint, where)
                except (checkpoints.CheckpointError, KeyError):
                    yield where, None
            result = await connection.stream(query.execution_options(yield_per=2000))
            async for chain, seq, record in result:
                yield f"{self.table.name}({chain},{seq})", record

    async def search(self, query: AccessQuery) -> list[Record]:
        table = self.table
        if query.customer is not None or query.field is not None or query.decision is not None:
            return await self._search_by_customer_rows(query)
        conditions = []
        if query.kind is not None:
            conditions.append(table.c.kind == query.kind)
        if query.subject is not None:
            conditions.append(table.c.subject == query.subject)
        if query.since is not None:
            conditions.append(table.c.ts >= query.since)
        if query.until is not None:
            conditions.append(table.c.ts < query.until)
        if query.after is not None:
            conditions.append(_before(table, query.after))
        statement = (
            select(table.c.record)
            .where(and_(*conditions))
            .order_by(table.c.ts.desc(), table.c.chain.desc(), table.c.seq.desc())
            .limit(query.first)
        )
        async with self.engine.connect() as connection:
            rows = await connection.execute(statement)
            return [row[0] for row in rows]

    async def _search_by_customer_rows(self, query: AccessQuery) -> list[Record]:
        """Through `c360_access_customer`: a customer's records are one index range, and
        field and decision filters apply to that customer's own decisions."""
        rows = customer_table
        conditions = []
        if query.customer is not None:
            conditions.append(rows.c.customer == query.customer)
        if query.subject is not None:
            conditions.append(rows.c.subject == query.subject)
        if query.field is not None and query.decision is not None:
            conditions.append(rows.c.decisions.contains([f"{query.field}:{query.decision}"]))
        elif query.field is not None:
            conditions.append(rows.c.decisions.overlap([f"{query.field}:{d}" for d in EFFECT_BITS]))
        elif query.decision is not None:
            bit = EFFECT_BITS.get(query.decision, 0)
            conditions.append(rows.c.effects.op("&")(bit) != 0)
        if query.since is not None:
            conditions.append(rows.c.ts >= query.since)
        if query.until is not None:
            conditions.append(rows.c.ts < query.until)
        if query.after is not None:
            conditions.append(_before(rows, query.after))
        order = (rows.c.ts.desc(), rows.c.chain.desc(), rows.c.seq.desc())
        page = select(rows.c.chain, rows.c.seq, rows.c.ts).where(and_(*conditions))
        if query.customer is None:
            page = page.group_by(rows.c.ts, rows.c.chain, rows.c.seq)  # one per record
        page_sq = page.order_by(*order).limit(query.first).subquery()
        table = self.table
        statement = (
            select(table.c.record)
            .join_from(
                page_sq,
                table,
                and_(table.c.chain == page_sq.c.chain, table.c.seq == page_sq.c.seq),
            )
            .order_by(page_sq.c.ts.desc(), page_sq.c.chain.desc(), page_sq.c.seq.desc())
        )
        if query.kind is not None:
            # Only access records touch customers; another kind finds nothing here.
            statement = statement.where(table.c.kind == query.kind)
        async with self.engine.connect() as connection:
            result = await connection.execute(statement)
            return [row[0] for row in result]

    async def rebuild_read_models(self, batch: int = 5000) -> int:
        """Empty the console's read models and derive them again from every record: for a
        log written before they existed (or before one was added). One transaction: the
        console answers from the old ones until it commits. Then drops the models earlier
        versions kept and vacuums the new ones (a bulk load has no visibility map, and the
        console's index-only scans need one). Returns the records read."""
        table, read = self.table, 0
        models = (
            customer_table,
            hourly_table,
            decision_hourly_table,
            reach.reach_table,
            reach.customer_number_table,
        )
        try:
            async with self.engine.begin() as connection:
                names = ", ".join(t.name for t in models)
                await connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
                after: tuple[str, int] | None = None
                while True:
                    statement = select(table.c.chain, table.c.seq, table.c.record)
                    if after is not None:
                        statement = statement.where(tuple_(table.c.chain, table.c.seq) > after)
                    statement = statement.order_by(table.c.chain, table.c.seq).limit(batch)
                    rows = list(await connection.execute(statement))
                    if not rows:
                        break
                    await write_read_models(connection, [row.record for row in rows])
                    read += len(rows)
                    after = (rows[-1].chain, rows[-1].seq)
            async with self.engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                for name in RETIRED_MODELS:
                    await autocommit.execute(text(f"DROP TABLE IF EXISTS {name}"))
                for model in models:
                    await autocommit.execute(text(f"VACUUM ANALYZE {model.name}"))
            return read
        except (SQLAlchemyError, OSError) as error:
            raise SinkUnavailable(f"postgresql: {type(error).__name__}") from error

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


def _before(table: Table, after: tuple[str, str, int]) -> Any:
    """Rows after the cursor in newest-first order (ts, chain, seq descending)."""
    ts, chain, seq = after
    moment = dt.datetime.fromisoformat(ts)
    return tuple_(table.c.ts, table.c.chain, table.c.seq) < tuple_(
        literal(moment, TIMESTAMP(timezone=True)), literal(chain), literal(seq)
    )
