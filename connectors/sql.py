"""SQL department systems through SQLAlchemy async (sqlite+aiosqlite, postgresql+asyncpg).

Each entity is one parameterised query with an expanding `:keys` parameter, so a whole
batch of keys is one round trip. PostgreSQL over the network is verified TLS (`tls` table,
handed to asyncpg as an SSLContext) unless the host is loopback or the source opts out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import TextClause

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
    group_records,
)
from connectors.settings import Settings
from connectors.tls import ClientTLS, insecure_flag, refuse_or_warn, tls_failure

KEY_TYPES = ("str", "int")
_INTEGER = re.compile(r"-?[0-9]{1,18}")


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
                "tls",
                "allow_insecure",
            }
        )
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
