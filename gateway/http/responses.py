"""The pipeline's own answers: GraphQL-shaped JSON errors (no `data`) in the media type the
client accepts, and the unsent answer to a client that left."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.state import RequestState

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"
# Answers after which the connection is not reused: the rest of the body was not read.
CLOSE = {"connection": "close"}
# The status an access record gives a request whose client left before it was read
# (nginx's convention; the response is never sent).
CLIENT_CLOSED_REQUEST = 499


def error_body(message: str, code: str, extensions: Mapping[str, Any] | None = None) -> bytes:
    """`{"errors": [{"message", "extensions": {"code", ...}}]}`, as orjson writes it."""
    return orjson.dumps(
        {"errors": [{"message": message, "extensions": {"code": code, **(extensions or {})}}]}
    )


def error_response(
    code: str,
    status: int,
    message: str,
    *,
    media_type: str = JSON,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> Response:
    """A whole-request refusal: HTTP `status`, one error with `extensions.code` = `code`."""
    return Response(
        error_body(message, code, extensions),
        status_code=status,
        media_type=media_type,
        headers=headers,
    )


def refusal_response(
    error: GraphQLError,
    status: int,
    *,
    media_type: str = JSON,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A whole-request refusal whose error its raiser made (`QueryTooComplex.error()`,
    `DocumentError.error()`): the client gets that error as it is."""
    return Response(
        orjson.dumps({"errors": [error.formatted]}),
        status_code=status,
        media_type=media_type,
        headers=headers,
    )


def wants_graphql_response(accept: str) -> bool:
    """True when the client lists application/graphql-response+json before (or without)
    application/json."""
    media = [part.split(";")[0].strip() for part in accept.split(",")]
    if GRAPHQL_RESPONSE not in media:
        return False
    return JSON not in media or media.index(GRAPHQL_RESPONSE) < media.index(JSON)


def media_type(request: Request) -> str:
    """The media type of an answer to `request` (GraphQL over HTTP's, when accepted)."""
    return GRAPHQL_RESPONSE if wants_graphql_response(request.headers.get("accept", "")) else JSON


def client_gone(state: RequestState) -> Response:
    """The client left before its request was read or run: nobody is there to answer,
    nothing ran, and the access record says so (499)."""
    state.reason = "client_disconnected"
    return Response(status_code=CLIENT_CLOSED_REQUEST)
