"""OpenTelemetry: the request span, trace context in and out, the GraphQL attributes
(and no literal from a query in any of them), and export as the OTEL_* variables say."""

from __future__ import annotations

import http.server
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import strawberry
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from strawberry.asgi import GraphQL

from gateway.errors import ConfigError
from gateway.telemetry import (
    GraphQLSpanAttributes,
    TraceIdsFilter,
    TracingMiddleware,
    configure_telemetry,
    configure_tracing,
    set_request_id,
    span_exporters,
    traceparent_headers,
)
from policies.engine import Decision

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SECRET_EMAIL = "zhang.secret@example.com"
SECRET_VARIABLE = "13800138000"


@strawberry.type
class Query:
    @strawberry.field
    def customer_by_email(self, email: str) -> str | None:
        return "cus_1"

    @strawberry.field
    def phone_owner(self, phone: str) -> str | None:
        return None


@dataclass
class Guard:
    decided: dict[str, dict[str, Decision]] = field(default_factory=dict)


@dataclass
class Context:
    guard: Guard


class View(GraphQL[Any, None]):
    async def get_context(self, request: Any, response: Any) -> Any:
        set_request_id("req-42")
        # What a FieldGuard records for two customers: 2 allow, 1 mask, 1 deny.
        return Context(
            Guard(
                {
                    "cus_1": {
                        "name": Decision("allow", "customer.name", None, None, ""),
                        "phone": Decision("mask", "customer.phone", None, None, ""),
                    },
                    "cus_2": {
                        "name": Decision("allow", "customer.name", None, None, ""),
                        "nationalId": Decision("deny", "customer.national_id", None, None, ""),
                    },
                }
            )
        )


async def hello(request: Request) -> JSONResponse:
    return JSONResponse(traceparent_headers())


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError(f"no customer with email {SECRET_EMAIL}")


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def app(spans: InMemorySpanExporter) -> Starlette:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    schema = strawberry.Schema(Query, extensions=[GraphQLSpanAttributes])
    return Starlette(
        routes=[
            Route("/graphql", View(schema), methods=["GET", "POST"]),
            Route("/hello", hello),
            Route("/boom", boom),
        ],
        middleware=[Middleware(TracingMiddleware, tracer_provider=provider)],
    )


async def call(
    app: Any,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    query_string: str = "",
) -> tuple[int, bytes]:
    """One request straight through the ASGI interface."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query_string.encode(),
        "root_path": "",
        "headers": [
            (k.encode(), v.encode())
            for k, v in {"host": "gateway.internal:8000", **(headers or {})}.items()
        ],
        "client": ("10.1.2.3", 51000),
        "server": ("127.0.0.1", 8000),
    }
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def only_span(spans: InMemorySpanExporter) -> ReadableSpan:
    [span] = spans.get_finished_spans()
    return span


async def test_a_server_span_per_request_with_http_attributes(
    app: Starlette, spans: InMemorySpanExporter
) -> None:
    status, _ = await call(app, "GET", "/hello", {"user-agent": "web-crm/1.0"})
    assert status == 200
    span = only_span(spans)
    assert span.kind == SpanKind.SERVER
    assert span.name == "GET /hello"
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/hello",
        "network.protocol.version": "1.1",
        "server.address": "gateway.internal",
        "server.port": 8000,
        "client.address": "10.1.2.3",
        "user_agent.original": "web-crm/1.0",
        "http.route": "/hello",
        "http.response.status_code": 200,
    }
    assert span.parent is None  # no traceparent: a new trace

    await call(app, "GET", "/hello")
    assert len(spans.get_finished_spans()) == 2


async def test_the_clients_traceparent_is_honoured_and_passed_on(
    app: Starlette, spans: InMemorySpanExporter
) -> None:
    _, body = await call(app, "GET", "/hello", {"traceparent": TRACEPARENT})
    span = only_span(spans)
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_ID

    # What a connector's header hook sends on: the same trace, the gateway's span as parent.
    outgoing = orjson.loads(body)["traceparent"]
    version, trace_id, parent_id, flags = outgoing.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert parent_id == f"{span.context.span_id:016x}"


def test_traceparent_headers_outside_a_trace_are_empty() -> None:
    assert traceparent_headers() == {}


async def test_graphql_attributes_and_policy_counts_without_any_literal(
    app: Starlette, spans: InMemorySpanExporter
) -> None:
    query = f"""query Lookup($phone: String!) {{
        customerByEmail(email: "{SECRET_EMAIL}")
        phoneOwner(phone: $phone)
    }}"""
    body = orjson.dumps({"query": query, "variables": {"phone": SECRET_VARIABLE}})
    status, reply = await call(
        app, "POST", "/graphql", {"content-type": "application/json"}, body=body
    )
    assert status == 200, reply
    span = only_span(spans)
    attributes = dict(span.attributes or {})
    assert attributes["graphql.operation.name"] == "Lookup"
    assert attributes["graphql.operation.type"] == "query"
    assert attributes["c360.request_id"] == "req-42"
    assert (
        attributes["c360.policy.allow"],
        attributes["c360.policy.mask"],
        attributes["c360.policy.deny"],
    ) == (2, 1, 1)
    assert span.name == "POST /graphql"

    # The same document over GET: its text is in the query string, which is never kept.
    params = urllib.parse.urlencode(
        {"query": query, "variables": orjson.dumps({"phone": SECRET_VARIABLE}).decode()}
    )
    status, _ = await call(app, "GET", "/graphql", query_string=params)
    assert status == 200

    for recorded in spans.get_finished_spans():
        text = " ".join(f"{k}={v}" for k, v in (recorded.attributes or {}).items())
        text += recorded.name + " ".join(e.name for e in recorded.events)
        assert "zhang" not in text and SECRET_VARIABLE not in text
        assert "url.query" not in (recorded.attributes or {})


async def test_a_rejected_document_still_names_its_operation(
    app: Starlette, spans: InMemorySpanExporter
) -> None:
    body = orjson.dumps({"query": "query Bad { nobody }"})
    await call(app, "POST", "/graphql", {"content-type": "application/json"}, body=body)
    attributes = dict(only_span(spans).attributes or {})
    assert attributes["graphql.operation.name"] == "Bad"
    assert attributes["c360.policy.deny"] == 1  # the context was built before validation


async def test_a_failing_request_is_an_error_span(
    app: Starlette, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(RuntimeError):
        await call(app, "GET", "/boom")
    span = only_span(spans)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.attributes["http.response.status_code"] == 500
    [event] = span.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    assert "test_telemetry.py" in str(event.attributes["exception.stacktrace"])
    assert "zhang" not in str(dict(event.attributes))  # the message may quote a value


async def test_a_4xx_is_not_a_server_error(app: Starlette, spans: InMemorySpanExporter) -> None:
    status, _ = await call(app, "GET", "/nowhere")
    assert status == 404
    span = only_span(spans)
    assert span.name == "GET"  # no route matched: no path in the name (cardinality)
    assert span.status.status_code == StatusCode.UNSET


async def test_the_extension_without_the_middleware_uses_the_current_span(
    spans: InMemorySpanExporter,
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    schema = strawberry.Schema(Query, extensions=[GraphQLSpanAttributes])
    with provider.get_tracer("test").start_as_current_span("request"):
        await schema.execute('query Q { phoneOwner(phone: "1") }', context_value=None)
    attributes = dict(only_span(spans).attributes or {})
    assert attributes["graphql.operation.name"] == "Q"
    assert "c360.policy.allow" not in attributes  # no guard in that context


def test_log_records_carry_the_trace_ids(caplog: pytest.LogCaptureFixture) -> None:
    provider = TracerProvider()
    logger = logging.getLogger("c360.test.telemetry")
    logger.addFilter(TraceIdsFilter())
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("outside")
        with provider.get_tracer("test").start_as_current_span("request") as span:
            logger.info("inside")
    outside, inside = caplog.records
    assert not hasattr(outside, "trace_id")
    assert inside.trace_id == f"{span.get_span_context().trace_id:032x}"


# --- export configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_METRICS_EXPORTER": "otlp"},  # metrics only
    ],
)
def test_tracing_is_off_unless_configured(environ: dict[str, str]) -> None:
    assert configure_tracing("c360", environ, set_global=False) is None


def test_exporters_follow_the_variables() -> None:
    [grpc] = span_exporters({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert isinstance(grpc, GrpcSpanExporter)
    grpc.shutdown()
    console = span_exporters({"OTEL_TRACES_EXPORTER": "console,none"})
    assert [type(e).__name__ for e in console] == ["ConsoleSpanExporter"]
    for environ, message in [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json'",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "sometimes"},
            "OTEL_TRACES_SAMPLER: 'sometimes'",
        ),
    ]:
        with pytest.raises(ConfigError, match=message):
            configure_tracing("c360", environ, set_global=False)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def collector() -> Iterator[tuple[str, list[Received]]]:
    """A stand-in OTLP/HTTP collector on a free local port."""
    received: list[Received] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            received.append(
                Received(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
            )
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_otlp_over_http_exports_spans_and_metrics_on_shutdown(
    collector: tuple[str, list[Received]],
) -> None:
    endpoint, received = collector
    telemetry = configure_telemetry(
        "c360",
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,  # enough to turn traces on
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_SERVICE_NAME": "c360-under-test",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=acme%20corp",
        },
        set_global=False,
    )
    assert telemetry.tracer_provider is not None and telemetry.meter_provider is not None
    with telemetry.tracer_provider.get_tracer("test").start_as_current_span("one request"):
        telemetry.meters.request("ok", 0.012)
        telemetry.meters.source_call("sales", "ok", 0.004)

    telemetry.shutdown(timeout_s=5)

    by_path = {r.path: r for r in received}
    assert set(by_path) == {"/v1/traces", "/v1/metrics"}
    for request in by_path.values():
        assert request.headers["content-type"] == "application/x-protobuf"
        assert request.headers["x-tenant"] == "acme corp"
        assert b"c360-under-test" in request.body  # the resource's service.name
    assert b"one request" in by_path["/v1/traces"].body
    assert b"c360.source.calls" in by_path["/v1/metrics"].body


def test_meters_without_a_provider_do_nothing() -> None:
    telemetry = configure_telemetry("c360", {}, set_global=False)
    assert telemetry.tracer_provider is None and telemetry.meter_provider is None
    telemetry.meters.request("error", 0.5)
    telemetry.meters.source_call("service", "error", 1.0)
    telemetry.shutdown()
