"""Alert windows shared through Redis (issue 21 item 6): reading 300 customers spread
over three instances raises one alert, once per window; a Redis that fails falls back to
the instance's own windows, logged and counted, never failing a request. Subjects are
named in Redis by a keyed hash; one task per instance talks to Redis, over one
connection, and a Redis that lags never holds a request or a shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from demo.systems import DemoSystems
from gateway.audit.alerts import Alert, AlertSettings, AlertStoreMetrics, SharedAccessPatterns
from gateway.audit.log import AccessLog, AuditSettings, _read_spill
from gateway.audit.recorder import record_with_alerts
from gateway.audit.settings import DEFAULT_ALERT_PREFIX, SharedRedis, parse_alerts
from gateway.audit.sinks import JsonlSink
from gateway.errors import ConfigError
from harness import RunningGateway, running_gateway

pytestmark = pytest.mark.redis

PAGE = """query Page($after: String) { customers(first: 100, after: $after) {
  edges { node { id name email } } pageInfo { endCursor } } }"""


SECRET = "the alert windows' key secret"


def prefix() -> str:
    return f"c360-test-alerts:{uuid.uuid4().hex}:"


def shared(redis_url: str, **more: Any) -> AlertSettings:
    return AlertSettings(url=redis_url, key_prefix=prefix(), key_secret=SECRET.encode(), **more)


async def alerts_in(gateway: RunningGateway) -> list[Mapping[str, Any]]:
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    return [r for _, r in sink.lines() if r is not None and r["kind"] == "alert"]


async def read_across(gateways: list[RunningGateway], subject: str) -> list[str]:
    """Three consecutive pages of 100, each through another instance."""
    after: str | None = None
    seen: list[str] = []
    for gateway in gateways:
        reply = await gateway.query(
            PAGE, {"after": after}, headers=gateway.as_role("service", subject=subject)
        )
        assert not reply.errors
        page = reply.data["customers"]
        seen += [edge["node"]["id"] for edge in page["edges"]]
        after = page["pageInfo"]["endCursor"]
    return seen


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "memory"])
async def test_300_customers_read_through_three_instances_raise_one_alert(
    demo_systems: DemoSystems, tmp_path: Path, redis_url: str, shared: bool
) -> None:
    overrides: dict[str, Any] = {"audit.alerts.bulk_customers": 250}
    if shared:
        overrides |= {
            "audit.alerts.url": redis_url,
            "audit.alerts.key_prefix": prefix(),
            "audit.alerts.key_secret": SECRET,
        }
    async with (
        running_gateway(demo_systems, tmp_path / "a", overrides) as one,
        running_gateway(demo_systems, tmp_path / "b", overrides) as two,
        running_gateway(demo_systems, tmp_path / "c", overrides) as three,
    ):
        seen = await read_across([one, two, three], "dave")
        assert len(set(seen)) == 300
        again = await read_across([three, one, two], "dave")  # the same window: no second
        assert again == seen
        alerts = [alert for g in (one, two, three) for alert in await alerts_in(g)]
        fallbacks = [g.gateway.access_log.patterns for g in (one, two, three)]
    if not shared:
        assert alerts == []  # each instance saw 100: what the shared windows are for
        return
    [alert] = alerts
    assert alert["alert"] == "bulk_access" and alert["subject"] == "dave"
    assert alert["distinct_customers"] == 300 and alert["threshold"] == 250
    assert all(getattr(p, "fallbacks", 0) == 0 for p in fallbacks)


async def test_denied_fields_add_up_across_instances_and_alert_once_per_window(
    redis_url: str,
) -> None:
    settings = shared(redis_url, denied_fields=100, window_s=1.0)
    trackers = [SharedAccessPatterns(settings) for _ in range(3)]
    try:
        answers = [await t.observe("eve", set(), 40) for t in trackers]
        assert answers[:2] == [[], []]
        assert answers[2] == [
            {"alert": "denied_burst", "denied_fields": 120, "threshold": 100, "window_s": 1.0}
        ]
        assert await trackers[0].observe("eve", set(), 40) == []  # alerted in this window
        assert await trackers[0].observe("mallory", set(), 40) == []  # per subject
        await asyncio.sleep(1.1)  # the window has passed: the denials and the alert expired
        assert await trackers[1].observe("eve", set(), 40) == []
        [again] = await trackers[2].observe("eve", set(), 70)
        assert again["denied_fields"] == 110
        raw = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k.decode() async for k in raw.scan_iter(settings.key_prefix + "*")]
            assert keys and not any("eve" in key for key in keys)  # subjects hashed ...
            unkeyed = hashlib.blake2b(b"eve", digest_size=16).hexdigest()
            assert not any(unkeyed in key for key in keys)  # ... by a keyed hash
            ttls = [await raw.pttl(key) for key in keys]
            assert all(0 < ttl <= 2000 for ttl in ttls)  # they expire
        finally:
            await raw.aclose()
    finally:
        for tracker in trackers:
            await tracker.close()


async def test_a_failing_redis_falls_back_to_the_instance_window_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = shared("redis://127.0.0.1:1/0", bulk_customers=2)
    access_log = AccessLog(
        AuditSettings(chain="t", spill_path=tmp_path / "spill.jsonl", alerts=alerts),
        JsonlSink(tmp_path / "access.jsonl"),
    )
    registry = CollectorRegistry()
    registry.register(AlertStoreMetrics(access_log.patterns))
    await access_log.start()
    with caplog.at_level(logging.WARNING, logger="c360.audit"):
        for customer in ("cus_1", "cus_2", "cus_3"):
            record = {
                "kind": "access",
                "ts": "2026-12-07T10:00:00.000Z",
                "subject": "frank",
                "fields": {customer: {"email": "allow"}},
            }
            assert record_with_alerts(access_log, record) is None  # never waits, never fails
        await access_log.flush()
    await access_log.stop()
    written = [r for _, r in access_log.sink.lines() if r]  # type: ignore[attr-defined]
    assert [r["kind"] for r in written] == ["access", "access", "access", "alert"]
    assert written[-1]["distinct_customers"] == 3
    assert "alert window store unavailable" in caplog.text
    assert b"c360_alert_store_fallbacks_total 3.0" in generate_latest(registry)


def test_the_alert_windows_go_to_the_redis_the_gateway_already_shares() -> None:
    cache = SharedRedis("redis://cache:6379/0", b"the cache key secret")
    limiter = SharedRedis("redis://limits:6379/0")
    assert parse_alerts({}, []) == AlertSettings()  # no Redis: this instance's memory
    chosen = parse_alerts({"bulk_customers": 50}, [cache, limiter])
    assert (chosen.url, chosen.key_secret, chosen.bulk_customers) == (cache.url, cache.secret, 50)
    assert chosen.key_prefix == DEFAULT_ALERT_PREFIX
    assert "secret" not in repr(chosen)
    assert parse_alerts({"url": ""}, [cache]).url == ""  # memory, said explicitly
    explicit = parse_alerts({"url": "redis://elsewhere:6379/2"}, [cache])
    assert (explicit.url, explicit.key_secret) == ("redis://elsewhere:6379/2", cache.secret)
    with pytest.raises(ConfigError, match=r"audit\.alerts\.url"):
        parse_alerts({"url": "memcached://x"}, [])
    # The rate limiter's Redis names its keys with no secret: used only with one of its own.
    unshared = parse_alerts({}, [limiter])
    assert unshared.url == "" and "key_secret" in (unshared.unshared or "")  # said at start
    own = parse_alerts({"key_secret": SECRET}, [limiter])
    assert (own.url, own.key_secret, own.unshared) == (limiter.url, SECRET.encode(), None)
    assert chosen.unshared is None and parse_alerts({"url": ""}, [cache]).unshared is None
    with pytest.raises(ConfigError, match=r"audit\.alerts\.key_secret: a secret of at least 16"):
        parse_alerts({"key_secret": "short"}, [cache])


def test_an_explicit_url_without_a_secret_to_name_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"audit\.alerts\.key_secret: required with"):
        parse_alerts({"url": "redis://elsewhere:6379/2"}, [SharedRedis("redis://l:6379/0")])


def test_the_key_prefix_stays_when_the_cache_secret_rotates() -> None:
    """The namespace does not follow a secret: ops can ACL `~c360-alerts:*`, and
    deployments on one Redis differ by the keyed hash (or an explicit key_prefix)."""
    cache = SharedRedis("redis://cache:6379/0", b"the cache key secret")
    before = parse_alerts({}, [cache])
    after = parse_alerts({}, [SharedRedis(cache.url, b"the next cache secret")])
    assert before.key_prefix == after.key_prefix == "c360-alerts:"
    one, other = SharedAccessPatterns(before), SharedAccessPatterns(after)
    assert one.keys("eve")[0].startswith("c360-alerts:{")
    assert one.keys("eve") != other.keys("eve")  # another secret: another deployment
    assert parse_alerts({"key_prefix": "c360-alerts:eu:"}, [cache]).key_prefix == "c360-alerts:eu:"


async def test_requests_reach_redis_through_one_task_and_one_connection(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many requests at once: one pipeline at a time over one connection (the pool is
    bounded besides), no random bytes read per request, the answers as one at a time."""
    name = f"c360-test-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(redis_url, client_name=name)
    tracker = SharedAccessPatterns(shared(redis_url, bulk_customers=150), client)
    assert SharedAccessPatterns(shared(redis_url)).client.connection_pool.max_connections == 8

    def no_urandom(*_: Any) -> str:
        raise AssertionError("a token per request read from os.urandom")

    monkeypatch.setattr(secrets, "token_hex", no_urandom)
    found: list[list[Alert]] = []
    try:
        for n in range(200):
            tracker.submit("dave", {f"cus_{n}"}, 0, found.append)
        await tracker.settled()
        raw = aioredis.Redis.from_url(redis_url)
        try:
            clients = [c for c in await raw.client_list() if c.get("name") == name]
        finally:
            await raw.aclose()
        assert len(clients) == 1
    finally:
        await tracker.close()
    assert len(found) == 200 and tracker.fallbacks == 0
    [alert] = [alert for alerts in found for alert in alerts]  # the 151st customer's request
    assert alert["distinct_customers"] == 151


async def test_a_full_queue_counts_the_request_in_memory(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SharedAccessPatterns, "QUEUE_SIZE", 2)
    tracker = SharedAccessPatterns(shared(redis_url, bulk_customers=3))
    found: list[list[Alert]] = []
    try:
        for n in range(5):  # no await between: the queue takes two, memory the rest
            tracker.submit("erin", {f"cus_{n}"}, 0, found.append)
        assert tracker.fallbacks == 3 and len(found) == 3
        await tracker.settled()
    finally:
        await tracker.close()
    assert tracker.fallbacks == 3 and len(found) == 5


async def test_stopping_counts_what_redis_has_not_answered_before_the_writer_stops(
    tmp_path: Path,
) -> None:
    """A Redis that takes requests and never answers: stop() does not wait for it past
    its time, and what it held is counted in memory, its alert recorded with the rest."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    alerts = shared(f"redis://127.0.0.1:{port}/0", bulk_customers=2)
    client = aioredis.Redis.from_url(alerts.url)  # no socket timeout: it would wait on
    access_log = AccessLog(
        AuditSettings(chain="t", spill_path=tmp_path / "spill.jsonl", alerts=alerts),
        JsonlSink(tmp_path / "access.jsonl"),
    )
    access_log.patterns = SharedAccessPatterns(alerts, client)
    await access_log.start()
    try:
        for customer in ("cus_1", "cus_2", "cus_3"):
            record = {
                "kind": "access",
                "ts": "2026-12-07T10:00:00.000Z",
                "subject": "grace",
                "fields": {customer: {"email": "allow"}},
            }
            record_with_alerts(access_log, record)
        await asyncio.sleep(0.05)  # the consumer has sent them and waits for Redis
        async with asyncio.timeout(5):
            await access_log.stop(timeout_s=0.1)
        spill = access_log.settings.spill_path
        written = [r for _, r in access_log.sink.lines() if r]  # type: ignore[attr-defined]
        written += _read_spill(spill, 0, access_log.codec)[0]
        assert [r["kind"] for r in written].count("alert") == 1
        pending = [t for t in asyncio.all_tasks() if t.get_name() == "c360-alert-windows"]
        assert not pending
    finally:
        server.close()


async def test_windows_kept_per_instance_for_want_of_a_secret_are_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The rate limiter's Redis without a secret: alerts across instances are missed, and
    the gateway says so once at start rather than silently."""
    alerts = parse_alerts({}, [SharedRedis("redis://limits:6379/0")])
    access_log = AccessLog(
        AuditSettings(chain="t", spill_path=tmp_path / "spill.jsonl", alerts=alerts),
        JsonlSink(tmp_path / "access.jsonl"),
    )
    with caplog.at_level(logging.WARNING, logger="c360.audit"):
        await access_log.start()
    await access_log.stop()
    said = [r.getMessage() for r in caplog.records if "per instance" in r.getMessage()]
    assert len(said) == 1 and "audit.alerts.key_secret" in said[0]
