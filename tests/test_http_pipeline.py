"""The /graphql pipeline's stages one by one (gateway/http/): each refusal is a GraphQL-shaped
JSON error in the media type the client accepts, with its status, headers and the reason
its access record gives; the request's state is typed and defaults nothing it was not told.
End to end (a served gateway, its records) they are tested in test_attack_regressions.py,
test_admission.py, test_hardening.py and test_auth.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import strawberry
from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from gateway.admission import Admission, AdmissionSettings
from gateway.auth import AuthError
from gateway.documents import DocumentError, DocumentRefused
from gateway.http.accounting import Accounting
from gateway.http.admission import AdmissionStage
from gateway.http.authn import Authentication
from gateway.http.body import BodyLimit
from gateway.http.execution import REFUSED, ExecutionRefusals
from gateway.http.method import refuse_method
from gateway.http.pipeline import GraphQLEndpoint
from gateway.http.rate import RateLimit
from gateway.http.responses import GRAPHQL_RESPONSE, JSON, error_response
from gateway.http.state import STATE_KEY, RequestState, state_of
from gateway.limits import QueryLimits, QueryTooComplex
from gateway.resilience import DeadlineExceeded
from gateway.view import GraphQLView
from policies.principal import Principal

ALICE = Principal("alice", frozenset({"sales"}), "sales", ("sales",))


def request(
    method: str = "POST",
    headers: Sequence[tuple[str, str]] = (),
    messages: Sequence[Message] = ({"type": "http.request", "body": b"{}"},),
) -> tuple[Request, list[Message]]:
    """A request whose body arrives as `messages`; the list returned fills with what the
    request received (after the last message, the client stalls)."""
    pending = list(messages)
    received: list[Message] = []

    async def receive() -> Message:
        if not pending:
            await asyncio.Event().wait()  # a client that sends nothing more
        message = pending.pop(0)
        received.append(message)
        return message

    scope = {
        "type": "http",
        "method": method,
        "path": "/graphql",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }
    return Request(scope, receive), received


def refused(response: Response | None) -> tuple[int, str, list[str], str]:
    """(status, content-type, error codes, first message) of a refusal."""
    assert response is not None
    body = orjson.loads(bytes(response.body))
    assert set(body) == {"errors"}  # never a `data` entry
    codes = [error["extensions"]["code"] for error in body["errors"]]
    return (
        response.status_code,
        response.headers["content-type"],
        codes,
        body["errors"][0]["message"],
    )


ACCEPTS_GRAPHQL = [("accept", f"{GRAPHQL_RESPONSE}, {JSON}")]


# --- state -------------------------------------------------------------------------------


def test_the_state_has_no_attribute_it_does_not_declare() -> None:
    state = RequestState("r1")
    assert (state.principal, state.reason, state.outcome, state.context) == (
        None,
        None,
        "rejected",
        None,
    )
    with pytest.raises(AttributeError):
        state.resaon = "typo"  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = state.principle  # type: ignore[attr-defined]


def test_a_request_that_did_not_come_through_the_pipeline_has_no_state() -> None:
    bare, _ = request()
    with pytest.raises(KeyError):
        state_of(bare)
    bare.scope[STATE_KEY] = state = RequestState("r2")
    assert state_of(bare) is state


# --- the shared answer -------------------------------------------------------------------


def test_error_response_is_one_graphql_error_in_the_given_media_type() -> None:
    response = error_response(
        "RATE_LIMITED",
        429,
        "slow down",
        media_type=GRAPHQL_RESPONSE,
        headers={"retry-after": "3"},
        extensions={"limit": "rate"},
    )
    assert orjson.loads(bytes(response.body)) == {
        "errors": [
            {"message": "slow down", "extensions": {"code": "RATE_LIMITED", "limit": "rate"}}
        ]
    }
    assert response.status_code == 429
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    assert response.headers["retry-after"] == "3"
    assert error_response("X", 400, "m").headers["content-type"] == JSON


# --- method ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_get_and_post_pass(method: str) -> None:
    state = RequestState("r")
    assert refuse_method(request(method)[0], state) is None
    assert state.reason is None


def test_another_method_is_405_with_allow_in_the_accepted_media_type() -> None:
    state = RequestState("r")
    response = refuse_method(request("PUT", ACCEPTS_GRAPHQL)[0], state)
    assert refused(response)[:3] == (405, GRAPHQL_RESPONSE, ["BAD_REQUEST"])
    assert response is not None and response.headers["allow"] == "GET, POST"
    assert state.reason == "method_not_allowed"


# --- body --------------------------------------------------------------------------------

LIMIT = BodyLimit(max_bytes=10, timeout_s=0.2)


@pytest.mark.parametrize("length", ["11", "ten", "-1"])
def test_a_declared_length_over_the_limit_or_not_a_number_is_413_before_reading(
    length: str,
) -> None:
    state = RequestState("r")
    sent, received = request(headers=[("content-length", length)])
    response = LIMIT.refuse_declared(sent, state)
    assert refused(response)[:3] == (413, JSON, ["BAD_REQUEST"])
    assert response is not None and response.headers["connection"] == "close"
    assert (state.reason, received) == ("body_too_large", [])


async def test_a_body_within_the_limit_is_read_whole() -> None:
    state = RequestState("r")
    sent, _ = request(
        messages=[
            {"type": "http.request", "body": b'{"a":', "more_body": True},
            {"type": "http.request", "body": b"1}", "more_body": False},
        ]
    )
    assert LIMIT.refuse_declared(sent, state) is None
    assert await LIMIT.read(sent, state) is None
    assert await sent.body() == b'{"a":1}'
    assert state.reason is None


async def test_a_chunked_body_is_refused_at_the_limit_without_reading_the_rest() -> None:
    state = RequestState("r")
    chunk: Message = {"type": "http.request", "body": b"x" * 4, "more_body": True}
    sent, received = request(messages=[chunk] * 10)
    response = await LIMIT.read(sent, state)
    assert refused(response)[:3] == (413, JSON, ["BAD_REQUEST"])
    assert response is not None and response.headers["connection"] == "close"
    assert len(received) == 3  # 12 bytes > 10: the fourth chunk is never asked for
    assert state.reason == "body_too_large"


async def test_a_body_that_stalls_is_408_and_closes_the_connection() -> None:
    state = RequestState("r")
    sent, _ = request(messages=[{"type": "http.request", "body": b"{", "more_body": True}])
    response = await LIMIT.read(sent, state)
    status, media, codes, message = refused(response)
    assert (status, media, codes) == (408, JSON, ["BAD_REQUEST"])
    assert "0.2 s" in message
    assert response is not None and response.headers["connection"] == "close"
    assert state.reason == "body_timeout"


async def test_a_client_gone_before_its_body_arrived_is_499_with_nothing_sent() -> None:
    state = RequestState("r")
    sent, _ = request(messages=[{"type": "http.disconnect"}])
    response = await LIMIT.read(sent, state)
    assert response is not None
    assert (response.status_code, response.body) == (499, b"")
    assert state.reason == "client_disconnected"


# --- authentication ----------------------------------------------------------------------


class Tokens:
    """An authenticator that refuses with `error`, or accepts as ALICE."""

    def __init__(self, error: AuthError | None = None) -> None:
        self.error = error
        self.asked: list[tuple[str | None, str | None]] = []

    async def authenticate(self, authorization: str | None, purpose: str | None) -> Principal:
        self.asked.append((authorization, purpose))
        if self.error is not None:
            raise self.error
        return ALICE


async def test_no_credentials_is_401_with_www_authenticate() -> None:
    state = RequestState("r")
    stage = Authentication(Tokens(AuthError("Authentication required.")))  # type: ignore[arg-type]
    response = await stage.check(request(headers=ACCEPTS_GRAPHQL)[0], state)
    assert refused(response) == (
        401,
        GRAPHQL_RESPONSE,
        ["UNAUTHENTICATED"],
        "Authentication required.",
    )
    assert response is not None and response.headers["www-authenticate"] == "Bearer"
    assert (state.principal, state.reason) == (None, "unauthenticated")


async def test_a_purpose_the_token_does_not_allow_is_403_without_www_authenticate() -> None:
    state = RequestState("r")
    stage = Authentication(Tokens(AuthError("Not for this purpose.", 403)))  # type: ignore[arg-type]
    response = await stage.check(request()[0], state)
    assert refused(response)[:3] == (403, JSON, ["FORBIDDEN"])
    assert response is not None and "www-authenticate" not in response.headers
    assert state.reason == "purpose"


async def test_a_bearer_token_sets_the_principal() -> None:
    state = RequestState("r")
    tokens = Tokens()
    stage = Authentication(tokens, session=lambda r: None)  # type: ignore[arg-type]
    sent, _ = request(headers=[("authorization", "Bearer t"), ("x-purpose", "sales")])
    assert await stage.check(sent, state) is None
    assert state.principal is ALICE
    assert tokens.asked == [("Bearer t", "sales")]


async def test_without_authorization_the_console_session_is_the_credential() -> None:
    state = RequestState("r")
    tokens = Tokens(AuthError("no token"))
    reviewer = Principal("rev", frozenset({"security"}), "audit", ("audit",))
    stage = Authentication(tokens, session=lambda r: reviewer)  # type: ignore[arg-type]
    assert await stage.check(request()[0], state) is None
    assert (state.principal, tokens.asked) == (reviewer, [])


# --- rate limit --------------------------------------------------------------------------


class Bucket:
    def __init__(self, wait: float | None) -> None:
        self.wait = wait
        self.taken: list[str] = []

    async def take(self, subject: str) -> float | None:
        self.taken.append(subject)
        return self.wait


async def test_an_empty_bucket_is_429_with_retry_after_in_whole_seconds() -> None:
    state = RequestState("r", principal=ALICE)
    bucket = Bucket(1.2)
    response = await RateLimit(bucket).check(request(headers=ACCEPTS_GRAPHQL)[0], state)  # type: ignore[arg-type]
    assert refused(response)[:3] == (429, GRAPHQL_RESPONSE, ["RATE_LIMITED"])
    assert response is not None and response.headers["retry-after"] == "2"
    assert (state.reason, bucket.taken) == ("rate_limited", ["alice"])


async def test_a_token_left_passes_and_an_unauthenticated_request_is_a_bug() -> None:
    stage = RateLimit(Bucket(None))  # type: ignore[arg-type]
    assert await stage.check(request()[0], RequestState("r", principal=ALICE)) is None
    with pytest.raises(RuntimeError):
        await stage.check(request()[0], RequestState("r"))


# --- execution's refusals ----------------------------------------------------------------

REFUSALS: list[tuple[Exception, int, str, str, dict[str, str]]] = [
    (QueryTooComplex("depth", 3, "Too deep."), 400, "QUERY_TOO_COMPLEX", "too_complex", {}),
    (
        DocumentRefused(
            DocumentError("PERSISTED_QUERY_NOT_FOUND", "Not found.", 200, {"cache-control": "no"})
        ),
        200,
        "PERSISTED_QUERY_NOT_FOUND",
        "document_refused",
        {"cache-control": "no"},
    ),
    (DeadlineExceeded(0.5), 504, "DEADLINE_EXCEEDED", "deadline", {}),
    (HTTPException(400, "Unsupported content type"), 400, "BAD_REQUEST", "bad_request", {}),
]


@pytest.mark.parametrize(
    ("error", "status", "code", "reason", "headers"),
    REFUSALS,
    ids=["too-complex", "document", "deadline", "bad-request"],
)
@pytest.mark.parametrize("accept", [[], ACCEPTS_GRAPHQL], ids=["json", "graphql-response"])
def test_each_execution_refusal_is_an_error_response(
    error: Exception,
    status: int,
    code: str,
    reason: str,
    headers: dict[str, str],
    accept: list[tuple[str, str]],
) -> None:
    assert isinstance(error, REFUSED)
    state = RequestState("r")
    response = ExecutionRefusals(deadline_s=0.5).refuse(error, request(headers=accept)[0], state)
    media = GRAPHQL_RESPONSE if accept else JSON
    assert refused(response)[:3] == (status, media, [code])
    assert {k: response.headers[k] for k in headers} == headers
    assert state.reason == reason


def test_a_too_complex_refusal_names_the_limit() -> None:
    refusal = QueryTooComplex("depth", 3, "Too deep.")
    response = ExecutionRefusals(None).refuse(refusal, request()[0], RequestState("r"))
    [error] = orjson.loads(bytes(response.body))["errors"]
    assert error == {
        "message": "Too deep.",
        "extensions": {"code": "QUERY_TOO_COMPLEX", "limit": "depth", "max": 3},
    }


# --- the stages in order -----------------------------------------------------------------


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "world"

    @strawberry.field
    async def slow(self) -> str:
        await asyncio.sleep(5)
        return "late"


class Log:
    """The access log as accounting uses it: records made after the answer."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(fail_closed=False)
        self.jobs: list[Any] = []

    def later(self, job: Any) -> None:
        self.jobs.append(job)


def endpoint(
    tokens: Tokens | None = None,
    bucket: Bucket | None = None,
    log: Log | None = None,
    *,
    gate: Admission | None = None,
    deadline_s: float | None = None,
) -> GraphQLEndpoint:
    view = GraphQLView(
        strawberry.Schema(Query),
        graphql_ide=None,
        context_factory=lambda state, r: None,
        limits=QueryLimits(max_batch=1),
    )
    return GraphQLEndpoint(
        view,
        body=BodyLimit(max_bytes=100, timeout_s=0.2),
        authentication=Authentication(tokens or Tokens()),  # type: ignore[arg-type]
        rate_limit=RateLimit(bucket or Bucket(None)),  # type: ignore[arg-type]
        admission=AdmissionStage(gate),
        execution=ExecutionRefusals(deadline_s),
        accounting=Accounting(log or Log()),  # type: ignore[arg-type]
    )


async def serve(
    app: GraphQLEndpoint,
    body: bytes = b"{}",
    headers: Sequence[tuple[str, str]] = (("authorization", "Bearer t"),),
    messages: Sequence[Message] | None = None,
) -> tuple[list[Message], list[Message], RequestState]:
    """(what the app sent, what it received, the request's state) for one POST."""
    sent_request, received = request(
        "POST",
        [("content-type", JSON), *headers],
        messages or [{"type": "http.request", "body": body}],
    )
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(sent_request.scope, sent_request.receive, send)
    return sent, received, sent_request.scope[STATE_KEY]


def answer(sent: list[Message]) -> tuple[int, dict[bytes, bytes], Any]:
    """(status, headers, JSON body) of what the app sent."""
    start, body = sent
    return start["status"], dict(start["headers"]), orjson.loads(body["body"])


def codes(body: Any) -> list[str]:
    return [error["extensions"]["code"] for error in body["errors"]]


async def test_a_declared_oversized_body_is_refused_before_authentication() -> None:
    tokens, log = Tokens(AuthError("who?")), Log()
    sent, received, state = await serve(
        endpoint(tokens, log=log), headers=[("content-length", "101")]
    )
    assert answer(sent)[0] == 413
    assert (tokens.asked, received, state.reason, len(log.jobs)) == (
        [],
        [],
        "body_too_large",
        1,
    )


async def test_a_refused_client_never_has_its_body_read_and_every_answer_is_accounted() -> None:
    tokens, log = Tokens(AuthError("who?")), Log()
    sent, received, state = await serve(endpoint(tokens, log=log), headers=[])
    status, headers, body = answer(sent)
    assert (status, codes(body)) == (401, ["UNAUTHENTICATED"])
    assert headers[b"x-request-id"] == state.request_id.encode()
    assert received == []  # the body is read only after authentication and the rate limit
    assert (state.reason, len(log.jobs)) == ("unauthenticated", 1)


async def test_a_rate_limited_request_is_refused_before_its_body_is_read() -> None:
    log = Log()
    sent, received, state = await serve(endpoint(bucket=Bucket(0.5), log=log))
    status, headers, _ = answer(sent)
    assert (status, headers[b"retry-after"], received) == (429, b"1", [])
    assert (state.principal, state.reason, len(log.jobs)) == (ALICE, "rate_limited", 1)


async def test_an_admitted_request_runs_and_its_outcome_is_recorded() -> None:
    log = Log()
    gate = Admission(AdmissionSettings(limit=1))
    sent, _, state = await serve(
        endpoint(log=log, gate=gate, deadline_s=5.0), orjson.dumps({"query": "{ hello }"})
    )
    status, headers, body = answer(sent)
    assert (status, headers[b"content-type"], body) == (
        200,
        b"application/json",
        {"data": {"hello": "world"}},
    )
    assert (state.outcome, state.reason, len(log.jobs)) == ("ok", None, 1)
    assert state.sub_response is not None
    assert gate.executing == 0  # its place was given back


async def test_a_request_without_a_place_is_503_overloaded_and_never_runs() -> None:
    gate = Admission(AdmissionSettings(limit=1, max_queued=0))
    tokens = Tokens()
    async with gate.place():  # the one place is taken
        sent, received, state = await serve(
            endpoint(tokens, gate=gate), orjson.dumps({"query": "{ hello }"})
        )
    status, headers, body = answer(sent)
    assert (status, headers[b"retry-after"], codes(body)) == (503, b"1", ["OVERLOADED"])
    assert len(received) == 1  # the body was read first, then no place came
    assert (state.reason, state.context, state.sub_response) == ("overloaded", None, None)
    assert (gate.executing, gate.queued) == (0, 0)


@pytest.mark.parametrize(
    ("body", "status", "code", "reason"),
    [
        (b"[1]", 400, "BAD_REQUEST", "bad_request"),
        (
            b'[{"query": "{ hello }"}, {"query": "{ hello }"}]',
            400,
            "QUERY_TOO_COMPLEX",
            "too_complex",
        ),
        (b'{"query": "{ slow }"}', 504, "DEADLINE_EXCEEDED", "deadline"),
    ],
    ids=["not-an-object", "batch-over-the-limit", "past-the-deadline"],
)
async def test_what_the_run_raises_is_answered_by_execution(
    body: bytes, status: int, code: str, reason: str
) -> None:
    sent, _, state = await serve(endpoint(deadline_s=0.05), body)
    answered, _, reply = answer(sent)
    assert (answered, codes(reply), state.reason) == (status, [code], reason)
    assert "data" not in reply
