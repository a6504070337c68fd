"""GraphQL department systems: a query with a `$keys` list variable, or Apollo Federation
`_entities` with one representation per key.

A write (`[sources.X.writes.<action>]`) is one `mutation` whose variables are the values
by name (a variable declared non-null without a default is required; one not given is
not sent), and `result`, the dotted path in `data` to the record the mutation returns.
A result that is there is success, whatever else the answer says; without it, the
answer's `errors` (or an answer of null) are a WriteRefused. HTTP statuses outside 2xx
map as for REST writes (connectors/http.py's write_failure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import GraphQLError, NonNullTypeNode, OperationDefinitionNode, OperationType, parse

from connectors.base import (
    IDENTITY_FIELD_KEYS,
    EntitySpec,
    Fetched,
    Health,
    IdentityFields,
    IdentityPage,
    Record,
    SourceUnavailable,
    WriteRefused,
    WriteResult,
    WriteSpec,
    dig,
    group_records,
    write_spec,
)
from connectors.http import HttpClient, answer_detail, write_failure
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


@dataclass(frozen=True, slots=True)
class GraphQLWrite:
    spec: WriteSpec
    mutation: str
    result: str  # "data." + the configured path


def _graphql_write(name: str, settings: Settings) -> GraphQLWrite:
    settings.reject_unknown({"mutation", "result"})
    mutation = settings.string("mutation")
    try:
        document = parse(mutation)
    except GraphQLError as error:
        raise settings.error("mutation", f"does not parse: {error.message}") from error
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if len(operations) != 1 or len(document.definitions) != 1:
        raise settings.error("mutation", "must be exactly one operation (and no fragments)")
    operation = operations[0]
    if operation.operation is not OperationType.MUTATION:
        raise settings.error("mutation", "must be a mutation")
    params: set[str] = set()
    required: set[str] = set()
    for variable in operation.variable_definitions or ():
        params.add(variable.variable.name.value)
        if isinstance(variable.type, NonNullTypeNode) and variable.default_value is None:
            required.add(variable.variable.name.value)
    return GraphQLWrite(
        WriteSpec(name, frozenset(params), frozenset(required)),
        mutation,
        "data." + settings.string("result"),
    )


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
        writes: Mapping[str, GraphQLWrite] | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self._entities = entities
        self._scan = scan
        self._health_query = health_query
        self._writes = dict(writes or {})

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
                "writes",
                "tls",
                "allow_insecure",
            }
        )
        writes = {name: _graphql_write(name, w) for name, w in settings.tables("writes").items()}
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
        return cls(name, client, entities, scan, writes=writes)

    def entities(self) -> Mapping[str, EntitySpec]:
        return {name: entity.spec for name, entity in self._entities.items()}

    def actions(self) -> Mapping[str, WriteSpec]:
        return {name: write.spec for name, write in self._writes.items()}

    async def write(self, action: str, values: Mapping[str, Any]) -> WriteResult:
        write = self._writes[write_spec(self.name, self.actions(), action).name]
        write.spec.check(self.name, values)
        status, raw = await self.client.send(
            "POST", "", json={"query": write.mutation, "variables": dict(values)}
        )
        where = f"mutation {action}"
        if not 200 <= status < 300:
            raise write_failure(self.name, status, where, raw)
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise SourceUnavailable(
                self.name, f"answered {where} with invalid JSON (the write may have happened)"
            ) from error
        if not isinstance(payload, dict) or not ("data" in payload or "errors" in payload):
            raise SourceUnavailable(
                self.name, f"answered {where} with no GraphQL result (the write may have happened)"
            )
        found = dig(payload, write.result)
        if found is not None:
            # The mutation's field resolved: the system did the write, even if a field
            # selected under it failed (those errors do not undo it).
            return WriteResult(1, found if isinstance(found, dict) else None)
        errors = dig(payload, "errors")
        if isinstance(errors, list) and errors:
            raise WriteRefused(self.name, f"{where}: {answer_detail(raw)}")
        raise WriteRefused(self.name, f"{where}: null at '{write.result}' and no errors")

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
