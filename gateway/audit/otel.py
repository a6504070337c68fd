"""Access records and alerts as OpenTelemetry log records, for a SIEM (Splunk, Elastic, an
OTel collector): on when `OTEL_LOGS_EXPORTER` says `otlp` (or `console`), configured by
the standard variables (`OTEL_EXPORTER_OTLP_[LOGS_]ENDPOINT`, `_PROTOCOL`, `_HEADERS`,
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).

One log record per access record once the sink has taken it (off the request path, sent
in batches by the SDK's own thread): event `c360.access` (or `c360.alert`, `c360.write`,
…), severity INFO (WARN for an alert), the record's time, and the record's fields as
attributes `c360.<field>`: the same fields the log holds, so never a value of a customer's
field (customers by CUID, fields by name and decision). Nested fields (`fields`,
`policies`, `sources`, `writes`, `audit_query`) are one JSON string attribute each."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
)

from gateway.errors import ConfigError
from gateway.telemetry import _key_values, _resource

log = logging.getLogger("c360.audit")

Attribute = str | int | float | bool | list[str] | list[int] | list[float]


def exporters(environ: Mapping[str, str]) -> list[LogRecordExporter]:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip() for n in environ.get("OTEL_LOGS_EXPORTER", "").lower().split(",")]
    found: list[LogRecordExporter] = []
    for name in (n for n in names if n and n != "none"):
        if name == "console":
            found.append(ConsoleLogRecordExporter())
            continue
        if name != "otlp":
            raise ConfigError(f"OTEL_LOGS_EXPORTER: '{name}' is not one of otlp, console, none")
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).strip()
        endpoint = environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "").strip()
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        headers = _key_values(
            environ.get("OTEL_EXPORTER_OTLP_LOGS_HEADERS")
            or environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")
        )
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
                OTLPLogExporter as GrpcLogExporter,
            )

            found.append(
                GrpcLogExporter(
                    endpoint=endpoint or base or "http://localhost:4317", headers=headers or None
                )
            )
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http._log_exporter import (
                OTLPLogExporter as HttpLogExporter,
            )

            endpoint = endpoint or (base or "http://localhost:4318").rstrip("/") + "/v1/logs"
            found.append(HttpLogExporter(endpoint=endpoint, headers=headers or None))
        else:
            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: '{protocol}' is not one of http/protobuf, grpc"
            )
    return found


def attributes(record: Mapping[str, Any]) -> dict[str, Attribute]:
    """The record's fields as attributes (None left out, nested ones as JSON)."""
    found: dict[str, Attribute] = {}
    for key, value in record.items():
        name = f"c360.{key}"
        if value is None:
            continue
        if isinstance(value, str | int | float | bool):
            found[name] = value
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            found[name] = [str(item) for item in value]
        else:
            found[name] = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return found


def _nanoseconds(ts: object) -> int | None:
    try:
        return int(dt.datetime.fromisoformat(str(ts)).timestamp() * 1_000_000_000)
    except ValueError:
        return None


class AccessExport:
    """Emits each record the sink has taken; `shutdown()` sends what is batched."""

    def __init__(self, found: Sequence[LogRecordExporter], environ: Mapping[str, str]) -> None:
        self.provider = LoggerProvider(resource=_resource("c360", environ))
        for exporter in found:
            self.provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        self.logger = self.provider.get_logger("c360.audit")

    def emit(self, records: Sequence[Mapping[str, Any]]) -> None:
        for record in records:
            kind = str(record.get("kind", "access"))
            alert = kind == "alert"
            self.logger.emit(
                timestamp=_nanoseconds(record.get("ts")),
                severity_number=SeverityNumber.WARN if alert else SeverityNumber.INFO,
                severity_text="WARN" if alert else "INFO",
                body=f"c360 {kind} record",
                event_name=f"c360.{kind}",
                attributes=attributes(record),
            )

    def shutdown(self) -> None:
        try:
            self.provider.shutdown()
        except Exception:  # an exporter that cannot reach its collector must not stop us
            log.warning("access records not all exported to OpenTelemetry", exc_info=True)


def from_environ(environ: Mapping[str, str]) -> AccessExport | None:
    found = exporters(environ)
    return AccessExport(found, environ) if found else None
