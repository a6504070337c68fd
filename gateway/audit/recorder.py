"""One access record per GraphQL request, rejected ones included: who (subject, roles,
purpose, client), what (operation, document hash, customers, per customer each
personal-data field and its decision, with the policies), how it went (outcome, status,
duration, the systems asked). Never a variable, never a value of a field."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from gateway.audit.log import AccessLog
from policies.principal import Principal

log = logging.getLogger("c360.audit")

PERSONAL = ("allow", "mask")


# What X-Client-Name may be to be recorded as sent: a program's name, not free text.
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
INVALID_CLIENT = "invalid"


def client_name(header: str | None) -> str | None:
    """X-Client-Name, recorded only when it is a plain name (`CLIENT_NAME`): it is
    client-supplied, so it is never trusted, and free text there (an email, a person's
    name) must not reach the log. Anything else is recorded as "invalid" (the request is
    not refused for it); no header, as None."""
    if header is None or header == "":
        return None
    return header if CLIENT_NAME.fullmatch(header) else INVALID_CLIENT


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


@dataclass(frozen=True, slots=True)
class GraphFacts:
    """What an access record reads of a request's graph context, taken when the request
    is answered: the context itself is let go of then (held until its record is made,
    a page's customers and records outlived the next collections and filled the oldest
    generation, for more full collections: bench (b) CPU per page)."""

    operation: Mapping[str, Any] | None
    decided: Mapping[str, Mapping[str, Any]]  # customer -> field -> Decision
    touched: set[str]
    sources_used: Mapping[str, Any]  # source -> SourceUse
    audit_query: Mapping[str, Any] | None
    # The request's writes (resolvers/writes.py): system, fields, decisions, outcome and
    # keyed hashes of the values before and after, never a value.
    writes: list[Mapping[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, graph: Any) -> GraphFacts | None:
        if graph is None:
            return None
        return cls(
            operation=getattr(graph, "operation", None),
            decided=graph.guard.decided,
            touched=graph.touched,
            sources_used=graph.sources_used,
            audit_query=getattr(graph, "audit_query", None),
            writes=list(getattr(graph, "writes", None) or []),
        )


def access_record(
    *,
    ts: str,
    trace_id: str | None,
    request_id: str,
    principal: Principal | None,
    client: str | None,
    status: int,
    outcome: str,
    duration_ms: float,
    reason: str | None = None,
    graph: GraphFacts | None = None,
) -> dict[str, Any]:
    """`graph`: what the request's GraphContext held when the query ran (None when
    rejected)."""
    record: dict[str, Any] = {
        "kind": "access",
        "ts": ts,
        "request_id": request_id,
        "trace_id": trace_id,
        "subject": principal.subject if principal else None,
        "roles": sorted(principal.roles) if principal else [],
        "purpose": principal.purpose if principal else None,
        "client": client,
        "operation": None,
        "operation_type": None,
        "document_hash": None,
        "outcome": outcome,
        "status": status,
        "reason": reason,
        "duration_ms": round(duration_ms, 3),
        "customers": [],
        "fields": {},
        "policies": {},
        "sources": {},
    }
    if graph is None:
        return record
    operation = graph.operation or {}
    record["operation"] = operation.get("name")
    record["operation_type"] = operation.get("type")
    record["document_hash"] = operation.get("document_hash")
    fields: dict[str, dict[str, str]] = {}
    policies: dict[str, str] = {}
    for customer, decided in graph.decided.items():
        fields[customer] = {name: decision.effect for name, decision in decided.items()}
        for name, decision in decided.items():
            policies[name] = decision.policy
    record["customers"] = sorted(graph.touched | set(fields))
    record["fields"] = fields
    record["policies"] = policies
    record["sources"] = {
        name: {"calls": use.calls, "cache_hits": use.cache_hits, "errors": use.errors}
        for name, use in sorted(graph.sources_used.items())
    }
    if graph.audit_query:
        record["audit_query"] = graph.audit_query
    if graph.writes:
        record["kind"] = "write"
        record["writes"] = graph.writes
        record["customers"] = sorted(
            set(record["customers"]) | {w["customer"] for w in graph.writes if w.get("customer")}
        )
    return record


def superseding(record: Mapping[str, Any], status: int, reason: str) -> dict[str, Any]:
    """The record of an answer given in place of the one `record` (sealed) describes: with
    fail_closed, a request whose record was not durable in time is refused instead (503),
    and that record, should it still land, says what the answer would have been. This one
    says what it was: the same request, rejected, nothing of any customer delivered, and
    which record it supersedes."""
    kept = ("ts", "request_id", "trace_id", "subject", "roles", "purpose", "client")
    return {
        "kind": "access",
        **{key: record.get(key) for key in kept},
        **{key: record.get(key) for key in ("operation", "operation_type", "document_hash")},
        "outcome": "rejected",
        "status": status,
        "reason": reason,
        "duration_ms": record.get("duration_ms"),
        "customers": [],
        "fields": {},
        "policies": {},
        "sources": record.get("sources") or {},
        "supersedes": f"{record['chain']}:{record['seq']}",
    }


def record_with_alerts(access_log: AccessLog, record: dict[str, Any]) -> Any:
    """Queue the record, then any alert it raises; returns the durability future."""
    durable = access_log.record(record)
    if record.get("subject"):
        fields: Mapping[str, Mapping[str, str]] = record["fields"]
        read = {c for c, seen in fields.items() if any(d in PERSONAL for d in seen.values())}
        denied = sum(1 for seen in fields.values() for d in seen.values() if d == "deny")
        access_log.count_alerts(record, read, denied)
    return durable
