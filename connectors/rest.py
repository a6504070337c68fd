"""REST department systems: a batch endpoint when the system offers one, otherwise a
bounded concurrent fan-out over its single-record endpoint.

A batch GET sends its keys comma-joined (`?ids=a,b`, `batch.style = "comma"`) or as a
repeated parameter (`?id=a&id=b`, `batch.style = "repeat"`). An endpoint that answers in
pages declares how it pages: `paging = { next_field = "next", cursor_param = "cursor" }`
on the entity for its batch endpoint, or inside `single` for the single endpoint; the
connector then asks for the following pages (same parameters plus the cursor) until the
answer has no next cursor, at most `paging.max_pages` pages (default 100).

A write (`[sources.X.writes.<action>]`) is one request: `method` (PATCH, PUT, POST or
DELETE) to `path`, whose `{name}` placeholders are filled from the values (URL-quoted;
all required), with a JSON body of the values `body` names (a value not given is left
out; None is sent as null). `record`, a dotted path into the answer, is where the
system's record after the write is (`WriteResult.record`; None when the answer has none
there). A 2xx is success; 404 WriteRefused (status 404), 409 and 412 WriteConflict, 408
and 429 (try later) SourceUnavailable, any other 4xx WriteRefused with its status; 5xx,
3xx, timeouts and transport failures SourceUnavailable.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from connectors.base import (
    IDENTITY_FIELD_KEYS,
    EntitySpec,
    Fetched,
    Health,
    IdentityFields,
    IdentityPage,
    Record,
    SourceUnavailable,
    WriteResult,
    WriteSpec,
    dig,
    group_records,
    write_spec,
)
from connectors.http import HttpClient, write_failure
from connectors.settings import Settings
from connectors.tls import http_transport


@dataclass(frozen=True, slots=True)
class RestPaging:
    """How an endpoint pages: where its answer holds the next cursor (null, absent or ""
    when done) and which query parameter sends it back."""

    next_field: str
    cursor_param: str
    max_pages: int


@dataclass(frozen=True, slots=True)
class RestBatch:
    path: str
    param: str
    method: str
    max_keys: int
    style: str = "comma"  # GET only: "comma" (?ids=a,b) or "repeat" (?id=a&id=b)


@dataclass(frozen=True, slots=True)
class RestEntity:
    spec: EntitySpec
    items: str
    batch: RestBatch | None
    single_path: str | None
    single_items: str
    paging: RestPaging | None = None  # of the batch endpoint
    single_paging: RestPaging | None = None  # of the single endpoint


@dataclass(frozen=True, slots=True)
class RestScan:
    path: str
    items: str
    next_field: str
    cursor_param: str
    limit_param: str
    fields: IdentityFields


@dataclass(frozen=True, slots=True)
class RestWrite:
    spec: WriteSpec
    method: str
    path: str
    placeholders: tuple[str, ...]
    body: tuple[str, ...]
    record: str | None


PAGING_KEYS = {"next_field", "cursor_param", "max_pages"}
WRITE_METHODS = ("PATCH", "PUT", "POST", "DELETE")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _rest_write(name: str, settings: Settings) -> RestWrite:
    settings.reject_unknown({"method", "path", "body", "record"})
    method = settings.choice("method", WRITE_METHODS, settings.string("method"))
    path = settings.string("path")
    if not path.startswith("/"):
        raise settings.error("path", "must start with /")
    placeholders = tuple(dict.fromkeys(_PLACEHOLDER.findall(path)))
    if "{" in _PLACEHOLDER.sub("", path) or "}" in _PLACEHOLDER.sub("", path):
        raise settings.error("path", "placeholders are {name}: a letter or _, then [A-Za-z0-9_]")
    body = tuple(settings.str_list("body"))
    if len(set(body)) != len(body):
        raise settings.error("body", "names a value twice")
    return RestWrite(
        spec=WriteSpec(name, frozenset(placeholders) | frozenset(body), frozenset(placeholders)),
        method=method,
        path=path,
        placeholders=placeholders,
        body=body,
        record=settings.opt_string("record"),
    )


def _paging(settings: Settings | None) -> RestPaging | None:
    if settings is None:
        return None
    settings.reject_unknown(PAGING_KEYS)
    return RestPaging(
        next_field=settings.string("next_field"),
        cursor_param=settings.string("cursor_param"),
        max_pages=settings.integer("max_pages", 100, minimum=1),
    )


def _next_cursor(payload: Any, path: str) -> str | None:
    found = dig(payload, path)
    return None if found is None or found == "" else str(found)


def _records(payload: Any, path: str, source: str) -> list[Record]:
    found = dig(payload, path)
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        raise SourceUnavailable(source, f"answer has no list of records at '{path}'")
    return found


class RestConnector:
    def __init__(
        self,
        name: str,
        client: HttpClient,
        entities: dict[str, RestEntity],
        scan: RestScan | None,
        *,
        health_path: str = "/healthz",
        fanout: int = 8,
        writes: Mapping[str, RestWrite] | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self._entities = entities
        self._scan = scan
        self._health_path = health_path
        self._fanout = fanout
        self._writes = dict(writes or {})

    @classmethod
    def from_settings(cls, name: str, settings: Settings) -> RestConnector:
        settings.reject_unknown(
            {
                "kind",
                "base_url",
                "timeout_ms",
                "max_connections",
                "headers",
                "health_path",
                "fanout",
                "entities",
                "scan",
                "writes",
                "tls",
                "allow_insecure",
            }
        )
        writes = {name: _rest_write(name, w) for name, w in settings.tables("writes").items()}
        entities: dict[str, RestEntity] = {}
        for entity_name, entity in settings.tables("entities").items():
            entity.reject_unknown({"key_field", "many", "items", "batch", "single", "paging"})
            many = entity.flag("many", False)
            batch = None
            if (batch_settings := entity.opt_table("batch")) is not None:
                batch_settings.reject_unknown({"path", "param", "method", "max_keys", "style"})
                method = batch_settings.choice("method", ("GET", "POST"), "GET")
                style = batch_settings.choice("style", ("comma", "repeat"), "comma")
                if method == "POST" and "style" in batch_settings.data:
                    raise batch_settings.error("style", "only for method = GET")
                batch = RestBatch(
                    path=batch_settings.string("path"),
                    param=batch_settings.string("param"),
                    method=method,
                    max_keys=batch_settings.integer("max_keys", 100, minimum=1),
                    style=style,
                )
            single_path, single_items, single_paging = None, "", None
            if (single := entity.opt_table("single")) is not None:
                single.reject_unknown({"path", "items", "paging"})
                single_path = single.string("path")
                if "{key}" not in single_path:
                    raise single.error("path", "must contain {key}")
                single_items = single.data.get("items", "")
                single_paging = _paging(single.opt_table("paging"))
                if single_paging is not None and not many:
                    raise single.error("paging", "only for an entity with many = true")
            if batch is None and single_path is None:
                raise entity.error("batch", "an entity needs a batch or a single endpoint")
            paging = _paging(entity.opt_table("paging"))
            if paging is not None and batch is None:
                raise entity.error(
                    "paging", "pages the batch endpoint; the single one's goes in single.paging"
                )
            entities[entity_name] = RestEntity(
                spec=EntitySpec(entity_name, entity.string("key_field"), many),
                items=entity.string("items", "items"),
                batch=batch,
                single_path=single_path,
                single_items=str(single_items),
                paging=paging,
                single_paging=single_paging,
            )
        scan = None
        if (scan_settings := settings.opt_table("scan")) is not None:
            scan_settings.reject_unknown(
                {"path", "items", "next_field", "cursor_param", "limit_param"} | IDENTITY_FIELD_KEYS
            )
            scan = RestScan(
                path=scan_settings.string("path"),
                items=scan_settings.string("items", "items"),
                next_field=scan_settings.string("next_field", "next_cursor"),
                cursor_param=scan_settings.string("cursor_param", "after"),
                limit_param=scan_settings.string("limit_param", "limit"),
                fields=scan_settings.identity_fields(),
            )
        timeout_s = settings.integer("timeout_ms", 2000, minimum=1) / 1000
        max_connections = settings.integer("max_connections", 64, minimum=1)
        headers = settings.str_map("headers")
        # Last, so a mistake elsewhere in the table is reported first.
        base_url, ssl_context = http_transport(settings, "base_url")
        client = HttpClient(
            name,
            base_url,
            timeout_s=timeout_s,
            max_connections=max_connections,
            headers=headers,
            ssl_context=ssl_context,
        )
        return cls(
            name,
            client,
            entities,
            scan,
            health_path=settings.string("health_path", "/healthz"),
            fanout=settings.integer("fanout", 8, minimum=1),
            writes=writes,
        )

    def entities(self) -> Mapping[str, EntitySpec]:
        return {name: entity.spec for name, entity in self._entities.items()}

    def actions(self) -> Mapping[str, WriteSpec]:
        return {name: write.spec for name, write in self._writes.items()}

    async def write(self, action: str, values: Mapping[str, Any]) -> WriteResult:
        write = self._writes[write_spec(self.name, self.actions(), action).name]
        write.spec.check(self.name, values)
        path = write.path
        for name in write.placeholders:
            path = path.replace("{" + name + "}", quote(str(values[name]), safe=""))
        body = {name: values[name] for name in write.body if name in values}
        status, raw = await self.client.send(write.method, path, json=body if write.body else None)
        where = f"{write.method} {write.path}"
        if 200 <= status < 300:
            return WriteResult(1, self._written_record(write, raw, where))
        raise write_failure(self.name, status, where, raw)

    def _written_record(self, write: RestWrite, raw: bytes, where: str) -> Record | None:
        if write.record is None:
            return None  # the answer is not read: a 204 or any body will do
        try:
            payload = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError as error:
            # A 2xx that is not JSON may not come from the system at all (a proxy's page):
            # whether the write happened is unknown, so it is not called a success.
            raise SourceUnavailable(
                self.name, f"answered {where} with invalid JSON (the write may have happened)"
            ) from error
        found = dig(payload, write.record)
        return found if isinstance(found, dict) else None

    async def fetch(self, entity: str, keys: Sequence[str]) -> dict[str, Fetched]:
        spec = self._entities[entity]
        if spec.batch is not None:
            if len(keys) <= spec.batch.max_keys:
                # Awaited in this task: a task of its own would queue behind every other
                # system's call of the request, and this one may be the slowest.
                return await self._fetch_batch(spec, keys)
            chunks = [
                keys[i : i + spec.batch.max_keys] for i in range(0, len(keys), spec.batch.max_keys)
            ]
            parts = await asyncio.gather(*(self._fetch_batch(spec, chunk) for chunk in chunks))
            merged: dict[str, Fetched] = {}
            for part in parts:
                merged.update(part)
            return merged
        return await self._fetch_each(spec, keys)

    async def _fetch_batch(self, entity: RestEntity, keys: Sequence[str]) -> dict[str, Fetched]:
        assert entity.batch is not None
        batch = entity.batch
        if batch.method == "POST":
            body = {batch.param: list(keys)}
            records = await self._paged_records(
                "POST", batch.path, entity.items, entity.paging, json=body
            )
        else:
            if batch.style == "repeat":
                params = [(batch.param, key) for key in keys]
            else:
                params = [(batch.param, ",".join(keys))]
            records = await self._paged_records(
                "GET", batch.path, entity.items, entity.paging, params
            )
        assert records is not None  # (not missing_ok)
        return group_records(records, entity.spec, keys)

    async def _paged_records(
        self,
        method: str,
        path: str,
        items: str,
        paging: RestPaging | None,
        params: Sequence[tuple[str, str]] = (),
        *,
        json: Any = None,
        missing_ok: bool = False,
    ) -> list[Record] | None:
        """The records of an answer and, when the endpoint pages, of each following page
        (same parameters plus the cursor); None for a 404 first page when missing_ok."""
        payload = await self.client.request_json(
            method, path, params=list(params) or None, json=json, missing_ok=missing_ok
        )
        if payload is None:
            return None
        records = _records(payload, items, self.name)
        if paging is None:
            return records
        records = list(records)
        sent: set[str] = set()
        pages = 1
        while (cursor := _next_cursor(payload, paging.next_field)) is not None:
            if pages >= paging.max_pages:
                raise SourceUnavailable(
                    self.name, f"{path} has more than {paging.max_pages} pages (paging.max_pages)"
                )
            if cursor in sent:
                raise SourceUnavailable(self.name, f"{path} answered the same page cursor twice")
            sent.add(cursor)
            payload = await self.client.request_json(
                method, path, params=[*params, (paging.cursor_param, cursor)], json=json
            )
            records.extend(_records(payload, items, self.name))
            pages += 1
        return records

    async def _fetch_each(self, entity: RestEntity, keys: Sequence[str]) -> dict[str, Fetched]:
        assert entity.single_path is not None
        path_template = entity.single_path
        gate = asyncio.Semaphore(self._fanout)

        async def one(key: str) -> tuple[str, Fetched | None]:
            async with gate:
                path = path_template.replace("{key}", quote(key, safe=""))
                if entity.single_paging is not None:  # (many = true)
                    paged = await self._paged_records(
                        "GET", path, entity.single_items, entity.single_paging, missing_ok=True
                    )
                    return key, paged
                payload = await self.client.request_json("GET", path, missing_ok=True)
            if payload is None:
                return key, None
            value = dig(payload, entity.single_items)
            if entity.spec.many:
                return key, _records({"v": value}, "v", self.name)
            if isinstance(value, dict):
                return key, value
            raise SourceUnavailable(self.name, "single lookup answered without a record")

        found: dict[str, Fetched] = {}
        for key, value in await asyncio.gather(*(one(key) for key in keys)):
            if value is not None:
                found[key] = value
        return found

    async def scan(self, after: str | None, limit: int) -> IdentityPage:
        if self._scan is None:
            raise SourceUnavailable(self.name, "identity scan is not configured")
        scan = self._scan
        params = {scan.limit_param: str(limit)}
        if after is not None:
            params[scan.cursor_param] = after
        payload = await self.client.request_json("GET", scan.path, params=params)
        rows = [scan.fields.row(item) for item in _records(payload, scan.items, self.name)]
        next_cursor = dig(payload, scan.next_field)
        return IdentityPage(rows, str(next_cursor) if next_cursor else None)

    async def health(self) -> Health:
        return await self.client.health(self._health_path)

    async def close(self) -> None:
        await self.client.close()
