"""`[audit]`: which sink, the chain's name, spill file, fail-closed, alert thresholds and
where their windows are kept, checkpoints (key, directories, interval), retention and
encryption at rest."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit.alerts import AlertSettings
from gateway.audit.checkpoint import CheckpointSettings, parse_keys
from gateway.audit.encryption import EncryptionSettings, LineCodec
from gateway.audit.log import AuditSettings
from gateway.audit.sinks import AccessSink, JsonlSink, PostgresSink
from gateway.errors import ConfigError

KEYS = {
    "sink",
    "path",
    "max_bytes",
    "fsync_interval_ms",
    "dsn",
    "chain",
    "spill_path",
    "fail_closed",
    "queue_size",
    "write_timeout_ms",
    "alerts",
    "checkpoint_key",
    "checkpoint_dir",
    "witness_dir",
    "checkpoint_every",
    "retention_days",
    "encrypt",
    "encryption_key_dir",
}
ALERT_KEYS = {"bulk_customers", "denied_fields", "window_s", "url", "key_prefix", "key_secret"}
DEFAULT_ALERT_PREFIX = AlertSettings().key_prefix


@dataclass(frozen=True, slots=True)
class SharedRedis:
    """A Redis the gateway already uses (its cache's, its rate limiter's), where the alert
    windows go by default, and the secret that use names its keys with, if any (the
    cache's key secret)."""

    url: str
    secret: bytes = field(default=b"", repr=False)


def parse_audit(
    table: Mapping[str, Any],
    base_dir: Path | None,
    redis: Sequence[SharedRedis] = (),
) -> tuple[AuditSettings, AccessSink]:
    """`redis`: the Redis the gateway already uses, if any, first choice first, where the
    alert windows go unless `[audit.alerts] url` says."""
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ConfigError(f"audit.{unknown[0]}: unknown key")
    base = base_dir or Path.cwd()

    def path(key: str, default: str) -> Path:
        value = table.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"audit.{key}: a file path")
        return (base / value).resolve()

    fail_closed = table.get("fail_closed", False)
    if not isinstance(fail_closed, bool):
        raise ConfigError("audit.fail_closed: true or false")
    encryption = parse_encryption(table, base)
    kind = table.get("sink", "jsonl")
    sink: AccessSink
    if kind == "jsonl":
        max_bytes = table.get("max_bytes", 64 * 1024 * 1024)
        if not isinstance(max_bytes, int) or max_bytes < 4096:
            raise ConfigError("audit.max_bytes: an integer >= 4096")
        interval_ms = table.get("fsync_interval_ms", 100)
        if not isinstance(interval_ms, int) or not 0 <= interval_ms <= 10_000:
            raise ConfigError("audit.fsync_interval_ms: an integer from 0 to 10000")
        # fail_closed answers only once a record is durable: every batch is fsynced.
        sink = JsonlSink(
            path("path", "access.jsonl"),
            max_bytes,
            sync_interval_s=0.0 if fail_closed else interval_ms / 1000,
            codec=LineCodec.of(encryption),
        )
    elif kind == "postgresql":
        dsn = table.get("dsn")
        if not isinstance(dsn, str) or not dsn.startswith("postgresql"):
            raise ConfigError("audit.dsn: a postgresql+asyncpg:// DSN")
        sink = PostgresSink(dsn)
    else:
        raise ConfigError("audit.sink: jsonl or postgresql")
    chain = table.get("chain", socket.gethostname())
    if not isinstance(chain, str) or not chain or len(chain) > 128:
        raise ConfigError("audit.chain: a name of 1-128 characters")
    write_timeout_ms = table.get("write_timeout_ms", 1000)
    if type(write_timeout_ms) is not int or not 10 <= write_timeout_ms <= 60_000:
        raise ConfigError("audit.write_timeout_ms: an integer from 10 to 60000")
    if fail_closed and write_timeout_ms >= AuditSettings.durable_timeout_s * 1000:
        # A request waits this long for its record; the spill must come first.
        raise ConfigError("audit.write_timeout_ms: below 2000 with fail_closed")
    queue_size = table.get("queue_size", 10_000)
    if not isinstance(queue_size, int) or queue_size < 1:
        raise ConfigError("audit.queue_size: a positive integer")
    alert_settings = parse_alerts(table.get("alerts", {}), redis)
    retention_days = table.get("retention_days", 0)
    if type(retention_days) is not int or retention_days < 0:
        raise ConfigError("audit.retention_days: days to keep records (0: forever)")
    settings = AuditSettings(
        chain=chain,
        spill_path=path("spill_path", f"access-spill-{chain}.jsonl"),
        fail_closed=fail_closed,
        queue_size=queue_size,
        write_timeout_s=write_timeout_ms / 1000,
        alerts=alert_settings,
        checkpoints=parse_checkpoints(table, base),
        retention_days=retention_days,
        encryption=encryption,
    )
    return settings, sink


def parse_alerts(alerts: Mapping[str, Any], redis: Sequence[SharedRedis]) -> AlertSettings:
    """`[audit.alerts]`: thresholds; `url` (redis://…, or "" for this instance's memory;
    default: the first Redis the gateway already uses, `redis`), `key_prefix` and
    `key_secret` (default: the cache's key secret). Subjects are named in Redis by a keyed
    hash, so the windows go to Redis only with a secret: an explicit `url` without one is
    refused; the default Redis without one (the rate limiter's alone) is not used."""
    unknown = sorted(set(alerts) - ALERT_KEYS)
    if unknown:
        raise ConfigError(f"audit.alerts.{unknown[0]}: unknown key")
    defaults = AlertSettings()
    try:
        bulk_customers = int(alerts.get("bulk_customers", defaults.bulk_customers))
        denied_fields = int(alerts.get("denied_fields", defaults.denied_fields))
        window_s = float(alerts.get("window_s", defaults.window_s))
    except (TypeError, ValueError) as error:
        raise ConfigError("audit.alerts: numbers") from error
    secret_text = alerts.get("key_secret", "")
    if not isinstance(secret_text, str) or (secret_text and len(secret_text.encode()) < 16):
        raise ConfigError("audit.alerts.key_secret: a secret of at least 16 bytes")
    secret = secret_text.encode() or next((r.secret for r in redis if r.secret), b"")
    unshared: str | None = None
    url = alerts.get("url", redis[0].url if redis else "")
    if not isinstance(url, str) or (url and not url.startswith(("redis://", "rediss://"))):
        raise ConfigError("audit.alerts.url: empty (this instance's memory) or a redis:// URL")
    if url and not secret:
        if "url" in alerts:
            raise ConfigError(
                "audit.alerts.key_secret: required with audit.alerts.url (at least 16 bytes; "
                "subjects are named in Redis by a keyed hash), or a Redis cache's key_secret"
            )
        url = ""  # the rate limiter's Redis alone offers no secret: this instance's memory
        unshared = (
            "the instances share a Redis (the rate limiter's) but no secret to name subjects "
            "with: set audit.alerts.key_secret to count alert windows across instances"
        )
    prefix = alerts.get("key_prefix", DEFAULT_ALERT_PREFIX)
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError("audit.alerts.key_prefix: a non-empty string")
    return AlertSettings(
        bulk_customers, denied_fields, window_s, url, prefix, secret if url else b"", unshared
    )


def parse_encryption(table: Mapping[str, Any], base: Path) -> EncryptionSettings | None:
    """`encrypt` (seal new lines of the JSONL log and the spill file) and
    `encryption_key_dir` (default `access-keys`: the keys, made on first use; needed to
    read a sealed log, so it may be set with `encrypt = false`)."""
    encrypt = table.get("encrypt", False)
    if not isinstance(encrypt, bool):
        raise ConfigError("audit.encrypt: true or false")
    if not encrypt and "encryption_key_dir" not in table:
        return None
    directory = table.get("encryption_key_dir", "access-keys")
    if not isinstance(directory, str) or not directory:
        raise ConfigError("audit.encryption_key_dir: a directory")
    return EncryptionSettings((base / directory).resolve(), encrypt)


def parse_checkpoints(table: Mapping[str, Any], base: Path) -> CheckpointSettings | None:
    """`checkpoint_key` (required for the rest), `checkpoint_dir` (default `checkpoints`),
    `witness_dir`, `checkpoint_every` (records; 0: the gateway writes none)."""
    if "checkpoint_key" not in table:
        for key in ("checkpoint_dir", "witness_dir", "checkpoint_every"):
            if key in table:
                raise ConfigError(f"audit.{key}: needs audit.checkpoint_key")
        return None
    keys = parse_keys(table["checkpoint_key"], base)

    def directory(key: str, default: str | None) -> Path | None:
        value = table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"audit.{key}: a directory")
        return (base / value).resolve()

    every = table.get("checkpoint_every", 0)
    if type(every) is not int or every < 0:
        raise ConfigError("audit.checkpoint_every: records between checkpoints (0: none)")
    checkpoint_dir = directory("checkpoint_dir", "checkpoints")
    assert checkpoint_dir is not None
    witness = directory("witness_dir", None)
    if witness == checkpoint_dir:
        raise ConfigError("audit.witness_dir: a directory other than checkpoint_dir")
    return CheckpointSettings(keys, checkpoint_dir, witness, every)
