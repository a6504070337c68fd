"""GraphQL department systems: a query with a `$keys` list variable, or Apollo Federation
`_entities` with one representation per key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.base import (
    IDENTITY_FIELD_KEYS,
    EntitySpec,
    Fetched,
    Health,
    IdentityFields,
    IdentityPage,
    Record,
    SourceUnavailable,
    dig,
    group_records,
)
from connectors.http import HttpClient
from connectors.settings import Settings
from connectors.tls import http_transport


@dataclass(frozen=True, slots=True)
class GraphQLEntity:
    spec: EntitySpec
    query: str
    items: str
    federation_type: str | None
    max_keys: int


@dataclass(frozen=True, slots=True)
class GraphQLScan:
    query: str
    items: str
    next_field: str
    fields: IdentityFields


def entities_query(type_name: str, selection: str) -> str:
    return (
        "query c360Entities($representations: [_Any!]!) { "
        "_entities(representations: $representations) "
        f"{{ ... on {type_name} {{ {selection} }} }} }}"
    )


class GraphQLConnector:
    def __init__(
        self,
        name: str,
        client: HttpClient,
        entities: dict[str, GraphQLEntity],
        scan: GraphQLScan | None,
        *,
        health_query: str = "{ __typename }",
    ) -> None:
        self.name = name
        self.client = client
        self._entities = entities
        self._scan = scan
        self._health_query = health_query

    @classmethod
    def from_settings(cls, name: str, settings: Settings) -> GraphQLConnector:
        settings.reject_unknown(
            {
                "kind",
                "url",
                "timeout_ms",
                "max_connections",
                "headers",
                "entities",
                "scan",
                "tls",
                "allow_insecure",
            }
        )
        entities: dict[str, GraphQLEntity] = {}
        for entity_name, entity in settings.tables("entities").items():
            entity.reject_unknown(
                {"key_field", "many", "query", "items", "federation_type", "selection", "max_keys"}
            )
            spec = entity.entity_spec(entity_name)
            federation_type = entity.opt_string("federation_type")
            if federation_type is not None:
                if spec.key_field not in entity.string("selection").split():
                    raise entity.error("selection", f"must select the key field {spec.key_field}")
                query = entities_query(federation_type, entity.string("selection"))
                items = "data._entities"
            else:
                query = entity.string("query")
                if "$keys" not in query:
                    raise entity.error("query", "must declare and use a $keys variable")
                items = "data." + entity.string("items")
            entities[entity_name] = GraphQLEntity(
                spec, query, items, federation_type, entity.integer("max_keys", 500, minimum=1)
            )
        scan = None
        if (scan_settings := settings.opt_table("scan")) is not None:
            scan_settings.reject_unknown({"query", "items", "next_field"} | IDENTITY_FIELD_KEYS)
            scan = GraphQLScan(
                query=scan_settings.string("query"),
                items="data." + scan_settings.string("items"),
                next_field="data." + scan_settings.string("next_field"),
                fields=scan_settings.identity_fields(),
            )
        timeout_s = settings.integer("timeout_ms", 2000, minimum=1) / 1000
        max_connections = settings.integer("max_connections", 64, minimum=1)
        headers = settings.str_map("headers")
        # Last, so a mistake elsewhere in the table is reported first.
        url, ssl_context = http_transport(settings, "url")
        client = HttpClient(
            name,
            url,
            timeout_s=timeout_s,
            max_connections=max_connections,
            headers=headers,
            ssl_context=ssl_context,
        )
        return cls(name, client, entities, scan)

    def entities(self) -> Mapping[str, EntitySpec]:
        return {name: entity.spec for name, entity in self._entities.items()}

    async def _execute(self, query: str, variables: dict[str, Any], items: str) -> Any:
        payload = await self.client.request_json(
            "POST", "", json={"query": query, "variables": variables}
        )
        found = dig(payload, items)
        if found is None:
            errors = dig(payload, "errors")
            detail = errors[0].get("message") if isinstance(errors, list) and errors else None
            raise SourceUnavailable(self.name, f"no data at '{items}' ({detail or 'no errors'})")
        return found

    async def fetch(self, entity: str, keys: Sequence[str]) -> dict[str, Fetched]:
        spec = self._entities[entity]
        found: dict[str, Fetched] = {}
        for start in range(0, len(keys), spec.max_keys):
            chunk = keys[start : start + spec.max_keys]
            if spec.federation_type is not None:
                representations = [
                    {"__typename": spec.federation_type, spec.spec.key_field: key} for key in chunk
                ]
                variables: dict[str, Any] = {"representations": representations}
            else:
                variables = {"keys": list(chunk)}
            result = await self._execute(spec.query, variables, spec.items)
            if not isinstance(result, list):
                raise SourceUnavailable(self.name, f"'{spec.items}' is not a list")
            records: list[Record] = [item for item in result if isinstance(item, dict)]
            found.update(group_records(records, spec.spec, chunk))
        return found

    async def scan(self, after: str | None, limit: int) -> IdentityPage:
        if self._scan is None:
            raise SourceUnavailable(self.name, "identity scan is not configured")
        scan = self._scan
        payload = await self.client.request_json(
            "POST", "", json={"query": scan.query, "variables": {"after": after, "limit": limit}}
        )
        items = dig(payload, scan.items)
        if not isinstance(items, list):
            raise SourceUnavailable(self.name, f"no list at '{scan.items}'")
        rows = [scan.fields.row(item) for item in items if isinstance(item, dict)]
        next_cursor = dig(payload, scan.next_field)
        return IdentityPage(rows, str(next_cursor) if next_cursor else None)

    async def health(self) -> Health:
        try:
            await self._execute(self._health_query, {}, "data")
        except SourceUnavailable as error:
            return Health(False, error.reason)
        return Health(True)

    async def close(self) -> None:
        await self.client.close()
