"""OpenTelemetry for the gateway: export configured by the standard `OTEL_*` variables, a
SERVER span per HTTP request, the GraphQL operation and policy decisions on it, W3C
`traceparent` honoured from clients and passed on to the department systems, and a few
metrics alongside Prometheus' /metrics.

Privacy: spans carry the operation's name and type, never the document (its literals
may be personal data), never variables, never the query string of a GET request.
"""

from __future__ import annotations

import logging
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from graphql import get_operation_ast
from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider as ApiMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import INVALID_SPAN, ProxyTracerProvider, Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from gateway.errors import ConfigError

# Only W3C trace context crosses the gateway, in either direction: baggage from a client
# would otherwise be forwarded to every department system unread.
PROPAGATOR = TraceContextTextMapPropagator()
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTLP_HTTP_PATHS = {"traces": "/v1/traces", "metrics": "/v1/metrics"}


# --- configuration from the environment -------------------------------------------------


def _exporter_names(environ: Mapping[str, str], signal: str) -> list[str]:
    """OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER, off when unset. (The spec's default
    is otlp; the gateway sends nothing anywhere unless told to.) For traces, an OTLP
    endpoint alone also means otlp."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    value = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if not value and signal == "traces":
        endpoint_set = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        value = "otlp" if endpoint_set else ""
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        if name not in ("otlp", "console", "none"):
            raise ConfigError(
                f"OTEL_{signal.upper()}_EXPORTER: '{name}' is not one of otlp, console, none"
            )
    return [name for name in names if name != "none"]


def _otlp_options(environ: Mapping[str, str], signal: str) -> tuple[str, str, dict[str, str]]:
    """(protocol, endpoint, headers) for one signal, signal-specific variables first."""
    upper = signal.upper()
    protocol = (
        environ.get(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in ("http/protobuf", "grpc"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: '{protocol}' is not one of http/protobuf, grpc"
        )
    endpoint = environ.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT", "").strip()
    if not endpoint:
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        if protocol == "grpc":
            endpoint = base or "http://localhost:4317"
        else:  # the generic endpoint is a base URL; the signal's path goes after it
            endpoint = (base or "http://localhost:4318").rstrip("/") + OTLP_HTTP_PATHS[signal]
    raw_headers = environ.get(f"OTEL_EXPORTER_OTLP_{upper}_HEADERS") or environ.get(
        "OTEL_EXPORTER_OTLP_HEADERS", ""
    )
    return protocol, endpoint, _key_values(raw_headers)


def _key_values(text: str) -> dict[str, str]:
    """`k1=v1,k2=v2` with URL-encoded values (OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_RESOURCE_ATTRIBUTES)."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return pairs


def span_exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _exporter_names(environ, "traces"):
        if name == "console":
            exporters.append(ConsoleSpanExporter())
            continue
        protocol, endpoint, headers = _otlp_options(environ, "traces")
        # Imported only when configured: gRPC in particular is slow to import.
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )

            exporters.append(GrpcSpanExporter(endpoint=endpoint, headers=headers or None))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpSpanExporter,
            )

            exporters.append(HttpSpanExporter(endpoint=endpoint, headers=headers or None))
    return exporters


def metric_exporters(environ: Mapping[str, str]) -> list[MetricExporter]:
    exporters: list[MetricExporter] = []
    for name in _exporter_names(environ, "metrics"):
        if name == "console":
            exporters.append(ConsoleMetricExporter())
            continue
        protocol, endpoint, headers = _otlp_options(environ, "metrics")
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetricExporter,
            )

            exporters.append(GrpcMetricExporter(endpoint=endpoint, headers=headers or None))
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpMetricExporter,
            )

            exporters.append(HttpMetricExporter(endpoint=endpoint, headers=headers or None))
    return exporters


def _resource(service_name: str, environ: Mapping[str, str]) -> Resource:
    attributes: dict[str, Any] = _key_values(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    attributes["service.name"] = environ.get("OTEL_SERVICE_NAME") or service_name
    return Resource.create(attributes)


def _sampler(environ: Mapping[str, str]) -> Sampler:
    """OTEL_TRACES_SAMPLER; the default follows the caller's `traceparent` decision and
    samples every trace that starts here."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    try:
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError as error:
        raise ConfigError("OTEL_TRACES_SAMPLER_ARG: expected a number in [0, 1]") from error
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        raise ConfigError(f"OTEL_TRACES_SAMPLER: '{name}' is not supported")
    return samplers[name]


def configure_tracing(
    service_name: str, environ: Mapping[str, str], *, set_global: bool = True
) -> TracerProvider | None:
    """A TracerProvider exporting in batches as the environment says, or None (off).

    `set_global` makes it the process's provider, which the module-level tracers (source
    spans in gateway/sources.py) report to; OpenTelemetry allows that once per process.
    Exporter details the variables above do not cover (timeouts, compression, TLS
    certificates) are read by the exporters from the process environment."""
    exporters = span_exporters(environ)
    if not exporters:
        return None
    provider = TracerProvider(resource=_resource(service_name, environ), sampler=_sampler(environ))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def configure_metrics(service_name: str, environ: Mapping[str, str]) -> MeterProvider | None:
    """A MeterProvider when OTEL_METRICS_EXPORTER asks for one (every
    OTEL_METRIC_EXPORT_INTERVAL ms, default 60 s), else None."""
    exporters = metric_exporters(environ)
    if not exporters:
        return None
    try:
        interval_ms = float(environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000"))
    except ValueError as error:
        raise ConfigError("OTEL_METRIC_EXPORT_INTERVAL: expected milliseconds") from error
    readers = [
        PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
        for exporter in exporters
    ]
    return MeterProvider(metric_readers=readers, resource=_resource(service_name, environ))


class GatewayMeters:
    """The OpenTelemetry twins of the main Prometheus series. With no provider, every
    method is a no-op."""

    def __init__(self, meter_provider: ApiMeterProvider | None = None) -> None:
        provider = meter_provider or metrics.NoOpMeterProvider()
        meter = provider.get_meter("c360.gateway")
        self._requests = meter.create_counter(
            "c360.requests", unit="{request}", description="GraphQL requests"
        )
        self._request_duration = meter.create_histogram(
            "c360.request.duration", unit="s", description="Time to answer a GraphQL request"
        )
        self._source_calls = meter.create_counter(
            "c360.source.calls", unit="{call}", description="Calls to a department system"
        )
        self._source_duration = meter.create_histogram(
            "c360.source.duration", unit="s", description="Time a department system took"
        )

    def request(self, outcome: str, seconds: float) -> None:
        """One GraphQL request: `outcome` ok | error (as c360_requests_total)."""
        attributes = {"outcome": outcome}
        self._requests.add(1, attributes)
        self._request_duration.record(seconds, attributes)

    def source_call(self, source: str, outcome: str, seconds: float) -> None:
        """One call to a department system: `outcome` ok | error, or for a write the
        system refused, refused | conflict."""
        attributes = {"c360.source": source, "outcome": outcome}
        self._source_calls.add(1, attributes)
        self._source_duration.record(seconds, attributes)


@dataclass
class Telemetry:
    """What `configure_telemetry` set up, and the one call that flushes it at shutdown."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    meters: GatewayMeters = field(default_factory=GatewayMeters)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Export what is still buffered, then stop. Blocking: call it from the lifespan's
        end (or a thread), after the access log is flushed."""
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(int(timeout_s * 1000))
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=timeout_s * 1000)


def configure_telemetry(
    service_name: str, environ: Mapping[str, str], *, set_global: bool = True
) -> Telemetry:
    tracer_provider = configure_tracing(service_name, environ, set_global=set_global)
    meter_provider = configure_metrics(service_name, environ)
    return Telemetry(tracer_provider, meter_provider, GatewayMeters(meter_provider))


# --- the request span ---------------------------------------------------------------------

_request_span: ContextVar[Span] = ContextVar("c360_request_span", default=INVALID_SPAN)


def request_span() -> Span:
    """The current HTTP request's SERVER span (a non-recording span outside a request),
    wherever the caller is below it: a resolver or a source call has its own span as
    the current one."""
    return _request_span.get()


def set_request_id(request_id: str) -> None:
    request_span().set_attribute("c360.request_id", request_id)


def set_graphql_operation(name: str | None, operation_type: str) -> None:
    """The operation's name (an identifier the client chose, never a value) and type."""
    span = request_span()
    span.set_attribute("graphql.operation.type", operation_type)
    if name:
        span.set_attribute("graphql.operation.name", name)


def tracing_on() -> bool:
    """Whether the process records spans: a TracerProvider is installed (module-level
    tracers such as the source calls' report to it). Without one, starting a span is
    skipped rather than made for nothing."""
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)


def traceparent_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) for the current span, for the REST and GraphQL
    connectors' HeaderHook; empty outside a recorded trace."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier


class TracingMiddleware:
    """A SERVER span per HTTP request, with the HTTP semantic conventions' attributes,
    continuing the client's trace when it sends a W3C `traceparent`."""

    def __init__(self, app: ASGIApp, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.app = app
        # None: the global provider (a no-op one until configure_tracing sets it).
        self.tracer = trace.get_tracer("c360.http", tracer_provider=tracer_provider)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        method = scope["method"]
        known = method in KNOWN_METHODS
        attributes: dict[str, Any] = {
            "http.request.method": method if known else "_OTHER",
            "url.scheme": scope.get("scheme", "http"),
            "url.path": scope["path"],  # never url.query: a GET carries the document there
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if not known:
            attributes["http.request.method_original"] = method
        host, port = _server_address(headers.get("host"), scope)
        if host:
            attributes["server.address"] = host
        if port:
            attributes["server.port"] = port
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        if "user-agent" in headers:
            attributes["user_agent.original"] = headers["user-agent"]
        parent = PROPAGATOR.extract(headers)
        name = method if known else "HTTP"  # the route is added once the router has matched
        status: list[int] = []

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            token = _request_span.set(span)
            try:
                await self.app(scope, receive, send_with_status)
            except Exception as error:
                # Type and frames only: an exception's message may quote a value (the
                # gateway's log has it whole; spans may leave for another company).
                span.record_exception(
                    error,
                    attributes={
                        "exception.message": type(error).__qualname__,
                        "exception.stacktrace": "".join(traceback.format_tb(error.__traceback__)),
                    },
                )
                span.set_attribute("error.type", type(error).__qualname__)
                span.set_status(StatusCode.ERROR, type(error).__qualname__)
                if not status:  # Starlette's ServerErrorMiddleware, outside, answers 500
                    span.set_attribute("http.response.status_code", 500)
                raise
            finally:
                _request_span.reset(token)
                _finish(span, scope, name, status)


def _finish(span: Span, scope: Scope, name: str, status: list[int]) -> None:
    route = getattr(scope.get("route"), "path", None)
    if isinstance(route, str):
        # "{method} {route}": a template, so the span name stays low-cardinality.
        span.update_name(f"{name} {route}")
        span.set_attribute("http.route", route)
    if status:
        code = status[0]
        span.set_attribute("http.response.status_code", code)
        if code >= 500:  # a 4xx is the client's error, not the server's (semconv)
            span.set_attribute("error.type", str(code))
            span.set_status(StatusCode.ERROR)


def _headers(scope: Scope) -> dict[str, str]:
    wanted = {"host", "user-agent", "traceparent", "tracestate"}
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if name in wanted:
            found[name] = raw_value.decode("latin-1")
    return found


def _server_address(host_header: str | None, scope: Scope) -> tuple[str | None, int | None]:
    if host_header:
        parsed = urllib.parse.urlsplit("//" + host_header)
        try:
            return parsed.hostname, parsed.port
        except ValueError:
            return parsed.hostname, None
    server = scope.get("server")
    if server:
        return server[0], server[1]
    return None, None


class GraphQLSpanAttributes(SchemaExtension):
    """Puts the operation's name and type on the request span, and how many field
    decisions the policies made of each kind (`c360.policy.allow|mask|deny`), read from
    the request's FieldGuard at the end. Rejected requests get what is known of them."""

    def on_operation(self) -> Iterator[None]:
        try:
            yield
        finally:
            self._annotate()

    def _annotate(self) -> None:
        span = request_span()
        if span is INVALID_SPAN:
            span = trace.get_current_span()  # no middleware (tests, other servers)
        if not span.is_recording():
            return
        ctx = self.execution_context
        document = ctx.graphql_document
        if document is not None:
            operation = get_operation_ast(document, ctx.operation_name)
            if operation is not None:
                span.set_attribute("graphql.operation.type", operation.operation.value)
                if operation.name is not None:
                    span.set_attribute("graphql.operation.name", operation.name.value)
        decided = getattr(getattr(ctx.context, "guard", None), "decided", None)
        if isinstance(decided, Mapping):
            effects = Counter(
                getattr(decision, "effect", None)
                for fields_ in decided.values()
                for decision in fields_.values()
            )
            for effect in ("allow", "mask", "deny"):
                span.set_attribute(f"c360.policy.{effect}", effects.get(effect, 0))


class TraceIdsFilter(logging.Filter):
    """Adds `trace_id` and `span_id` to every log record made inside a span, so the JSON
    log lines join up with the traces."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        return True
