"""GraphQL over HTTP, as the spec asks, on strawberry's documented view hooks; the HTTP
pipeline in front of it (gateway/http/) has read, authenticated and admitted the request.

- `application/graphql-response+json` when the client accepts it; a request error
  (parse, validation, variables: no `data`, no error with a path) is then HTTP 400.
- Request errors never carry a `data` entry.
- An unexpected exception inside a resolver reaches the client as "internal error" with
  no message of its own (it could carry a raw value); the gateway's log keeps it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import orjson
from cross_web import HTTPException
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import Response
from strawberry.asgi import GraphQL
from strawberry.exceptions import StrawberryGraphQLError
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult

from gateway.documents import (
    DocumentError,
    DocumentRefused,
    DocumentStore,
    TrustedDocuments,
    resolve_document,
)
from gateway.http.responses import GRAPHQL_RESPONSE, JSON, media_type
from gateway.http.state import RequestState, state_of
from gateway.limits import QueryLimits, check_batch

log = logging.getLogger("c360.graphql")

# Errors we raise on purpose carry a code; anything else is a bug and is masked.
KNOWN_CODES = {
    "BAD_USER_INPUT",
    "DEADLINE_EXCEEDED",
    "FORBIDDEN",
    "SOURCE_UNAVAILABLE",
    "QUERY_TOO_COMPLEX",
    "RATE_LIMITED",
    "UNAUTHENTICATED",
}


def _is_request_error(result: ExecutionResult) -> bool:
    return (
        result.data is None
        and bool(result.errors)
        and all(error.path is None for error in result.errors or [])
    )


def _outcome(result: ExecutionResult, request_error: bool) -> str:
    """ok | partial | error | rejected, as the access log records it."""
    if request_error:
        codes = {(error.extensions or {}).get("code") for error in result.errors or []}
        return "rejected" if "QUERY_TOO_COMPLEX" in codes else "error"
    if not result.errors:
        return "ok"
    return "partial" if result.data else "error"


def _safe_error(error: GraphQLError) -> GraphQLError:
    code = (error.extensions or {}).get("code")
    original = error.original_error
    if code in KNOWN_CODES or original is None or isinstance(original, StrawberryGraphQLError):
        return error
    if isinstance(original, GraphQLError):
        return error
    log.error("resolver failed", exc_info=original, extra={"path": error.path})
    return GraphQLError(
        "Internal error.", path=error.path, extensions={"code": "INTERNAL_SERVER_ERROR"}
    )


# The schema a request executes against, fixed when its context is made: a reload swaps
# the gateway's graph and schema together, and a request in flight keeps its own pair.
# Each request runs in a task of its own, so the variable is the request's.
_REQUEST_SCHEMA: ContextVar[Any] = ContextVar("c360_request_schema", default=None)


class GraphQLView(GraphQL[Any, None]):
    @property
    def schema(self) -> Any:
        """strawberry reads `self.schema` to execute: the request's own, once it has a
        context (strawberry makes it first); the one the view was made with otherwise."""
        return _REQUEST_SCHEMA.get() or self._current_schema

    @schema.setter
    def schema(self, value: Any) -> None:
        self._current_schema = value

    def __init__(
        self,
        *args: Any,
        context_factory: Callable[[RequestState, Request | None], Any],
        documents: Callable[[], tuple[DocumentStore, TrustedDocuments]] | None = None,
        limits: QueryLimits | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._context_factory = context_factory
        self._documents = documents
        self._limits = limits

    def is_ide_request(self, request: Request) -> bool:
        """A browser asking for the GraphiQL page itself, which holds no data (the
        queries it sends carry a token)."""
        return (
            self.graphql_ide is not None
            and request.method == "GET"
            and "text/html" in request.headers.get("accept", "")
            and "query" not in request.query_params
        )

    def decode_json(self, data: str | bytes) -> object:
        # orjson: faster, and its error (a json.JSONDecodeError) also covers invalid UTF-8,
        # which the stdlib reports as a UnicodeDecodeError that strawberry does not catch.
        return orjson.loads(data)

    def parse_json(self, data: str | bytes) -> Any:
        """A GraphQL request is a JSON object (or, batched, a list of them); anything else
        is the client's mistake, a 400, not an error deeper in the view."""
        parsed = super().parse_json(data)
        items = parsed if isinstance(parsed, list) else [parsed]
        if not items or not all(isinstance(item, dict) for item in items):
            raise HTTPException(400, "The request body must be a JSON object (or a batch of them).")
        if isinstance(parsed, list) and self._limits is not None:
            check_batch(len(parsed), self._limits)  # QueryTooComplex, before anything runs
        return parsed

    async def parse_http_body(self, request: Any) -> Any:
        """Trusted documents and Automatic Persisted Queries: the document to run may come
        from the store by its hash, and with `only_trusted` nothing else runs."""
        data = await super().parse_http_body(request)
        if self._documents is None:
            return data
        store, settings = self._documents()
        items = data if isinstance(data, list) else [data]
        resolved = []
        for item in items:
            found = resolve_document(
                {"query": item.query, "extensions": item.extensions}, store, settings
            )
            if isinstance(found, DocumentError):
                raise DocumentRefused(found)
            resolved.append(item if found is item.query else dataclasses.replace(item, query=found))
        return resolved if isinstance(data, list) else resolved[0]

    async def get_sub_response(self, request: Any) -> Response:
        # The sub-response carries per-request answers (media type, status) from
        # process_result, which sees the request, to create_response, which does not.
        sub_response = await super().get_sub_response(request)
        sub_response.media_type = media_type(request)
        state_of(request).sub_response = sub_response
        return sub_response

    async def get_context(self, request: Any, response: Any) -> Any:
        state = state_of(request)
        context = state.context = self._context_factory(state, request)
        schema = getattr(context, "schema", None)
        if schema is not None:
            _REQUEST_SCHEMA.set(schema)
        return context

    async def process_result(self, request: Any, result: ExecutionResult) -> GraphQLHTTPResponse:
        body: GraphQLHTTPResponse = {}
        state = state_of(request)
        request_error = _is_request_error(result)
        state.outcome = _outcome(result, request_error)
        if request_error:
            sub_response = state.sub_response
            if sub_response is not None and sub_response.media_type == GRAPHQL_RESPONSE:
                sub_response.status_code = 400
        else:
            body["data"] = result.data
        if result.errors:
            body["errors"] = [_safe_error(error).formatted for error in result.errors]
        if result.extensions:
            body["extensions"] = result.extensions
        return body

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        response = Response(
            orjson.dumps(response_data),
            status_code=sub_response.status_code or 200,
            media_type=sub_response.media_type or JSON,
        )
        response.headers.raw.extend(
            (k, v)
            for k, v in sub_response.headers.raw
            if k not in (b"content-type", b"content-length")
        )
        return response
