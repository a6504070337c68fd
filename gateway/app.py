"""`build_app(config)`: the one place where the gateway's parts are made and wired."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from strawberry.extensions import DisableIntrospection

from connectors.base import Connector, ConnectorConfigError, Writable
from connectors.http import HttpClient
from connectors.identity.index import IdentityIndex
from connectors.identity.keys import IdentityKeys
from connectors.identity.store import CrosswalkStore
from connectors.identity.sync import SyncReport, sync_identity
from connectors.registry import build_connector
from gateway.admission import Admission
from gateway.audit.alerts import AlertStoreMetrics
from gateway.audit.encryption import LineCodec
from gateway.audit.log import AccessLog
from gateway.audit.recorder import now_iso
from gateway.audit.sinks import AccessQuery
from gateway.auth import Authenticator
from gateway.cache import RecordStore
from gateway.config import Config, ConfigError, load_config
from gateway.console.oidc import ConsoleSignIn
from gateway.console.quality import QualityRuns
from gateway.console.reader import ConsoleReader
from gateway.console.routes import console_routes
from gateway.documents import DocumentStore, DocumentStoreError
from gateway.http.accounting import Accounting
from gateway.http.admission import AdmissionStage
from gateway.http.authn import Authentication
from gateway.http.body import BodyLimit
from gateway.http.execution import ExecutionRefusals
from gateway.http.pipeline import GraphQLEndpoint
from gateway.http.rate import RateLimit
from gateway.http.state import RequestState
from gateway.invalidation import InvalidationRefused, parse_request, verify
from gateway.limits import limit_extensions
from gateway.metrics import Metrics
from gateway.quality import (
    WORST,
    QualityReport,
    identity_figures,
    quality_report,
    show_identity,
    show_quality,
)
from gateway.ratelimit import build_rate_limiter
from gateway.resilience import ResilienceSettings
from gateway.sources import SourceHub
from gateway.telemetry import (
    GraphQLSpanAttributes,
    Telemetry,
    TracingMiddleware,
    traceparent_headers,
)
from gateway.view import GraphQLView
from policies.engine import StaticDecisions
from policies.masks import masks_with_hash
from policies.rules import (
    PolicyFileError,
    PolicySet,
    load_default_policy,
    load_policy_file,
    validate_against,
)
from resolvers.audit import AuditQuery
from resolvers.bindings import BindingError, check_bindings
from resolvers.context import GraphContext
from resolvers.declaration import DeclarationError
from resolvers.graphs import load_graph
from resolvers.guard import FieldGuard
from resolvers.loading import record_facts
from resolvers.schema import build_schema, schema_policies
from resolvers.types import Graph
from resolvers.writes import IdempotentWrites

log = logging.getLogger("c360.app")

# Keys of a `[sources.X]` table that the gateway reads; the rest belongs to the connector.
GATEWAY_SOURCE_KEYS = {"required", "cache", "resilience"}


def connector_settings(table: Mapping[str, Any]) -> dict[str, Any]:
    """A source's table without the gateway's own keys: what its connector is built from."""
    return {key: value for key, value in table.items() if key not in GATEWAY_SOURCE_KEYS}


@dataclasses.dataclass(frozen=True)
class Served:
    """A graph and the schema it is served through: swapped together on reload, and taken
    together by each request when its context is made."""

    graph: Graph
    schema: Any


def graph_of(config: Config) -> Graph:
    """The built graph the config declares (the demo's when it names none)."""
    from demo import GRAPH_FILE

    return load_graph(*(config.graph_files or (GRAPH_FILE,)), federation=config.federation_subgraph)


class AuditReaderAdapter(ConsoleReader):
    """The access-log sink as the `accessLog` resolver and the console's queries read it
    (and the access log, for the records a reviewer's actions add)."""

    async def search(self, query: AuditQuery) -> list[Mapping[str, Any]]:
        return list(await self.sink.search(AccessQuery(**dataclasses.asdict(query))))


class Gateway:
    """The long-lived parts of one gateway instance."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path  # re-read on SIGHUP, for keys and policies
        self.telemetry = telemetry or Telemetry()
        self.metrics = Metrics()
        try:
            connectors: dict[str, Connector] = {
                name: build_connector(name, connector_settings(table))
                for name, table in config.sources.items()
            }
            graph = graph_of(config)
            check_bindings(
                graph.declaration,
                {n: c.entities() for n, c in connectors.items()},
                {n: c.actions() if isinstance(c, Writable) else {} for n, c in connectors.items()},
            )
        except (ConnectorConfigError, BindingError, DeclarationError) as error:
            raise ConfigError(str(error)) from error
        self.required = {
            name for name, table in config.sources.items() if table.get("required", True)
        }
        for connector in connectors.values():
            client = getattr(connector, "client", None)
            if isinstance(client, HttpClient):
                client.header_hook = traceparent_headers  # W3C trace context to the systems
        resilience = {
            name: ResilienceSettings.parse(
                table.get("resilience", {}),
                base=config.resilience,
                path=f"sources.{name}.resilience",
            )
            for name, table in config.sources.items()
        }
        store = RecordStore(config.cache) if config.cache is not None else None
        self.hub = SourceHub(
            connectors,
            self.metrics,
            store,
            resilience=resilience,
            meters=self.telemetry.meters,
        )
        self.rate_limiter = build_rate_limiter(config.rate_limit) if config.rate_limit else None
        self.admission = Admission(config.server.admission)
        self.metrics.watch_admission(self.admission)
        documents = config.documents
        try:
            self.documents = (
                DocumentStore.load(documents.file, documents.apq_cache_size)
                if documents.file
                else DocumentStore(apq_cache_size=documents.apq_cache_size)
            )
        except DocumentStoreError as error:
            raise ConfigError(f"documents.file: {error}") from error
        self.keys = IdentityKeys(config.identity.key)
        self.store = CrosswalkStore(config.identity.dsn)
        self.identity = IdentityIndex.build([], self.keys)
        self.idempotent_writes = IdempotentWrites()
        # Changes to who is linked or restricted, each with the reload that follows it.
        self.identity_lock = asyncio.Lock()
        self.identity_refresh: asyncio.Task[None] | None = None
        self.identity_epoch = 0  # the crosswalk's change number the index was read at
        self.started = False  # start() ran (c360 serve runs it before the server's lifespan)
        self.identity_watch: asyncio.Task[None] | None = None
        self.served = self.serve(graph)
        self.authenticator = Authenticator(config.auth)
        try:
            self.masks = masks_with_hash(config.policies.hash_key, config.policies.hash_key_id)
        except ValueError as error:
            raise ConfigError(f"policies.hash_key_id: {error}") from error
        self.policies = self.load_policies()
        self.decisions = StaticDecisions(self.policies)
        self.access_log = AccessLog(config.audit, config.audit_sink)
        self.metrics.registry.register(AlertStoreMetrics(self.access_log.patterns))
        # The console's OIDC sign-in and its sessions (this instance's, in memory)
        self.console_sign_in = (
            ConsoleSignIn(
                config.console_oidc, lambda record: self.access_log.record(record, awaited=False)
            )
            if config.console_oidc is not None
            else None
        )
        # Every data-quality run of this gateway (quality_on_sync's, the console's, a
        # caller's), one at a time, and the last one's report for the console's page.
        self.quality_runs = QualityRuns(self.store, self._measure_quality)

    def serve(self, graph: Graph) -> Served:
        """A graph with the schema the gateway serves it through."""
        config = self.config
        schema = build_schema(
            graph,
            extensions=[
                *limit_extensions(config.limits, page_size_cap=config.max_page_size),
                *([GraphQLSpanAttributes] if self.telemetry.tracer_provider is not None else []),
                *([] if config.server.introspection else [DisableIntrospection]),
            ],
            max_batch=config.limits.max_batch,
        )
        return Served(graph, schema)

    @property
    def graph(self) -> Graph:
        return self.served.graph

    @property
    def schema(self) -> Any:
        return self.served.schema

    @property
    def bindings(self) -> Any:
        return self.served.graph.bindings

    def load_policies(self, config: Config | None = None, graph: Graph | None = None) -> PolicySet:
        """Read and check the policy file: every policy a field names must exist."""
        path = (config or self.config).policies.file
        try:
            policy_set = load_policy_file(path) if path else load_default_policy()
        except (PolicyFileError, OSError) as error:
            raise ConfigError(f"policies.file: {error}") from error
        coverage = validate_against(policy_set, schema_policies(graph or self.graph))
        if not coverage.ok:
            missing = ", ".join(coverage.missing)
            raise ConfigError(f"policies.file: policies used by the schema are missing: {missing}")
        return policy_set

    def reload_policies(self) -> bool:
        """Swap in the policy file as it is now; a broken file is refused and the old
        rules stay. Requests in flight keep the set they started with."""
        try:
            self.policies = self.load_policies()
        except ConfigError as error:
            log.error(
                "policy reload refused, keeping the previous rules", extra={"reason": str(error)}
            )
            return False
        log.warning("policy file reloaded", extra={"policies": len(self.policies.policies)})
        return True

    def reload(self) -> bool:
        """SIGHUP: the graph declaration, the policy file and every key of the config file,
        swapped at once. A request in flight keeps the graph, keys and rules it started
        with; a broken file (a declaration that does not check, a policy missing for a
        declared field) is refused and everything stays as it was. Other changes need a
        restart (logged)."""
        if self.config_path is None:
            return self.reload_policies()
        try:
            new = load_config(self.config_path)
            masks = masks_with_hash(new.policies.hash_key, new.policies.hash_key_id)
            graph = graph_of(new)
            check_bindings(
                graph.declaration,
                {n: c.entities() for n, c in self.hub.connectors.items()},
                {n: self.hub.actions(n) for n in self.hub.connectors},
            )
            policies = self.load_policies(new, graph)
        except (ConfigError, ValueError) as error:  # DeclarationError, BindingError too
            log.error("reload refused, keeping the running config", extra={"reason": str(error)})
            return False
        current = self.config
        # Checkpoint keys rotate like the others; the rest of [audit] needs a restart.
        audit = self.access_log.rotate_checkpoint_keys(current.audit, new.audit)
        needs_restart = [
            name
            for name in ("server", "identity", "sources", "max_page_size", "audit", "console_oidc")
            if getattr(new, name) != getattr(current, name) and not (name == "audit" and audit)
        ]
        cache = current.cache
        same_backend = cache is not None and new.cache is not None and new.cache.url == cache.url
        if self.hub.store is not None and new.cache is not None and same_backend:
            self.hub.store.rotate(new.cache)
            cache = new.cache
        elif new.cache != current.cache:
            needs_restart.append("cache.url")
        if needs_restart:
            log.warning("reload: restart to apply", extra={"sections": needs_restart})
        self.authenticator.rotate(new.auth)
        try:
            self.documents.reload()
        except DocumentStoreError as error:
            log.error("trusted documents not reloaded", extra={"reason": str(error)})
        self.masks = masks
        self.policies = policies
        self.config = dataclasses.replace(
            current,
            auth=new.auth,
            cache=cache,
            policies=new.policies,
            keys=new.keys,
            graph_files=new.graph_files,
            audit=new.audit if audit else current.audit,
        )
        if graph is not self.graph:  # the same declaration builds the same graph
            self.served = self.serve(graph)
            log.warning("graph declaration reloaded", extra={"fields": len(graph.field_names)})
        log.warning("keys and policies reloaded")
        self.reread_identity()
        return True

    def reread_identity(self) -> None:
        """On SIGHUP: read the crosswalk again now (in the background), rather than within
        `identity.watch_s` (`_follow_identity`)."""
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to refresh
            self.identity_refresh = asyncio.get_running_loop().create_task(self.reload_identity())

    async def start(self) -> None:
        """Open what the gateway serves from (the access log, the crosswalk) and start its
        background work. ConfigError for what the configuration makes impossible (a key
        file that does not load, a crosswalk store out of reach): `c360 serve` starts the
        gateway before it serves, so that is one line and an exit, not a traceback."""
        if self.started:
            return
        self.started = True
        await self.access_log.start()
        await open_crosswalk(self.store)
        if self.config.identity.sync_on_start:
            await self.sync()  # the crosswalk's gauges too
        await self.reload_identity()
        self.identity_watch = asyncio.create_task(
            self._follow_identity(self.config.identity.watch_s)
        )
        if not self.config.identity.sync_on_start:
            await self.observe_identity()
        elif self.config.identity.quality_on_sync:
            # In the background: a run reads every record; the gateway serves meanwhile.
            self.quality_runs.start()

    async def sync(self, *, full: bool = False) -> SyncReport:
        report = await sync_identity(
            self.store,
            [self.hub.connectors[name] for name in self.config.identity.systems],
            self.keys,
            page_size=self.config.identity.page_size,
            full=full,
        )
        await self.reload_identity()
        await self.observe_identity()
        return report

    async def observe_identity(self) -> None:
        """The crosswalk's own figures as gauges: match rate, duplicates, conflicts."""
        figures = identity_figures(
            self.identity.by_record, await self.store.issues(), self.config.identity.systems
        )
        show_identity(self.metrics, figures)

    async def quality(self, *, worst: int = WORST, record: bool = True) -> QualityReport:
        """A data-quality run (gateway/quality.py): every system's records read for the
        declared fields, the run stored for the trend (`record`), every gauge set. One at
        a time (`quality_runs`): asked while one runs, that run's report."""
        return await self.quality_runs.run(worst=worst, record=record)

    async def _measure_quality(self, *, worst: int = WORST, record: bool = True) -> QualityReport:
        report = await quality_report(
            self.store,
            self.hub.fetch,
            self.graph.declaration,
            {name: connector.entities() for name, connector in self.hub.connectors.items()},
            self.config.identity.systems,
            worst=worst,
            record=record,
        )
        show_quality(self.metrics, report)
        log.info("data-quality run finished", extra={"ran_at": report.ran_at, "stored": record})
        return report

    async def rekey(self, system: str, system_id: str, keys: Mapping[str, str]) -> None:
        """After a write changed a record's email or phone (normalised): the crosswalk's
        match keys follow, as the next sync would see them (a conflict reported)."""
        hashes = {kind: self.keys.match_hash(kind, value) for kind, value in keys.items()}
        async with self.identity_lock:
            changed = await self.store.rekey(
                system,
                system_id,
                email_hash=hashes.get("email"),
                phone_hash=hashes.get("phone"),
            )
            if changed is not None:
                self.identity = self.identity.rekeyed(*changed)

    async def restrict(self, cuid: str, restricted: bool) -> None:
        """A person restricted (or lifted the restriction of) the processing of their
        data: from the next request on, their fields are denied but for the policy file's
        `restriction_purposes`."""
        async with self.identity_lock:
            await self.store.restrict(cuid, restricted, now_iso())
            await self._load_identity()

    async def unlink(self, cuid: str) -> int:
        """An erasure: the customer's links go (tombstones stay), the index follows."""
        async with self.identity_lock:
            pairs = await self.store.unlink(cuid, now_iso())
            await self._load_identity()
        return len(pairs)

    async def reload_identity(self) -> None:
        async with self.identity_lock:
            await self._load_identity()

    async def _follow_identity(self, every_s: float) -> None:
        """Follow the crosswalk changes other processes make (an erasure or a restriction
        through another instance or worker, `c360 subject erase`, a sync): the store counts
        every change, and a change number other than the one the index was read at reads
        it again. A store that cannot be read is tried again on the next round."""
        failing = False
        while True:
            await asyncio.sleep(every_s)
            try:
                if await self.store.epoch() != self.identity_epoch:
                    await self.reload_identity()
            except Exception:
                if not failing:
                    log.warning("identity crosswalk unreadable; following it again later")
                failing = True
            else:
                failing = False

    async def _load_identity(self) -> None:
        """The index from the store. Callers hold `identity_lock`: a change and the reload
        that follows it are one step, so a slower reload never installs an index read
        before another change (an erasure's links back, a restriction lost). The change
        number is read first (a change made while the links are read is read again) and
        kept only once the index it stands for is in place: a read that fails leaves the
        old number, so the next round reads again."""
        epoch = await self.store.epoch()
        links, restricted = await self.store.links(), await self.store.restricted()
        # Built off the event loop: a large crosswalk takes a while, and requests go on.
        self.identity = await asyncio.to_thread(IdentityIndex.build, links, self.keys, restricted)
        self.identity_epoch = epoch
        log.info("identity crosswalk loaded", extra={"customers": len(self.identity)})

    async def stop(self) -> None:
        if self.identity_watch is not None:
            self.identity_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.identity_watch
        await self.quality_runs.stop()
        await self.hub.close()
        await self.store.close()
        await self.access_log.stop()
        if self.rate_limiter is not None:
            await self.rate_limiter.close()
        # Spans and metrics last, after the access log is flushed (a blocking export).
        await asyncio.to_thread(self.telemetry.shutdown)

    def context(self, state: RequestState, request: Request | None = None) -> GraphContext | None:
        """The resolvers' view of one request (`request`: its headers, when it came over
        HTTP); None without a principal."""
        principal = state.principal
        if principal is None:
            return None  # only the GraphiQL page is served without a principal
        if self.decisions.policy_set is not self.policies:  # reloaded
            self.decisions = StaticDecisions(self.policies)
        served = self.served  # this request's graph and schema, whatever a reload swaps in
        restricted = self.identity.restricted
        blocked = (
            restricted
            if restricted and principal.purpose not in self.policies.restriction_purposes
            else frozenset()
        )
        guard = FieldGuard(
            policies=self.policies,
            principal=principal,
            masks=self.masks,
            facts_of=functools.partial(record_facts, served.graph.bindings),
            decisions=self.decisions,
            blocked=blocked,
        )
        return GraphContext(
            sources=self.hub,
            identity=self.identity,
            bindings=served.graph.bindings,
            graph=served.graph,
            schema=served.schema,
            idempotent_writes=self.idempotent_writes,
            rekey=self.rekey,
            unlink=self.unlink,
            restrict=self.restrict,
            guard=guard,
            max_page_size=self.config.max_page_size,
            request=request,
            request_id=state.request_id,
            session=state.session,
            audit=AuditReaderAdapter(self.config.audit_sink, self.access_log, self.quality_runs),
        )


async def open_crosswalk(store: CrosswalkStore) -> None:
    """The crosswalk's tables, made if missing; ConfigError naming `identity.dsn` when the
    store cannot be reached or opened."""
    try:
        await store.create()
    except (SQLAlchemyError, OSError) as error:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        message = f"identity.dsn: the crosswalk store cannot be opened: {reason}"
        raise ConfigError(message) from error


async def preflight(config: Config) -> None:
    """What every worker's start would find wrong in the configuration, found once before
    `serve --workers` starts them (their lifespan failing is uvicorn's traceback, once per
    worker): the access log's key ring, the crosswalk store."""
    await asyncio.to_thread(LineCodec.of(config.audit.encryption).load_keys)
    store = CrosswalkStore(config.identity.dsn)
    try:
        await open_crosswalk(store)
    finally:
        await store.close()


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def build_app(config: Config, gateway: Gateway | None = None) -> Starlette:
    gw = gateway or Gateway(config)

    def observe(status: int, seconds: float) -> None:
        outcome = "ok" if status < 400 else "error"
        gw.metrics.request_duration.observe(seconds)
        gw.metrics.requests.labels(outcome).inc()
        gw.telemetry.meters.request(outcome, seconds)

    view = GraphQLView(
        gw.schema,
        graphql_ide="graphiql" if config.server.graphiql else None,
        context_factory=gw.context,
        limits=config.limits,
        documents=lambda: (gw.documents, gw.config.documents),
    )
    graphql = GraphQLEndpoint(
        view,
        body=BodyLimit(config.server.max_body_bytes, config.server.body_timeout_s),
        authentication=Authentication(
            gw.authenticator,
            session=gw.console_sign_in.principal if gw.console_sign_in is not None else None,
        ),
        rate_limit=RateLimit(gw.rate_limiter) if gw.rate_limiter is not None else None,
        admission=AdmissionStage(gw.admission),
        execution=ExecutionRefusals(config.resilience.request_deadline_s),
        accounting=Accounting(gw.access_log),
        observe=observe,
    )

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        health = await gw.hub.health()
        down = sorted(name for name, h in health.items() if not h.ok and name in gw.required)
        body = {
            "status": "unavailable" if down else "ready",
            "customers": len(gw.identity),
            "sources": {
                name: {
                    "ok": h.ok,
                    "required": name in gw.required,
                    "detail": h.detail,
                    "circuit": gw.hub.breakers[name].state,
                }
                for name, h in health.items()
            },
        }
        return _json(body, 503 if down else 200)

    async def invalidate(request: Request) -> Response:
        body = await request.body()
        try:
            cache = gw.config.cache  # read per request: its secrets rotate on SIGHUP
            if cache is None or not cache.webhook_secrets:
                raise InvalidationRefused("cache invalidation is not configured", 404)
            secret_id = verify(cache.webhook_secrets, request.headers, body)
            source, entity, keys = parse_request(body)
            connector = gw.hub.connectors.get(source)
            if connector is None or entity not in connector.entities():
                raise InvalidationRefused(f"unknown source or entity: {source}.{entity}", 404)
            try:
                evicted = await gw.hub.invalidate(source, entity, keys)
            except Exception as error:  # the cache backend failed
                raise InvalidationRefused(
                    "the cache is unavailable; nothing evicted", 503
                ) from error
        except InvalidationRefused as refused:
            return _json({"error": str(refused)}, refused.status)
        log.info(
            "cache invalidated",
            extra={"source": source, "entity": entity, "keys": len(keys), "by": secret_id},
        )
        return _json({"evicted": evicted, "keys": len(keys)})

    async def metrics(request: Request) -> Response:
        return Response(gw.metrics.exposition(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    middleware = []
    if config.server.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.server.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type", "x-purpose", "x-client-name"],
                expose_headers=["x-request-id"],
                max_age=600,
            )
        )
    if gw.telemetry.tracer_provider is not None:
        middleware.append(
            Middleware(TracingMiddleware, tracer_provider=gw.telemetry.tracer_provider)
        )
    app = Starlette(
        middleware=middleware,
        routes=[
            Route("/graphql", graphql),  # every method: the pipeline answers (and records) a 405
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/cache/invalidate", invalidate, methods=["POST"]),
            *console_routes(
                [f.name for f in gw.graph.declaration.root.fields if f.name != "id"],
                gw.console_sign_in,
            ),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app
