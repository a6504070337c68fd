"""The crosswalk's own small store (SQLite by default, PostgreSQL when configured).

It keeps only CUID <-> (system, system id) and keyed hashes of the normalised match
keys, never an email or phone in clear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData()

links = Table(
    "c360_identity_links",
    metadata,
    Column("system", String(64), primary_key=True),
    Column("system_id", String(128), primary_key=True),
    Column("cuid", String(32), nullable=False, index=True),
    Column("is_primary", Boolean, nullable=False),
    Column("email_hash", String(64), index=True),
    Column("phone_hash", String(64), index=True),
)

cursors = Table(
    "c360_identity_cursors",
    metadata,
    Column("system", String(64), primary_key=True),
    # A system's own scan cursor (opaque for an API, often longer than an id).
    Column("after", String(1024)),
)

issues = Table(
    "c360_identity_issues",
    metadata,
    Column("system", String(64), primary_key=True),
    Column("system_id", String(128), primary_key=True),
    Column("kind", String(16), primary_key=True),  # unlinkable | conflict | duplicate
    Column("cuid", String(32)),
    Column("detail", String(256), nullable=False),
)

# One row per data-quality run (`c360 quality report`, `Gateway.quality()`): its summary
# figures (shares and counts per system and field, never a value) for the trend.
quality_runs = Table(
    "c360_quality_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ran_at", String(40), nullable=False),  # ISO 8601 UTC
    Column("figures", Text, nullable=False),  # JSON
)


# Records of people who were erased (a rights request): never linked again by a sync, so a
# system that kept a record (a manual follow-up still open) does not bring the person back.
tombstones = Table(
    "c360_identity_tombstones",
    metadata,
    Column("system", String(64), primary_key=True),
    Column("system_id", String(128), primary_key=True),
    Column("erased_at", String(32), nullable=False),
)


# People who restricted the processing of their data (a rights request), by CUID.
restrictions = Table(
    "c360_identity_restrictions",
    metadata,
    Column("cuid", String(32), primary_key=True),
    Column("since", String(32), nullable=False),
)


# One row: a number that every change to who is linked, how, or restricted increments,
# in the change's own transaction. A gateway polls it to follow what other processes
# change (an erasure or a restriction made through another instance or worker, a sync).
changes = Table(
    "c360_identity_changes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
)


# What a backup holds and a restore replaces (the change number is the store's own).
KEPT = (links, cursors, issues, quality_runs, tombstones, restrictions)


@dataclass(frozen=True, slots=True)
class Link:
    system: str
    system_id: str
    cuid: str
    is_primary: bool
    email_hash: str | None
    phone_hash: str | None


@dataclass(frozen=True, slots=True)
class Issue:
    system: str
    system_id: str
    kind: str
    cuid: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class QualityRun:
    ran_at: str
    figures: Mapping[str, Any]


class StoreNotEmpty(Exception):
    """A restore into a crosswalk that already holds something, without `replace`."""


class CrosswalkStore:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_async_engine(self.dsn)
        return self._engine

    async def create(self) -> None:
        """The tables, if missing. `serve --workers N` starts N of these at once: the one
        that loses the race to create a table finds it there on a second look."""
        for attempt in (1, 2):
            try:
                async with self.engine.begin() as connection:
                    await connection.run_sync(metadata.create_all)
                return
            except (OperationalError, ProgrammingError, IntegrityError):
                if attempt == 2:
                    raise

    async def epoch(self) -> int:
        """The crosswalk's change number (0 before any change)."""
        async with self.engine.connect() as connection:
            found = await connection.scalar(select(changes.c.epoch).where(changes.c.id == 1))
        return int(found or 0)

    async def _changed(self, connection: Any) -> None:
        """Count a change, inside its transaction (the row made on the first one)."""
        bumped = await connection.execute(
            update(changes).where(changes.c.id == 1).values(epoch=changes.c.epoch + 1)
        )
        if bumped.rowcount == 0:
            await connection.execute(self._insert_new(changes), [{"id": 1, "epoch": 0}])
            await connection.execute(
                update(changes).where(changes.c.id == 1).values(epoch=changes.c.epoch + 1)
            )

    async def links(self) -> list[Link]:
        async with self.engine.connect() as connection:
            result = await connection.execute(select(links).order_by(links.c.cuid))
            return [Link(**row) for row in result.mappings()]

    async def cursors(self) -> dict[str, str | None]:
        async with self.engine.connect() as connection:
            result = await connection.execute(select(cursors))
            return {row.system: row.after for row in result}

    async def issues(self) -> list[Issue]:
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(issues).order_by(issues.c.kind, issues.c.system, issues.c.system_id)
            )
            return [Issue(**row) for row in result.mappings()]

    async def save_page(
        self,
        system: str,
        new_links: list[Link],
        new_issues: list[Issue],
        after: str | None,
    ) -> None:
        """One page of a sync, atomically: its links, its issues and the resume cursor.
        Workers starting at once sync at once: a link another one stored first stays (the
        CUIDs are derived from the keys, and the index is built from what is stored)."""
        async with self.engine.begin() as connection:
            if new_links:
                await connection.execute(
                    self._insert_new(links),
                    [
                        {
                            "system": link.system,
                            "system_id": link.system_id,
                            "cuid": link.cuid,
                            "is_primary": link.is_primary,
                            "email_hash": link.email_hash,
                            "phone_hash": link.phone_hash,
                        }
                        for link in new_links
                    ],
                )
            for issue in new_issues:
                await connection.execute(
                    delete(issues).where(
                        issues.c.system == issue.system,
                        issues.c.system_id == issue.system_id,
                        issues.c.kind == issue.kind,
                    )
                )
            if new_issues:
                await connection.execute(
                    issues.insert(),
                    [
                        {
                            "system": issue.system,
                            "system_id": issue.system_id,
                            "kind": issue.kind,
                            "cuid": issue.cuid,
                            "detail": issue.detail,
                        }
                        for issue in new_issues
                    ],
                )
            await connection.execute(delete(cursors).where(cursors.c.system == system))
            await connection.execute(
                self._insert_new(cursors), [{"system": system, "after": after}]
            )
            if new_links:
                await self._changed(connection)

    async def unlink(self, cuid: str, erased_at: str) -> list[tuple[str, str]]:
        """Remove every link of a customer (an erasure), leaving tombstones; returns the
        (system, system id) pairs that were linked."""
        async with self.engine.begin() as connection:
            rows = (
                await connection.execute(
                    select(links.c.system, links.c.system_id).where(links.c.cuid == cuid)
                )
            ).all()
            pairs = [(str(row[0]), str(row[1])) for row in rows]
            if pairs:
                await connection.execute(delete(links).where(links.c.cuid == cuid))
                await connection.execute(
                    self._insert_new(tombstones),
                    [{"system": s, "system_id": i, "erased_at": erased_at} for s, i in pairs],
                )
            await connection.execute(delete(issues).where(issues.c.cuid == cuid))
            await self._changed(connection)
            return pairs

    async def restrict(self, cuid: str, restricted: bool, since: str) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(delete(restrictions).where(restrictions.c.cuid == cuid))
            if restricted:
                await connection.execute(restrictions.insert(), [{"cuid": cuid, "since": since}])
            await self._changed(connection)

    async def restricted(self) -> frozenset[str]:
        async with self.engine.connect() as connection:
            rows = (await connection.execute(select(restrictions.c.cuid))).all()
        return frozenset(str(row[0]) for row in rows)

    async def restrictions(self) -> list[tuple[str, str]]:
        """(CUID, since) of every person who restricted processing, by CUID."""
        async with self.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(restrictions.c.cuid, restrictions.c.since).order_by(restrictions.c.cuid)
                )
            ).all()
        return [(str(row[0]), str(row[1])) for row in rows]

    async def tombstoned(self) -> set[tuple[str, str]]:
        async with self.engine.connect() as connection:
            rows = (
                await connection.execute(select(tombstones.c.system, tombstones.c.system_id))
            ).all()
        return {(str(row[0]), str(row[1])) for row in rows}

    async def rekey(
        self, system: str, system_id: str, *, email_hash: str | None, phone_hash: str | None
    ) -> tuple[Link, Link] | None:
        """A record's match keys after a write changed them (only the ones given change;
        the record stays linked to its customer). Reports a conflict, as the sync would,
        when a new key already belongs to another customer. The link before and after;
        None: no such link."""
        async with self.engine.begin() as connection:
            row = (
                await connection.execute(
                    select(links).where(links.c.system == system, links.c.system_id == system_id)
                )
            ).first()
            if row is None:
                return None
            link = Link(**row._mapping)
            values = {}
            if email_hash is not None:
                values["email_hash"] = email_hash
            if phone_hash is not None:
                values["phone_hash"] = phone_hash
            if values:
                await connection.execute(
                    links.update()
                    .where(links.c.system == system, links.c.system_id == system_id)
                    .values(**values)
                )
            for column, value in (
                (links.c.email_hash, email_hash),
                (links.c.phone_hash, phone_hash),
            ):
                if value is None:
                    continue
                other = (
                    await connection.execute(
                        select(links.c.cuid)
                        .where(column == value, links.c.cuid != link.cuid)
                        .limit(1)
                    )
                ).first()
                if other is not None:
                    await connection.execute(
                        delete(issues).where(
                            issues.c.system == system,
                            issues.c.system_id == system_id,
                            issues.c.kind == "conflict",
                        )
                    )
                    await connection.execute(
                        issues.insert(),
                        [
                            {
                                "system": system,
                                "system_id": system_id,
                                "kind": "conflict",
                                "cuid": link.cuid,
                                "detail": f"a write gave it the {column.name.removesuffix('_hash')}"
                                " of another customer",
                            }
                        ],
                    )
            if values:
                await self._changed(connection)
            return link, Link(
                link.system,
                link.system_id,
                link.cuid,
                link.is_primary,
                values.get("email_hash", link.email_hash),
                values.get("phone_hash", link.phone_hash),
            )

    async def save_quality_run(self, run: QualityRun) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                quality_runs.insert(),
                [{"ran_at": run.ran_at, "figures": orjson.dumps(run.figures).decode()}],
            )

    async def quality_runs(self, last: int | None = None) -> list[QualityRun]:
        """Stored quality runs, oldest first (only the `last` ones when given)."""
        query = select(quality_runs.c.ran_at, quality_runs.c.figures).order_by(
            quality_runs.c.id.desc()
        )
        if last is not None:
            query = query.limit(last)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [QualityRun(row.ran_at, orjson.loads(row.figures)) for row in reversed(rows)]

    async def is_empty(self) -> bool:
        async with self.engine.connect() as connection:
            return await self._empty(connection)

    @staticmethod
    async def _empty(connection: Any) -> bool:
        for table in KEPT:
            count = (await connection.execute(select(func.count()).select_from(table))).scalar()
            if count:
                return False
        return True

    async def restore(
        self,
        new_links: Sequence[Link],
        new_cursors: Mapping[str, str | None],
        new_issues: Sequence[Issue],
        runs: Sequence[QualityRun],
        erased: Sequence[tuple[str, str, str]] = (),
        restricted: Sequence[tuple[str, str]] = (),
        *,
        replace: bool = False,
    ) -> None:
        """A whole crosswalk, in one transaction: into an empty store, or (`replace`) in
        place of everything it holds. Raises StoreNotEmpty (nothing changed) otherwise.
        `erased`: the tombstones, (system, system id, erased at); `restricted`: the people
        who restricted processing, (CUID, since)."""
        async with self.engine.begin() as connection:
            if not replace and not await self._empty(connection):
                raise StoreNotEmpty("the crosswalk store is not empty")
            for table in KEPT:
                await connection.execute(delete(table))
            rows: list[tuple[Table, list[dict[str, Any]]]] = [
                (
                    links,
                    [
                        {
                            "system": link.system,
                            "system_id": link.system_id,
                            "cuid": link.cuid,
                            "is_primary": link.is_primary,
                            "email_hash": link.email_hash,
                            "phone_hash": link.phone_hash,
                        }
                        for link in new_links
                    ],
                ),
                (cursors, [{"system": s, "after": after} for s, after in new_cursors.items()]),
                (
                    issues,
                    [
                        {
                            "system": issue.system,
                            "system_id": issue.system_id,
                            "kind": issue.kind,
                            "cuid": issue.cuid,
                            "detail": issue.detail,
                        }
                        for issue in new_issues
                    ],
                ),
                (
                    quality_runs,
                    [
                        {"ran_at": run.ran_at, "figures": orjson.dumps(run.figures).decode()}
                        for run in runs
                    ],
                ),
                (
                    tombstones,
                    [{"system": s, "system_id": i, "erased_at": at} for s, i, at in erased],
                ),
                (restrictions, [{"cuid": cuid, "since": since} for cuid, since in restricted]),
            ]
            for table, values in rows:
                for start in range(0, len(values), 5000):
                    await connection.execute(table.insert(), values[start : start + 5000])
            await self._changed(connection)

    def _insert_new(self, table: Table) -> Any:
        """INSERT that skips rows whose key is stored already (SQLite or PostgreSQL)."""
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
