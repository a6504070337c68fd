"""GraphQL over HTTP, as the spec asks, on strawberry's documented view hooks.

- `application/graphql-response+json` when the client accepts it; a request error
  (parse, validation, variables: no `data`, no error with a path) is then HTTP 400.
- Request errors never carry a `data` entry.
- Transport errors (malformed JSON, unsupported content type, oversized or slow body, a
  method other than GET and POST) are JSON error bodies, not plain text.
- The body is read whole, counted as it streams (chunked too) and within a time limit,
  before the request asks for an admission place: a client that sends its body slowly
  (or never) holds a connection, never a place to execute.
- An unexpected exception inside a resolver reaches the client as "internal error" with
  no message of its own (it could carry a raw value); the gateway's log keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import orjson
from cross_web import HTTPException
from graphql import GraphQLError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.exceptions import StrawberryGraphQLError
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult

from gateway.admission import Admission, Overloaded
from gateway.auth import Authenticator, AuthError
from gateway.documents import (
    DocumentError,
    DocumentRefused,
    DocumentStore,
    TrustedDocuments,
    resolve_document,
)
from gateway.limits import QueryLimits, QueryTooComplex, check_batch
from gateway.ratelimit import RateLimiter, retry_after
from gateway.resilience import DeadlineExceeded, request_deadline
from gateway.telemetry import set_request_id
from policies.principal import Principal

log = logging.getLogger("c360.graphql")

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"
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


# Request ids: a random prefix per process (a forked worker draws its own) and a counter,
# 32 hex digits as a uuid4's. The id correlates logs and records and is no secret; a uuid4
# per request (os.urandom) cost ~40 us of each request's latency here.
_request_ids: tuple[int, str, itertools.count[int]] = (0, "", itertools.count())


def new_request_id() -> str:
    global _request_ids
    pid, prefix, numbers = _request_ids
    if pid != os.getpid():
        pid, prefix, numbers = _request_ids = (os.getpid(), os.urandom(8).hex(), itertools.count())
    return f"{prefix}{next(numbers):016x}"


def error_body(message: str, code: str) -> bytes:
    return orjson.dumps({"errors": [{"message": message, "extensions": {"code": code}}]})


def wants_graphql_response(accept: str) -> bool:
    """True when the client lists application/graphql-response+json before (or without)
    application/json."""
    media = [part.split(";")[0].strip() for part in accept.split(",")]
    if GRAPHQL_RESPONSE not in media:
        return False
    return JSON not in media or media.index(GRAPHQL_RESPONSE) < media.index(JSON)


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


# The status an access record gives a request whose client left before it was read
# (nginx's convention; the response is never sent).
CLIENT_CLOSED_REQUEST = 499
# The methods GraphQL over HTTP uses; any other gets 405 (and its access record) here.
METHODS = ("GET", "POST")
# Answers after which the connection is not reused: the rest of the body was not read.
CLOSE = {"connection": "close"}


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
        context_factory: Callable[[Request], Any],
        authenticator: Authenticator,
        account: Callable[[Request, Response, float], Awaitable[Response]],
        account_later: Callable[[Request, Response, float], None],
        rate_limiter: RateLimiter | None = None,
        admission: Admission | None = None,
        deadline_s: float | None = None,
        documents: Callable[[], tuple[DocumentStore, TrustedDocuments]] | None = None,
        limits: QueryLimits | None = None,
        max_body_bytes: int,
        body_timeout_s: float = 10.0,
        observe: Callable[[int, float], None] = lambda status, seconds: None,
        durable_first: Callable[[], bool] = lambda: False,
        session: Callable[[Request], Principal | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._context_factory = context_factory
        self._authenticator = authenticator
        self._account = account
        self._account_later = account_later
        self._rate_limiter = rate_limiter
        self._admission = admission
        self._deadline_s = deadline_s
        self._documents = documents
        self._limits = limits
        self._max_body_bytes = max_body_bytes
        self._body_timeout_s = body_timeout_s
        self._observe = observe
        self._durable_first = durable_first
        self._session = session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        request = Request(scope, receive)
        request.state.request_id = new_request_id()
        set_request_id(request.state.request_id)
        response = await self._respond(request)
        seconds = time.perf_counter() - started
        # Every request is accounted for, rejected ones too. With fail_closed, before the
        # answer: a request whose record cannot be made durable gets a 503 instead of data.
        # Otherwise after it, so that the client does not wait for its own record.
        later = not self._is_ide_request(request)
        if later and self._durable_first():
            response = await self._account(request, response, seconds)
            later = False
        response.headers["x-request-id"] = request.state.request_id
        try:
            await response(scope, receive, send)
        finally:
            self._observe(response.status_code, seconds)
            if later:
                self._account_later(request, response, seconds)  # releases the context
            elif (context := getattr(request.state, "context", None)) is not None:
                context.release()

    async def _respond(self, request: Request) -> Response:
        if request.method not in METHODS:
            request.state.reason = "method_not_allowed"
            return Response(
                error_body("/graphql answers GET and POST only.", "BAD_REQUEST"),
                status_code=405,
                media_type=self._media_type(request),
                headers={"allow": ", ".join(METHODS)},
            )
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self._max_body_bytes):
            return self._body_too_large(request)  # before reading any of it
        if not self._is_ide_request(request):
            try:
                request.state.principal = await self._principal(request)
            except AuthError as error:
                code = "UNAUTHENTICATED" if error.status == 401 else "FORBIDDEN"
                request.state.reason = error.reason or (
                    "unauthenticated" if error.status == 401 else "purpose"
                )
                headers = {"www-authenticate": "Bearer"} if error.status == 401 else None
                return Response(
                    error_body(str(error), code),
                    status_code=error.status,
                    media_type=self._media_type(request),
                    headers=headers,
                )
            limited = await self._rate_limited(request)
            if limited is not None:
                return limited
        unread = await self._read_body(request)
        if unread is not None:
            return unread
        try:
            async with self._place() as waited:
                if waited and await request.is_disconnected():
                    raise ClientDisconnect  # gone while it waited for its place
                if self._deadline_s is None:
                    return await self.run(request)
                async with request_deadline(self._deadline_s):
                    return await self.run(request)
        except Overloaded as refused:
            request.state.reason = "overloaded"
            return Response(
                error_body(f"The gateway is overloaded ({refused.reason}).", "OVERLOADED"),
                status_code=503,
                media_type=self._media_type(request),
                headers={"retry-after": "1"},
            )
        except QueryTooComplex as refused:
            request.state.reason = "too_complex"
            return Response(
                orjson.dumps({"errors": [refused.error().formatted]}),
                status_code=400,
                media_type=self._media_type(request),
            )
        except DocumentRefused as refused:
            request.state.reason = "document_refused"
            return Response(
                orjson.dumps(refused.refusal.body()),
                status_code=refused.refusal.status,
                media_type=self._media_type(request),
                headers=dict(refused.refusal.headers),
            )
        except DeadlineExceeded:
            request.state.reason = "deadline"
            return Response(
                error_body(
                    f"The request took longer than {self._deadline_s:g} s.", "DEADLINE_EXCEEDED"
                ),
                status_code=504,
                media_type=self._media_type(request),
            )
        except HTTPException as error:
            request.state.reason = "bad_request"
            return Response(
                error_body(error.reason, "BAD_REQUEST"),
                status_code=error.status_code,
                media_type=self._media_type(request),
            )
        except ClientDisconnect:
            # Gone while it waited for a place (under load): nothing ran and nobody is
            # there to answer; the access record says so.
            return self._client_gone(request)

    async def _principal(self, request: Request) -> Principal:
        """The bearer token's principal. Without an Authorization header, the console's
        sign-in session (`[console.oidc]`: its cookie, with the X-CSRF-Token header) is
        the credential when the request carries its cookie."""
        authorization = request.headers.get("authorization")
        if authorization is None and self._session is not None:
            principal = self._session(request)  # AuthError: ended, or no CSRF header
            if principal is not None:
                return principal
        return await self._authenticator.authenticate(
            authorization, request.headers.get("x-purpose")
        )

    async def _read_body(self, request: Request) -> Response | None:
        """Read the whole body before the request takes an admission place, counting its
        bytes as they arrive (chunked bodies have no Content-Length to check first): 413
        at the limit, without reading the rest; 408 when it has not all arrived within
        `body_timeout_s`; both close the connection. None once the body is read (strawberry
        takes it from the request then)."""
        chunks: list[bytes] = []
        size = 0
        receive = request.receive  # the ASGI messages themselves: no generator per request
        try:
            async with asyncio.timeout(self._body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnect
                    chunk = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > self._max_body_bytes:
                            return self._body_too_large(request)
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            request.state.reason = "body_timeout"
            return Response(
                error_body(
                    f"The request body did not arrive within {self._body_timeout_s:g} s.",
                    "BAD_REQUEST",
                ),
                status_code=408,
                media_type=JSON,
                headers=CLOSE,
            )
        except ClientDisconnect:
            return self._client_gone(request)
        request._body = b"".join(chunks)  # what Request.body() and .stream() hand out
        return None

    def _body_too_large(self, request: Request) -> Response:
        """413, and the connection closed: the rest of the body is not read, not even to
        be thrown away (a client streaming without end would otherwise keep it busy)."""
        request.state.reason = "body_too_large"
        return Response(
            error_body(f"Request body is larger than {self._max_body_bytes} bytes.", "BAD_REQUEST"),
            status_code=413,
            media_type=JSON,
            headers=CLOSE,
        )

    def _client_gone(self, request: Request) -> Response:
        """The client left before its request was read or run: nobody is there to answer,
        nothing ran, and the access record says so (499)."""
        request.state.reason = "client_disconnected"
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    def _place(self) -> contextlib.AbstractAsyncContextManager[bool]:
        """A place to execute in (the admission gate's), or at once without a gate; says
        whether the request had to wait for it."""
        if self._admission is None:
            return contextlib.nullcontext(False)
        return self._admission.place()

    async def _rate_limited(self, request: Request) -> Response | None:
        """429 with Retry-After once the principal's bucket is empty."""
        if self._rate_limiter is None:
            return None
        wait = await self._rate_limiter.take(request.state.principal.subject)
        if wait is None:
            return None
        request.state.reason = "rate_limited"
        return Response(
            error_body("Too many requests; retry later.", "RATE_LIMITED"),
            status_code=429,
            media_type=self._media_type(request),
            headers={"retry-after": retry_after(wait)},
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

    def _is_ide_request(self, request: Request) -> bool:
        # The GraphiQL page itself holds no data; the queries it sends carry a token.
        return (
            self.graphql_ide is not None
            and request.method == "GET"
            and "text/html" in request.headers.get("accept", "")
            and "query" not in request.query_params
        )

    def _media_type(self, request: Request) -> str:
        return (
            GRAPHQL_RESPONSE if wants_graphql_response(request.headers.get("accept", "")) else JSON
        )

    async def get_sub_response(self, request: Any) -> Response:
        # The sub-response carries per-request answers (media type, status) from
        # process_result, which sees the request, to create_response, which does not.
        sub_response = await super().get_sub_response(request)
        sub_response.media_type = self._media_type(request)
        request.state.sub_response = sub_response
        return sub_response

    async def get_context(self, request: Any, response: Any) -> Any:
        context = self._context_factory(request)
        request.state.context = context
        schema = getattr(context, "schema", None)
        if schema is not None:
            _REQUEST_SCHEMA.set(schema)
        return context

    async def process_result(self, request: Any, result: ExecutionResult) -> GraphQLHTTPResponse:
        body: GraphQLHTTPResponse = {}
        request_error = _is_request_error(result)
        request.state.outcome = _outcome(result, request_error)
        if request_error:
            if request.state.sub_response.media_type == GRAPHQL_RESPONSE:
                request.state.sub_response.status_code = 400
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
