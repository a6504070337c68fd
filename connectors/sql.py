"""SQL department systems through SQLAlchemy async (sqlite+aiosqlite, postgresql+asyncpg).

Each entity is one parameterised query with an expanding `:keys` parameter, so a whole
batch of keys is one round trip. PostgreSQL over the network is verified TLS (`tls` table,
handed to asyncpg as an SSLContext) unless the host is loopback or the source opts out.

A write (`[sources.X.writes.<action>]`) is one `statement` (UPDATE, INSERT, DELETE) with
named parameters, always bound, never formatted into the SQL. Each `:name` is a value of
the write; one not given is bound as NULL (so `COALESCE(:email, email)` keeps the
column's own). `:key` is required and converted by `key_type`; `types` converts others
(str, int, float, bool, date, datetime: ISO strings parsed, datetimes stored as naive
UTC). `:now` is bound by the connector to the time of the write (naive UTC, microseconds),
so a statement can set an updated-at column the same way on SQLite and PostgreSQL.
The record after the write is the statement's first row when it has `RETURNING`
(PostgreSQL, SQLite 3.35+), else the first row of `read_back` (a SELECT over the same
parameters), both in the write's one transaction. A statement that changes no row is
WriteRefused (status 404) unless `on_no_row = "ok"`; when `read_back` still finds the
record, it is a WriteConflict instead (the statement's condition, e.g. a version, no
longer held). A constraint or data error of the database is a WriteRefused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Boolean, Date, DateTime, Float, Integer, String, bindparam, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import TypeEngine

from connectors.base import (
    IDENTITY_FIELD_KEYS,
    ConnectorConfigError,
    EntitySpec,
    Fetched,
    Health,
    IdentityFields,
    IdentityPage,
    Record,
    SourceUnavailable,
    WriteConflict,
    WriteRefused,
    WriteResult,
    WriteSpec,
    WriteValueError,
    group_records,
    write_spec,
)
from connectors.settings import Settings
from connectors.tls import ClientTLS, insecure_flag, refuse_or_warn, tls_failure

KEY_TYPES = ("str", "int")
_INTEGER = re.compile(r"-?[0-9]{1,18}")
# What a write's `types` (and `key_type`) may name, as the SQL type its parameter is bound
# with (so asyncpg is told, and SQLite stores dates and times as SQLAlchemy reads them).
WRITE_TYPES: Mapping[str, TypeEngine[Any]] = {
    "str": String(),
    "int": Integer(),
    "float": Float(),
    "bool": Boolean(),
    "date": Date(),
    "datetime": DateTime(),
}
NOW = "now"  # the parameter the connector binds to the time of the write
WRITE_KEYS = {"statement", "read_back", "key_type", "types", "on_no_row"}


@dataclass(frozen=True, slots=True)
class SqlEntity:
    spec: EntitySpec
    query: TextClause
    key_type: str


@dataclass(frozen=True, slots=True)
class SqlScan:
    query: TextClause
    start: Any
    key_type: str
    fields: IdentityFields


@dataclass(frozen=True, slots=True)
class SqlWrite:
    spec: WriteSpec
    statement: TextClause
    statement_params: frozenset[str]
    read_back: TextClause | None
    read_back_params: frozenset[str]
    types: Mapping[str, str]
    must_change: bool  # on_no_row = "refuse"


def _parameters(clause: TextClause) -> frozenset[str]:
    return frozenset(clause.compile().params)


def _typed(clause: TextClause, types: Mapping[str, str], params: frozenset[str]) -> TextClause:
    binds = [bindparam(name, type_=WRITE_TYPES[types[name]]) for name in params if name in types]
    return clause.bindparams(*binds) if binds else clause


def _sql_write(name: str, settings: Settings) -> SqlWrite:
    settings.reject_unknown(WRITE_KEYS)
    statement = text(settings.string("statement"))
    statement_params = _parameters(statement)
    read_back = None
    read_back_params: frozenset[str] = frozenset()
    if (query := settings.opt_string("read_back")) is not None:
        read_back = text(query)
        read_back_params = _parameters(read_back)
        if not read_back_params <= statement_params | {NOW}:
            extra = sorted(read_back_params - statement_params - {NOW})[0]
            raise settings.error("read_back", f":{extra} is not a parameter of the statement")
    types = settings.str_map("types")
    for value_name, type_name in types.items():
        if type_name not in WRITE_TYPES:
            raise settings.error(f"types.{value_name}", f"must be one of {', '.join(WRITE_TYPES)}")
        if value_name not in statement_params:
            raise settings.error(f"types.{value_name}", "is not a parameter of the statement")
    if NOW in types:
        raise settings.error(f"types.{NOW}", ":now is always the time of the write")
    if "key_type" in settings.data:
        if "key" in types:
            raise settings.error("key_type", "and types.key both set; keep one")
        if "key" not in statement_params:
            raise settings.error("key_type", "the statement has no :key")
        types["key"] = settings.choice("key_type", KEY_TYPES, "str")
    if NOW in statement_params | read_back_params:
        types[NOW] = "datetime"
    params = statement_params - {NOW}
    return SqlWrite(
        spec=WriteSpec(name, params, frozenset({"key"}) & params),
        statement=_typed(statement, types, statement_params),
        statement_params=statement_params,
        read_back=None if read_back is None else _typed(read_back, types, read_back_params),
        read_back_params=read_back_params,
        types=types,
        must_change=settings.choice("on_no_row", ("refuse", "ok"), "refuse") == "refuse",
    )


def _converted(value: Any, type_name: str) -> Any:
    """A write's value as its declared type; ValueError when it cannot be."""
    if value is None or (type_name == "str" and isinstance(value, str)):
        return value
    if isinstance(value, bool) != (type_name == "bool"):
        raise ValueError(type_name)
    if type_name == "str" and isinstance(value, int | float):
        return str(value)
    if type_name == "int":
        if isinstance(value, int):
            return value
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            return int(value)
    elif type_name == "float" and isinstance(value, int | float | str):
        return float(value)
    elif type_name == "bool":
        return value
    elif type_name == "date":
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            return dt.date.fromisoformat(value)
    elif type_name == "datetime":
        moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
        if isinstance(moment, dt.datetime):
            return moment if moment.tzinfo is None else _naive_utc(moment)
    raise ValueError(type_name)


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def _write_failure(source: str, error: DBAPIError) -> Exception:
    """A database error during a write: a conflict of transactions (SQLSTATE class 40), a
    refusal (a constraint, class 23, or bad data, class 22), or the system failing."""
    code = str(getattr(error.orig, "sqlstate", None) or "")
    reason = tls_failure(error) or f"{type(error).__name__}: {error.orig}"
    if code.startswith("40"):
        return WriteConflict(source, reason)
    if code[:2] in ("22", "23") or isinstance(error, IntegrityError | DataError):
        return WriteRefused(source, reason)
    return SourceUnavailable(source, reason)


def json_value(value: Any) -> Any:
    """Records leave a connector JSON-shaped (they may be cached in Redis as JSON):
    numbers as int/float, timestamps as ISO 8601 in UTC."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # the demo CRM stores naive UTC, as many CRMs do
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


_JSON_NATIVE = frozenset({str, int, float, bool, type(None)})


def row_record(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    return {
        column: value if value.__class__ in _JSON_NATIVE else json_value(value)
        for column, value in zip(columns, row, strict=True)
    }


def _cast(key: str, key_type: str) -> Any:
    return int(key) if key_type == "int" else key


def _bindable(keys: Sequence[str], key_type: str) -> list[Any]:
    """The keys as the column's type; a key that cannot be of that type (a letter in an
    integer id) cannot match any row, so it is left out rather than failing the batch."""
    if key_type == "str":
        return list(keys)
    return [int(key) for key in keys if _INTEGER.fullmatch(key)]


def _first(value: str | tuple[str, ...] | None) -> str | None:
    return value[0] if isinstance(value, tuple) else value


def connect_args(settings: Settings, dsn: str) -> dict[str, Any]:
    """The driver's TLS arguments for this source, after the transport rules: a `tls`
    table becomes asyncpg's `ssl` context (a server that does not offer TLS is then an
    error, never a plain connection); a DSN without verified TLS to a remote host is
    refused unless `allow_insecure = true`."""
    tls = ClientTLS.parse(settings, modes=True)
    insecure_flag(settings)
    try:
        url = make_url(dsn)
    except ArgumentError as error:
        raise settings.error("dsn", "is not a database URL") from error
    if url.get_backend_name() == "sqlite":
        if tls is not None:
            raise settings.error("tls", "a SQLite file has no network transport to protect")
        return {}
    dsn_ssl = _first(url.query.get("ssl")) or _first(url.query.get("sslmode"))
    if tls is not None:
        if url.drivername != "postgresql+asyncpg":
            raise settings.error("tls", "is supported for postgresql+asyncpg DSNs")
        if dsn_ssl is not None:
            raise settings.error("tls", "is set, and the dsn has ssl/sslmode too; keep one")
        return {"ssl": tls.context()}
    if dsn_ssl in ("verify-full", "verify-ca"):
        return {}  # the driver verifies against its own defaults (~/.postgresql/root.crt)
    # Anything else (no ssl, disable, allow, prefer, require) may be plain or unverified.
    host = url.host or _first(url.query.get("host"))
    refuse_or_warn(settings, "dsn", host, "a PostgreSQL connection without verified TLS")
    return {}


class SqlConnector:
    def __init__(
        self,
        name: str,
        dsn: str,
        entities: dict[str, SqlEntity],
        scan: SqlScan | None,
        *,
        timeout_s: float = 2.0,
        pool_size: int = 5,
        simulated_latency_s: float = 0.0,
        connect_args: Mapping[str, Any] | None = None,
        writes: Mapping[str, SqlWrite] | None = None,
    ) -> None:
        self.name = name
        self.dsn = dsn
        self._entities = entities
        self._scan = scan
        self._timeout_s = timeout_s
        self._pool_size = pool_size
        # Demo and benchmark knob only: a database in a file has no network latency.
        self._latency_s = simulated_latency_s
        self._connect_args = dict(connect_args or {})
        self._engine: AsyncEngine | None = None
        self._writes = dict(writes or {})
        # A write is a transaction on a connection of the same pool (the reads' autocommit
        # is restored when it goes back): SQLite's only level, PostgreSQL's default one,
        # under which a conditional UPDATE re-checks its WHERE on a row changed meanwhile.
        self._write_isolation = "SERIALIZABLE" if dsn.startswith("sqlite") else "READ COMMITTED"

    @classmethod
    def from_settings(cls, name: str, settings: Settings) -> SqlConnector:
        settings.reject_unknown(
            {
                "kind",
                "dsn",
                "timeout_ms",
                "pool_size",
                "simulated_latency_ms",
                "entities",
                "scan",
                "writes",
                "tls",
                "allow_insecure",
            }
        )
        writes = {name: _sql_write(name, w) for name, w in settings.tables("writes").items()}
        entities: dict[str, SqlEntity] = {}
        for entity_name, entity in settings.tables("entities").items():
            entity.reject_unknown({"key_field", "many", "query", "key_type"})
            query = entity.string("query")
            if ":keys" not in query:
                raise ConnectorConfigError(f"{entity.path}.query: must use the :keys parameter")
            entities[entity_name] = SqlEntity(
                spec=EntitySpec(
                    entity_name, entity.string("key_field"), entity.flag("many", False)
                ),
                query=text(query).bindparams(bindparam("keys", expanding=True)),
                key_type=entity.choice("key_type", KEY_TYPES, "str"),
            )
        scan = None
        if (scan_settings := settings.opt_table("scan")) is not None:
            scan_settings.reject_unknown({"query", "start", "key_type"} | IDENTITY_FIELD_KEYS)
            key_type = scan_settings.choice("key_type", KEY_TYPES, "str")
            scan = SqlScan(
                query=text(scan_settings.string("query")),
                start=_cast(
                    str(scan_settings.data.get("start", "0" if key_type == "int" else "")), key_type
                ),
                key_type=key_type,
                fields=scan_settings.identity_fields(),
            )
        timeout_s = settings.integer("timeout_ms", 2000, minimum=1) / 1000
        pool_size = settings.integer("pool_size", 5, minimum=1)
        latency_s = settings.integer("simulated_latency_ms", 0) / 1000
        dsn = settings.string("dsn")
        return cls(
            name,
            dsn,
            entities,
            scan,
            timeout_s=timeout_s,
            pool_size=pool_size,
            simulated_latency_s=latency_s,
            connect_args=connect_args(settings, dsn),  # last: other mistakes first
            writes=writes,
        )

    def entities(self) -> Mapping[str, EntitySpec]:
        return {name: entity.spec for name, entity in self._entities.items()}

    def _get_engine(self) -> AsyncEngine:
        """Every statement here is one read, so the connection runs in autocommit: no
        transaction begun for it and none rolled back when it goes back to the pool. A
        rollback per fetch was a round trip to PostgreSQL, and with SQLite a hop to
        aiosqlite's thread and back, on every page."""
        if self._engine is None:
            options: dict[str, Any] = {
                "isolation_level": "AUTOCOMMIT",
                "skip_autocommit_rollback": True,
            }
            if not self.dsn.startswith("sqlite"):
                options |= {"pool_size": self._pool_size, "pool_pre_ping": True}
            if self._connect_args:
                options["connect_args"] = self._connect_args
            self._engine = create_async_engine(self.dsn, **options)
        return self._engine

    async def _rows(self, query: TextClause, params: dict[str, Any]) -> list[Record]:
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._latency_s:
                    await asyncio.sleep(self._latency_s)
                async with self._get_engine().connect() as connection:
                    result = await connection.execute(query, params)
                    # Plain tuples and the column names once: a mapping view per row
                    # cost more than the query itself on a page of 100 customers.
                    columns = list(result.keys())
                    return [row_record(columns, row) for row in result.all()]
        except TimeoutError as error:
            raise SourceUnavailable(self.name, f"timed out after {self._timeout_s:.1f}s") from error
        except (SQLAlchemyError, OSError, ValueError) as error:
            reason = tls_failure(error) or f"{type(error).__name__}: {error}"
            raise SourceUnavailable(self.name, reason) from error

    async def fetch(self, entity: str, keys: Sequence[str]) -> dict[str, Fetched]:
        spec = self._entities[entity]
        bound = _bindable(keys, spec.key_type)
        if not bound:
            return group_records([], spec.spec, keys)
        rows = await self._rows(spec.query, {"keys": bound})
        return group_records(rows, spec.spec, keys)

    def actions(self) -> Mapping[str, WriteSpec]:
        return {name: write.spec for name, write in self._writes.items()}

    def _bound(self, write: SqlWrite, values: Mapping[str, Any]) -> dict[str, Any]:
        bound: dict[str, Any] = {}
        for name in write.spec.params:
            type_name = write.types.get(name)
            value = values.get(name)
            try:
                bound[name] = value if type_name is None else _converted(value, type_name)
            except ValueError:
                raise WriteValueError(
                    f"sources.{self.name}.writes.{write.spec.name}: '{name}' is not "
                    f"{'an' if type_name == 'int' else 'a'} {type_name}"
                ) from None
        bound[NOW] = _naive_utc(dt.datetime.now(dt.UTC))
        return bound

    async def write(self, action: str, values: Mapping[str, Any]) -> WriteResult:
        write = self._writes[write_spec(self.name, self.actions(), action).name]
        write.spec.check(self.name, values)
        bound = self._bound(write, values)
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._latency_s:
                    await asyncio.sleep(self._latency_s)
                async with self._get_engine().connect() as connection:
                    await connection.execution_options(isolation_level=self._write_isolation)
                    async with connection.begin():
                        return await self._write_in(connection, write, bound)
        except TimeoutError as error:
            raise SourceUnavailable(
                self.name,
                f"write {action} timed out after {self._timeout_s:.1f}s "
                "(the write may or may not have happened)",
            ) from error
        except DBAPIError as error:
            raise _write_failure(self.name, error) from error
        except (SQLAlchemyError, OSError, ValueError) as error:
            reason = tls_failure(error) or f"{type(error).__name__}: {error}"
            raise SourceUnavailable(self.name, reason) from error

    async def _write_in(
        self, connection: AsyncConnection, write: SqlWrite, bound: Mapping[str, Any]
    ) -> WriteResult:
        """The statement, then (when it returned no row) the read back, in one transaction:
        an error or a refusal here rolls it back."""
        result = await connection.execute(
            write.statement, {name: bound[name] for name in write.statement_params}
        )
        record: Record | None = None
        if result.returns_rows:
            columns = list(result.keys())
            rows = result.all()
            affected = len(rows)
            record = row_record(columns, rows[0]) if rows else None
        else:
            affected = max(result.rowcount, 0)
        if record is None and write.read_back is not None:
            back = await connection.execute(
                write.read_back, {name: bound[name] for name in write.read_back_params}
            )
            row = back.first()
            record = None if row is None else row_record(list(back.keys()), row)
        if affected == 0 and write.must_change:
            if record is not None:
                raise WriteConflict(
                    self.name,
                    f"write {write.spec.name} changed no row, and the record exists "
                    "(the statement's condition no longer holds)",
                )
            raise WriteRefused(self.name, f"write {write.spec.name} changed no row", 404)
        return WriteResult(affected, record)

    async def scan(self, after: str | None, limit: int) -> IdentityPage:
        if self._scan is None:
            raise ConnectorConfigError(f"sources.{self.name}.scan: not configured")
        scan = self._scan
        start = scan.start if after is None else _cast(after, scan.key_type)
        rows = await self._rows(scan.query, {"after": start, "limit": limit})
        page = [scan.fields.row(row) for row in rows]
        last = page[-1].system_id if page else after
        return IdentityPage(page, last if len(page) == limit else None, resume_cursor=last)

    async def health(self) -> Health:
        try:
            await self._rows(text("SELECT 1 AS ok"), {})
        except SourceUnavailable as error:
            return Health(False, error.reason)
        return Health(True)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
