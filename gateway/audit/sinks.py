"""Where access records are kept: a JSON Lines file (default; size-based rotation) or a
PostgreSQL table (many instances, indexed by customer, subject and time).

A sink's `write` returns only when the records are durable (fsync, or a committed
transaction), and raises SinkUnavailable otherwise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    MetaData,
    String,
    Table,
    Text,
    and_,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.audit.chain import GENESIS, ChainHead

log = logging.getLogger("c360.audit")

Record = Mapping[str, Any]


class SinkUnavailable(Exception):
    """The sink could not make records durable."""


@dataclass(frozen=True, slots=True)
class AccessQuery:
    customer: str | None = None
    subject: str | None = None
    field: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    kind: str | None = None  # "access" | "alert"
    first: int = 50
    after: tuple[str, str, int] | None = None  # (ts, chain, seq) of the last record seen


def _ts(record: Record) -> dt.datetime:
    return dt.datetime.fromisoformat(str(record["ts"]))


def matches(record: Record, query: AccessQuery) -> bool:
    if query.kind is not None and record.get("kind", "access") != query.kind:
        return False
    if query.subject is not None and record.get("subject") != query.subject:
        return False
    if query.customer is not None and query.customer not in (record.get("customers") or []):
        return False
    if query.field is not None:
        fields = record.get("fields") or {}
        if not any(query.field in seen for seen in fields.values()):
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

    def scan(self) -> AsyncIterator[tuple[str, Record | None]]: ...

    async def search(self, query: AccessQuery) -> list[Record]: ...

    async def close(self) -> None: ...


_ROTATED = re.compile(r"\.(\d{5})\.jsonl$")


class JsonlSink:
    """`access.jsonl`, rotated to `access.00001.jsonl`, `access.00002.jsonl`, … (oldest
    first) when it passes `max_bytes`. The chain runs across files."""

    name = "jsonl"

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.torn_bytes = 0

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
        """A crash can leave a torn last line; cut it off so the chain continues cleanly."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        data = b"".join(orjson.dumps(record) + b"\n" for record in records)
        try:
            await asyncio.to_thread(self._append, data)
        except OSError as error:
            raise SinkUnavailable(f"{self.path}: {error.strerror}") from error

    def _append(self, data: bytes) -> None:
        if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
            self._rotate()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        stem = self.path.name.removesuffix(".jsonl")
        numbers = [int(m.group(1)) for p in self.files() if (m := _ROTATED.search(p.name))]
        target = self.path.with_name(f"{stem}.{max(numbers, default=0) + 1:05d}.jsonl")
        self.path.rename(target)

    def lines(self) -> Iterator[tuple[str, Record | None]]:
        """(file:line, record) in order; None for a line that is not a record. The last
        line of the newest file, when it has no newline, is a write a crash cut short:
        it is skipped and named in `torn_at` (the gateway cuts it off when it starts)."""
        self.torn_at: str | None = None
        files = self.files()
        for path in files:
            with path.open("rb") as handle:
                for number, line in enumerate(handle, 1):
                    where = f"{path.name}:{number}"
                    if not line.endswith(b"\n") and path == files[-1]:
                        self.torn_at = where
                        return
                    if not line.strip():
                        continue
                    try:
                        yield where, orjson.loads(line)
                    except orjson.JSONDecodeError:
                        yield where, None

    async def scan(self) -> AsyncIterator[tuple[str, Record | None]]:
        for item in await asyncio.to_thread(lambda: list(self.lines())):
            yield item

    async def head(self, chain: str) -> ChainHead:
        def last() -> ChainHead:
            found = ChainHead(chain)
            for _, record in self.lines():
                if record is not None and record.get("chain") == chain:
                    found = ChainHead(chain, int(record["seq"]), str(record["hash"]))
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
        return None


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


class PostgresSink:
    """One table; inserts batched in one transaction; replays are idempotent."""

    name = "postgresql"

    def __init__(self, dsn: str, table: Table = access_table) -> None:
        self.dsn = dsn
        self.table = table
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_async_engine(self.dsn, pool_pre_ping=True, pool_size=4)
        return self._engine

    async def open(self) -> None:
        try:
            async with self.engine.begin() as connection:
                await connection.run_sync(metadata.create_all)
        except (SQLAlchemyError, OSError) as error:
            raise SinkUnavailable(f"postgresql: {type(error).__name__}") from error

    async def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        statement = insert(self.table).on_conflict_do_nothing(index_elements=["chain", "seq"])
        try:
            async with self.engine.begin() as connection:
                await connection.execute(statement, [_row(record) for record in records])
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
        return ChainHead(chain, int(row[0]), str(row[1])) if row else ChainHead(chain, 0, GENESIS)

    async def scan(self) -> AsyncIterator[tuple[str, Record | None]]:
        query = select(self.table.c.chain, self.table.c.seq, self.table.c.record).order_by(
            self.table.c.chain, self.table.c.seq
        )
        async with self.engine.connect() as connection:
            result = await connection.stream(query.execution_options(yield_per=2000))
            async for chain, seq, record in result:
                yield f"{self.table.name}({chain},{seq})", record

    async def search(self, query: AccessQuery) -> list[Record]:
        table = self.table
        conditions = []
        if query.kind is not None:
            conditions.append(table.c.kind == query.kind)
        if query.subject is not None:
            conditions.append(table.c.subject == query.subject)
        if query.customer is not None:
            conditions.append(table.c.customers.contains([query.customer]))
        if query.field is not None:
            conditions.append(table.c.fields.contains([query.field]))
        if query.since is not None:
            conditions.append(table.c.ts >= query.since)
        if query.until is not None:
            conditions.append(table.c.ts < query.until)
        if query.after is not None:
            ts, chain, seq = query.after
            moment = dt.datetime.fromisoformat(ts)
            conditions.append(
                or_(
                    table.c.ts < moment,
                    and_(table.c.ts == moment, table.c.chain < chain),
                    and_(table.c.ts == moment, table.c.chain == chain, table.c.seq < seq),
                )
            )
        statement = (
            select(table.c.record)
            .where(and_(*conditions))
            .order_by(table.c.ts.desc(), table.c.chain.desc(), table.c.seq.desc())
            .limit(query.first)
        )
        async with self.engine.connect() as connection:
            rows = await connection.execute(statement)
            return [row[0] for row in rows]

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
