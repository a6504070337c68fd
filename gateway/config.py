"""`c360.toml`: sources, graph bindings, identity, server (and later auth, cache, log).

Any key can be overridden from the environment: `C360_SOURCES__SALES__DSN=...` sets
`sources.sales.dsn` (segments joined by `__`, values parsed as TOML where they can be).
A broken configuration stops start-up with one message naming the key.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.admission import AdmissionSettings
from gateway.audit.log import AuditSettings
from gateway.audit.settings import SharedRedis, parse_audit
from gateway.audit.sinks import AccessSink
from gateway.auth import AuthConfig
from gateway.cache import CacheSettings, parse_cache_settings
from gateway.console.oidc import OIDCSettings
from gateway.documents import TrustedDocuments
from gateway.errors import ConfigError
from gateway.keys import KeyPolicy
from gateway.limits import QueryLimits
from gateway.ratelimit import RateLimitSettings
from gateway.resilience import ResilienceSettings
from gateway.tls import SERVER_TLS_KEYS

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]

ENV_PREFIX = "C360_"


# The longest a request's body may take to arrive (`server.body_timeout_s`; 408 after it):
# it is read before the request takes an admission place, so a slow sender holds none.
BODY_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    graphiql: bool = False
    introspection: bool = False  # off unless an environment wants it (the demo does)
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = BODY_TIMEOUT_S
    cors_origins: tuple[str, ...] = ()  # browsers on these origins may call /graphql
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    dsn: str
    key: bytes
    systems: tuple[str, ...]
    page_size: int = 500
    sync_on_start: bool = False
    quality_on_sync: bool = False  # a data-quality run after the start-up sync
    # How often a gateway looks for crosswalk changes other processes made (an erasure or a
    # restriction through another instance or worker, a sync): they hold here within it.
    watch_s: float = 2.0


@dataclass(frozen=True, slots=True)
class PoliciesConfig:
    file: Path | None  # None: the shipped policies/default.toml
    hash_key: bytes
    hash_key_id: str


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    identity: IdentityConfig
    auth: AuthConfig
    policies: PoliciesConfig
    cache: CacheSettings | None
    audit: AuditSettings
    audit_sink: AccessSink
    keys: KeyPolicy
    limits: QueryLimits
    rate_limit: RateLimitSettings | None
    resilience: ResilienceSettings
    documents: TrustedDocuments
    sources: Mapping[str, Mapping[str, Any]]
    # The graph declaration's files (a department may keep its own); empty: the demo's.
    graph_files: tuple[Path, ...] = ()
    # `[federation] subgraph = true`: also a Federation 2 subgraph (_service, _entities)
    federation_subgraph: bool = False
    # `[console.oidc]`: the console's sign-in through the organisation's OIDC provider
    console_oidc: OIDCSettings | None = None
    max_page_size: int = 100
    raw: Mapping[str, Any] = field(default_factory=dict)


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested tables, creating tables as needed."""
    *parents, last = dotted.split(".")
    table = data
    for part in parents:
        nxt = table.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a table")
        table = nxt
    table[last] = value


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    merged = copy.deepcopy(data)
    for name, text in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and "__" in name:
            path = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            set_path(merged, path, _env_value(text))
    return merged


class _Reader:
    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a table")
        self.data, self.path = data, path

    def get(self, key: str, kind: type, default: Any) -> Any:
        value = self.data.get(key, default)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{self.path}.{key}: expected an integer")
        if not isinstance(value, kind):
            raise ConfigError(f"{self.path}.{key}: expected {kind.__name__}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.path}.{key}: expected a number")
        return float(value)

    def table(self, key: str) -> _Reader:
        return _Reader(self.data.get(key, {}), f"{self.path}.{key}" if self.path else key)

    def only(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            where = f"{self.path}.{unknown[0]}" if self.path else unknown[0]
            raise ConfigError(f"{where}: unknown key")


def parse_config(data: Mapping[str, Any], base_dir: Path | None = None) -> Config:
    root = _Reader(data, "")
    root.only(
        {
            "server",
            "identity",
            "sources",
            "graph",
            "federation",
            "auth",
            "console",
            "policies",
            "cache",
            "audit",
            "keys",
            "limits",
            "rate_limit",
            "resilience",
            "documents",
        }
    )
    server = root.table("server")
    # tls_cert, tls_key, tls_client_ca: read by gateway/tls.py from the raw table
    server.only(
        {"host", "port", "graphiql", "introspection", "max_body_bytes", "body_timeout_s"}
        | {"cors_origins"}
        | {"max_in_flight", "max_queued", "queue_timeout_s"}
        | SERVER_TLS_KEYS
    )
    cors = server.get("cors_origins", list, [])
    if not all(isinstance(origin, str) and origin for origin in cors):
        raise ConfigError("server.cors_origins: a list of origins, e.g. https://crm.example.com")
    admission = AdmissionSettings(
        limit=server.get("max_in_flight", int, AdmissionSettings.limit),
        max_queued=server.get("max_queued", int, AdmissionSettings.max_queued),
        queue_timeout_s=server.number("queue_timeout_s", AdmissionSettings.queue_timeout_s),
    )
    if admission.limit < 0 or admission.max_queued < 0 or admission.queue_timeout_s <= 0:
        raise ConfigError(
            "server.max_in_flight, max_queued: 0 or more; server.queue_timeout_s: above 0"
        )
    body_timeout_s = server.number("body_timeout_s", BODY_TIMEOUT_S)
    if not 0 < body_timeout_s <= 3600:
        raise ConfigError("server.body_timeout_s: seconds, above 0 and at most 3600")
    port = server.get("port", int, 8000)
    if not 0 <= port <= 65535:
        raise ConfigError("server.port: must be between 0 and 65535")
    sources = root.table("sources")
    if not sources.data:
        raise ConfigError("sources: at least one department system must be configured")
    for name, table in sources.data.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"sources.{name}: expected a table")
    identity = root.table("identity")
    identity.only(
        {"dsn", "key", "systems", "page_size", "sync_on_start", "quality_on_sync", "watch_s"}
    )
    key = identity.get("key", str, "")
    if len(key.encode()) < 16:
        raise ConfigError("identity.key: required, at least 16 bytes (or set C360_IDENTITY__KEY)")
    systems = identity.get("systems", list, list(sources.data))
    for system in systems:
        if system not in sources.data:
            raise ConfigError(f"identity.systems: no source named '{system}'")
    watch_s = identity.number("watch_s", 2.0)
    if not 0 < watch_s <= 3600:
        raise ConfigError("identity.watch_s: a number of seconds, more than 0, at most 3600")
    dsn = identity.get("dsn", str, "sqlite+aiosqlite:///c360-identity.db")
    if (
        base_dir is not None
        and dsn.startswith("sqlite+aiosqlite:///")
        and not dsn.startswith("sqlite+aiosqlite:////")
    ):
        # Relative SQLite paths are relative to the config file, not to the cwd.
        dsn = "sqlite+aiosqlite:///" + str(base_dir / dsn.removeprefix("sqlite+aiosqlite:///"))
    if "auth" not in data:
        raise ConfigError("auth: required (issuer, audience and hs256, public_keys or jwks_url)")
    auth = AuthConfig.parse(root.table("auth").data)
    policies = root.table("policies")
    policies.only({"file", "hash_key", "hash_key_id"})
    policy_file = policies.get("file", str, "")
    hash_key = policies.get("hash_key", str, "")
    if len(hash_key.encode()) < 16:
        raise ConfigError("policies.hash_key: required, at least 16 bytes (the hash mask's key)")
    cache = parse_cache_settings(root.table("cache").data, sources.data)
    rate_limit = RateLimitSettings.parse(data["rate_limit"]) if "rate_limit" in data else None
    # The alert windows go to a Redis the instances already share (docs/access-log.md, "Alerts").
    redis: list[SharedRedis] = []
    if cache is not None and cache.shared:
        redis.append(SharedRedis(cache.url, cache.key_secret))
    if rate_limit is not None and rate_limit.url:
        redis.append(SharedRedis(rate_limit.url))
    audit, audit_sink = parse_audit(root.table("audit").data, base_dir, redis)
    graph = root.table("graph")
    for graph_key in graph.data:
        if graph_key not in ("file", "max_page_size"):
            raise ConfigError(
                f"graph.{graph_key}: fields and their systems are declared in the graph "
                'declaration (`[graph] file`, README "The graph declaration"), not in c360.toml'
            )
    graph_file = graph.data.get("file", [])
    names = [graph_file] if isinstance(graph_file, str) else graph_file
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError("graph.file: a file name, or a list of them")
    max_page_size = graph.get("max_page_size", int, 100)
    federation = root.table("federation")
    federation.only({"subgraph"})
    console = root.table("console")
    console.only({"oidc"})
    console_oidc = OIDCSettings.parse(console.data["oidc"]) if "oidc" in console.data else None
    if max_page_size < 1:
        raise ConfigError("graph.max_page_size: must be at least 1")
    return Config(
        server=ServerConfig(
            host=server.get("host", str, "127.0.0.1"),
            port=port,
            graphiql=server.get("graphiql", bool, False),
            introspection=server.get("introspection", bool, False),
            cors_origins=tuple(cors),
            max_body_bytes=server.get("max_body_bytes", int, 1_000_000),
            body_timeout_s=body_timeout_s,
            admission=admission,
        ),
        identity=IdentityConfig(
            dsn=dsn,
            key=key.encode(),
            systems=tuple(systems),
            page_size=identity.get("page_size", int, 500),
            sync_on_start=identity.get("sync_on_start", bool, False),
            quality_on_sync=identity.get("quality_on_sync", bool, False),
            watch_s=watch_s,
        ),
        auth=auth,
        cache=cache,
        audit=audit,
        audit_sink=audit_sink,
        keys=KeyPolicy.parse(root.table("keys").data),
        limits=QueryLimits.parse(root.table("limits").data),
        rate_limit=rate_limit,
        resilience=ResilienceSettings.parse(root.table("resilience").data),
        documents=TrustedDocuments.parse(root.table("documents").data, base_dir),
        policies=PoliciesConfig(
            file=(base_dir / policy_file if base_dir else Path(policy_file))
            if policy_file
            else None,
            hash_key=hash_key.encode(),
            hash_key_id=policies.get("hash_key_id", str, "k1"),
        ),
        sources=dict(sources.data),
        graph_files=tuple(base_dir / name if base_dir else Path(name) for name in names),
        max_page_size=max_page_size,
        federation_subgraph=federation.get("subgraph", bool, False),
        console_oidc=console_oidc,
        raw=data,
    )


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"config: no file at {path}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config: {path} is not valid TOML ({error})") from error
    data = apply_env(data, os.environ if environ is None else environ)
    return parse_config(data, base_dir=path.parent)
