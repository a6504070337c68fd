"""The internals of strawberry, graphql-core and uvicorn that c360 relies on, checked
against the installed versions: an upgrade that moves one fails here, by name, before it
can change an answer (resolvers/upstream.py, gateway/serving.py)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect

import strawberry
import uvicorn
from graphql import GraphQLError, GraphQLSchema
from graphql.execution.executor import Executor
from starlette.requests import Request
from strawberry.types import Info
from strawberry.types.field import StrawberryField
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from resolvers.upstream import (
    CustomGraphQLEnumType,
    ExecutionContextBase,
    core_schema,
    field_definition,
    has_default_resolver,
    keep_body,
    raw_info,
)


@strawberry.enum
class Colour(enum.Enum):
    RED = "RED"


@strawberry.type
class Thing:
    plain: str
    colour: Colour

    @strawberry.field
    def computed(self) -> str:
        return "x"


seen: list[object] = []


@strawberry.type
class Query:
    @strawberry.field
    def thing(self, info: Info) -> Thing:
        seen.append(raw_info(info))
        return Thing(plain="p", colour=Colour.RED)


SCHEMA = strawberry.Schema(query=Query)


def test_strawberry_internals_the_gateway_reads() -> None:
    schema = core_schema(SCHEMA)
    assert isinstance(schema, GraphQLSchema)
    thing = schema.type_map["Thing"]
    plain, computed = thing.fields["plain"], thing.fields["computed"]  # type: ignore[attr-defined]
    assert isinstance(field_definition(plain), StrawberryField)
    assert field_definition(plain).is_basic_field  # type: ignore[union-attr]
    assert has_default_resolver(plain) and not has_default_resolver(computed)
    assert isinstance(schema.type_map["Colour"], CustomGraphQLEnumType)
    assert list(schema.type_map["Colour"].wrapped_cls) == list(Colour)  # type: ignore[attr-defined]
    seen.clear()
    result = SCHEMA.execute_sync("{ thing { plain } ...F } fragment F on Query { thing { plain } }")
    assert result.errors is None
    raw = seen[0]
    assert raw.field_nodes[0].name.value == "thing"  # type: ignore[attr-defined]
    assert "F" in raw.fragments  # type: ignore[attr-defined]


def test_the_execution_context_methods_plainfieldexecutor_overrides() -> None:
    assert issubclass(ExecutionContextBase, Executor)
    for name, parameters in {
        "execute_field": [
            "self",
            "parent_type",
            "source",
            "field_details_list",
            "path",
            "position_context",
        ],
        "complete_value": [
            "self",
            "return_type",
            "field_details_list",
            "info",
            "path",
            "result",
            "position_context",
        ],
        "handle_field_error": ["self", "raw_error", "return_type", "field_details_list", "path"],
    }.items():
        signature = inspect.signature(getattr(ExecutionContextBase, name))
        assert list(signature.parameters) == parameters, (name, signature)
    # Errors noted by the compiled completions are added to graphql-core's collection.
    assert "self.collected_errors" in inspect.getsource(Executor)
    # Refusals are copied slot by slot (resolvers/execution.py `_located_at`).
    assert {"message", "path", "locations", "nodes", "extensions"} <= set(GraphQLError.__slots__)


def test_uvicorn_seams_the_server_uses() -> None:
    connection_made = inspect.signature(HttpToolsProtocol.connection_made)
    assert list(connection_made.parameters) == ["self", "transport"]
    assert isinstance(inspect.getattr_static(uvicorn.Server, "capture_signals"), object)
    server = uvicorn.Server(uvicorn.Config(app=lambda *a: None))
    assert isinstance(server.capture_signals(), contextlib.AbstractContextManager)
    assert callable(server.handle_exit)
    assert asyncio.iscoroutinefunction(uvicorn.Server.serve)


async def test_starlette_hands_out_a_body_kept_for_it() -> None:
    """gateway/http/body.py reads the body itself (counted, timed) and keeps it for
    Starlette's Request, whose body(), json() and stream() then read no message."""

    async def no_messages() -> dict[str, object]:
        raise AssertionError("the body was read again")

    request = Request({"type": "http", "method": "POST", "headers": []}, no_messages)
    keep_body(request, b'{"query": "{ __typename }"}')
    assert await request.body() == b'{"query": "{ __typename }"}'
    assert await request.json() == {"query": "{ __typename }"}
    assert b"".join([chunk async for chunk in request.stream()]) == b'{"query": "{ __typename }"}'
