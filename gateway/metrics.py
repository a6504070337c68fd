"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.admission import Admission

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "c360_requests", "GraphQL requests", ["outcome"], registry=self.registry
        )
        self.request_duration = Histogram(
            "c360_request_duration_seconds",
            "Time to answer a GraphQL request",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.source_requests = Counter(
            "c360_source_requests",
            "Calls to a department system",
            ["source"],
            registry=self.registry,
        )
        self.source_errors = Counter(
            "c360_source_errors",
            "Failed calls to a department system",
            ["source"],
            registry=self.registry,
        )
        self.source_duration = Histogram(
            "c360_source_duration_seconds",
            "Time a department system took to answer",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.cache_hits = Counter(
            "c360_cache_hits",
            "Keys served fresh from the cache",
            ["source"],
            registry=self.registry,
        )
        self.cache_misses = Counter(
            "c360_cache_misses", "Keys not fresh in the cache", ["source"], registry=self.registry
        )
        self.cache_stale = Counter(
            "c360_cache_stale_served",
            "Keys served past their TTL because the source failed",
            ["source"],
            registry=self.registry,
        )

        self.breaker_state = Gauge(
            "c360_source_circuit_state",
            "Circuit breaker per source: 0 closed, 1 half-open, 2 open",
            ["source"],
            registry=self.registry,
        )

        # Data quality (gateway/quality.py): the crosswalk's figures after every identity
        # sync; completeness and validity per declared field after a quality run.
        self.quality_completeness = Gauge(
            "c360_quality_completeness",
            "Share of a system's records with a non-empty value for a Customer field",
            ["system", "field"],
            registry=self.registry,
        )
        self.quality_validity = Gauge(
            "c360_quality_validity",
            "Share of a field's non-empty values that pass its check",
            ["system", "field"],
            registry=self.registry,
        )
        self.quality_duplicates = Gauge(
            "c360_quality_duplicates",
            "Records that are a second record of one person in one system",
            ["system"],
            registry=self.registry,
        )
        self.quality_conflicts = Gauge(
            "c360_quality_conflicts",
            "Records whose email and phone point at different customers",
            ["system"],
            registry=self.registry,
        )
        self.identity_match_rate = Gauge(
            "c360_identity_match_rate",
            "Share of a system's records linked to a customer another system knows too",
            ["system"],
            registry=self.registry,
        )

    def watch_admission(self, admission: Admission) -> None:
        """Requests executing and waiting at the admission gate, read when scraped."""
        executing = Gauge(
            "c360_requests_in_flight", "GraphQL requests executing", registry=self.registry
        )
        executing.set_function(lambda: admission.executing)
        queued = Gauge(
            "c360_requests_queued",
            "GraphQL requests waiting for a place to execute",
            registry=self.registry,
        )
        queued.set_function(lambda: admission.queued)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
