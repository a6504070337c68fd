"""Alert windows shared through Redis (issue 21 item 6): reading 300 customers spread
over three instances raises one alert, once per window; a Redis that fails falls back to
the instance's own windows, logged and counted, never failing a request."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from demo.systems import DemoSystems
from gateway.audit.alerts import AlertSettings, AlertStoreMetrics, SharedAccessPatterns
from gateway.audit.log import AccessLog, AuditSettings
from gateway.audit.recorder import record_with_alerts
from gateway.audit.settings import DEFAULT_ALERT_PREFIX, parse_alerts, shared_redis
from gateway.audit.sinks import JsonlSink
from gateway.errors import ConfigError
from harness import RunningGateway, running_gateway

pytestmark = pytest.mark.redis

PAGE = """query Page($after: String) { customers(first: 100, after: $after) {
  edges { node { id name email } } pageInfo { endCursor } } }"""


def prefix() -> str:
    return f"c360-test-alerts:{uuid.uuid4().hex}:"


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
        overrides |= {"audit.alerts.url": redis_url, "audit.alerts.key_prefix": prefix()}
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
    settings = AlertSettings(denied_fields=100, window_s=1.0, url=redis_url, key_prefix=prefix())
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
            assert keys and not any("eve" in key for key in keys)  # subjects hashed
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
    alerts = AlertSettings(bulk_customers=2, url="redis://127.0.0.1:1/0", key_prefix=prefix())
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
    cache = shared_redis("redis://cache:6379/0", b"the cache key secret")
    limiter = shared_redis("redis://limits:6379/0", b"c360:rl:")
    assert parse_alerts({}, []) == AlertSettings()  # no Redis: this instance's memory
    chosen = parse_alerts({"bulk_customers": 50}, [cache, limiter])
    assert (chosen.url, chosen.key_prefix, chosen.bulk_customers) == (*cache, 50)
    assert cache[1].startswith(DEFAULT_ALERT_PREFIX) and cache[1] != limiter[1]
    assert "secret" not in cache[1]
    assert parse_alerts({"url": ""}, [cache]).url == ""  # memory, said explicitly
    explicit = parse_alerts({"url": "redis://elsewhere:6379/2"}, [cache])
    assert (explicit.url, explicit.key_prefix) == ("redis://elsewhere:6379/2", "c360-alerts:")
    with pytest.raises(ConfigError, match=r"audit\.alerts\.url"):
        parse_alerts({"url": "memcached://x"}, [])
