"""The record cache: hits and misses, partial batches, TTL, single flight, stale-if-error,
invalidation, and Redis (encrypted values, shared instances, Redis failing)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from demo.people import DemoWorld
from demo.systems import DemoSystems
from gateway.cache import CacheSettings, KeyMac, RecordStore, parse_cache_settings
from gateway.demo import to_toml
from gateway.invalidation import signed_headers
from harness import RunningGateway, SourceAdmin, gateway_config, running_gateway, unavailable

PAGE = "query($n: Int) { customers(first: $n) { edges { node { id name email tickets { id } } } } }"
TICKETS_ROUTE = "GET /api/v2/tickets"
TICKETS = "query($n: Int) { customers(first: $n) { edges { node { id tickets { id } } } } }"


def cached(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"cache.enabled": True, **(extra or {})}


class KeyCounter:
    """Wraps a connector's fetch to record the keys each call asked for."""

    def __init__(self, gateway: RunningGateway, source: str) -> None:
        self.calls: list[int] = []
        self.keys: list[str] = []
        connector = gateway.gateway.hub.connectors[source]
        original = connector.fetch

        async def fetch(entity: str, keys: Any) -> Any:
            self.calls.append(len(keys))
            self.keys.extend(keys)
            return await original(entity, keys)

        connector.fetch = fetch  # type: ignore[method-assign]


def hits(gateway: RunningGateway, source: str) -> float:
    value = gateway.gateway.metrics.registry.get_sample_value(
        "c360_cache_hits_total", {"source": source}
    )
    return value or 0.0


async def test_two_roles_over_a_warm_cache_each_see_their_own_view(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path, cached()) as gateway:
        query = "{ customers(first: 30) { edges { node { id email phone nationalId } } } }"
        as_sales = await gateway.query(query, headers=gateway.as_role("sales"))
        calls_after_warm = gateway.source_calls("sales")
        as_security = await gateway.query(query, headers=gateway.as_role("security"))
        assert gateway.source_calls("sales") == calls_after_warm  # served from the cache
    sales_nodes = [e["node"] for e in as_sales.data["customers"]["edges"]]
    security_nodes = [e["node"] for e in as_security.data["customers"]["edges"]]
    for seen_by_sales, seen_by_security in zip(sales_nodes, security_nodes, strict=True):
        assert "***" in seen_by_security["email"]
        assert seen_by_security["email"] != seen_by_sales["email"]
        assert "*" in seen_by_security["phone"]
    body = orjson.dumps(as_security.body).decode()
    assert not any(node["email"] in body for node in sales_nodes)


async def test_only_missing_keys_go_to_the_source(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path, cached()) as gateway:
        counter = KeyCounter(gateway, "service")
        await gateway.query(TICKETS, {"n": 90})
        before = hits(gateway, "service")
        await gateway.query(TICKETS, {"n": 100})
    requester_keys_in_first_100 = counter.calls[1]
    assert counter.calls[0] <= 90
    assert 0 < requester_keys_in_first_100 <= 10
    assert hits(gateway, "service") - before == counter.calls[0]


async def test_a_warm_page_makes_no_source_call(
    demo_systems: DemoSystems, tmp_path: Path, sources: SourceAdmin
) -> None:
    async with running_gateway(demo_systems, tmp_path, cached()) as gateway:
        await gateway.query(PAGE, {"n": 50})
        await sources.reset()
        sales = gateway.source_calls("sales")
        again = await gateway.query(PAGE, {"n": 50})
        assert not again.errors
        assert gateway.source_calls("sales") == sales
        assert await sources.calls("service", TICKETS_ROUTE) == 0


async def test_ttl_expiry_asks_again(demo_systems: DemoSystems, tmp_path: Path) -> None:
    async with running_gateway(demo_systems, tmp_path, cached()) as gateway:
        hub = gateway.gateway.hub
        now = [1_000_000.0]
        hub.clock = lambda: now[0]
        await gateway.query(PAGE, {"n": 5})
        calls = gateway.source_calls("sales")
        now[0] += 29  # sales: ttl_s = 30 in the demo config
        await gateway.query(PAGE, {"n": 5})
        assert gateway.source_calls("sales") == calls
        now[0] += 2
        await gateway.query(PAGE, {"n": 5})
        assert gateway.source_calls("sales") == calls + 1


async def test_concurrent_misses_make_one_call(
    demo_systems: DemoSystems, tmp_path: Path, sources: SourceAdmin
) -> None:
    async with running_gateway(demo_systems, tmp_path, cached()) as gateway:
        await sources.fault("service", "ok", latency_ms=150)
        await sources.fault("marketing", "ok", latency_ms=150)
        replies = await asyncio.gather(*(gateway.query(PAGE, {"n": 20}) for _ in range(25)))
        assert all(not reply.errors for reply in replies)
        assert await sources.calls("service", TICKETS_ROUTE) == 1
        assert gateway.source_calls("sales") == 1


async def test_overlapping_pages_wait_for_the_keys_in_flight_and_fetch_the_rest(
    demo_systems: DemoSystems, tmp_path: Path, sources: SourceAdmin
) -> None:
    """Single flight is per key: a page of 30 started while a page of 20 is in flight
    waits for those 20 and fetches the other 10 itself. When the shared lookup fails,
    both pages report it."""
    async with running_gateway(demo_systems, tmp_path, cached()) as gateway:
        await sources.fault("service", "ok", latency_ms=150)
        first = asyncio.ensure_future(gateway.query(PAGE, {"n": 20}))
        await asyncio.sleep(0.05)
        second = await gateway.query(PAGE, {"n": 30})
        assert not (await first).errors and not second.errors
        assert await sources.calls("service", TICKETS_ROUTE) == 2
        by_id = {e["node"]["id"]: e["node"] for e in (await first).data["customers"]["edges"]}
        overlap = [e["node"] for e in second.data["customers"]["edges"][:20]]
        assert overlap == [by_id[node["id"]] for node in overlap]

        await sources.fault("service", "error", latency_ms=150)
        replies = await asyncio.gather(
            gateway.query(PAGE, {"n": 40}), gateway.query(PAGE, {"n": 45})
        )
        for reply in replies:  # the 10 new keys each: nothing stale to serve
            assert "SOURCE_UNAVAILABLE" in str(reply.errors)


async def test_stale_if_error_serves_old_records_and_says_so(
    demo_systems: DemoSystems, tmp_path: Path, sources: SourceAdmin
) -> None:
    async with running_gateway(demo_systems, tmp_path, cached()) as gateway:
        hub = gateway.gateway.hub
        now = [2_000_000.0]
        hub.clock = lambda: now[0]
        fresh = await gateway.query(TICKETS, {"n": 10})
        await sources.fault("service", "error")
        now[0] += 60  # service: ttl 10 s, max-stale 300 s
        stale = await gateway.query(TICKETS, {"n": 10})
        now[0] += 300  # now past max-stale too
        gone = await gateway.query(TICKETS, {"n": 10})
    assert stale.data == fresh.data
    assert not stale.errors
    assert stale.body["extensions"]["stale"] == [
        {"source": "service", "entity": "tickets", "ageSeconds": 60.0}
    ]
    assert gone.codes() == ["SOURCE_UNAVAILABLE"]
    assert "stale" not in gone.body.get("extensions", {})


async def test_signed_invalidation_evicts_and_bad_signatures_are_refused(
    demo_systems: DemoSystems, tmp_path: Path, demo_world: DemoWorld
) -> None:
    async with running_gateway(demo_systems, tmp_path, cached()) as gateway:
        counter = KeyCounter(gateway, "sales")
        first = await gateway.query(PAGE, {"n": 10})
        ids = [e["node"]["id"] for e in first.data["customers"]["edges"]][:3]
        sales_keys = [gateway.gateway.identity.links(cuid)["sales"] for cuid in ids]
        secrets = gateway.gateway.config.cache.webhook_secrets  # type: ignore[union-attr]
        secret_id, secret = next(iter(secrets.items()))
        body = orjson.dumps({"source": "sales", "entity": "customer", "keys": sales_keys})

        async def post(headers: dict[str, str], data: bytes = body) -> tuple[int, Any]:
            async with gateway.http.post(
                gateway.url + "/cache/invalidate", data=data, headers=headers
            ) as response:
                return response.status, await response.json()

        assert (await post({"content-type": "application/json"}))[0] == 401
        wrong = signed_headers(secret_id, "x" * 40, body)
        assert (await post(wrong))[0] == 401
        old = signed_headers(secret_id, secret, body, now=1_000_000)
        assert (await post(old))[0] == 401
        tampered = signed_headers(secret_id, secret, body)
        assert (await post(tampered, body.replace(b"sales", b"sales ", 1)))[0] == 401
        status, answer = await post(signed_headers(secret_id, secret, body))
        assert status == 200
        assert answer == {"evicted": 3, "keys": 3}
        await gateway.query(PAGE, {"n": 10})
    assert counter.calls == [10, 3]  # after the eviction, only the evicted customers


async def test_cache_invalidate_command(demo_systems: DemoSystems, tmp_path: Path) -> None:
    data = gateway_config(demo_systems, tmp_path, cached())
    config_path = tmp_path / "c360.toml"
    config_path.write_text(to_toml(data), encoding="utf-8")
    async with running_gateway(demo_systems, tmp_path, cached()) as gateway:
        await gateway.query(PAGE, {"n": 3})
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "cache",
            "invalidate",
            "--config",
            str(config_path),
            "--url",
            gateway.url,
            "--source",
            "marketing",
            "--entity",
            "contact",
            "--key",
            "MC-000000",
            "--key",
            "MC-999999",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "evicted 0 of 2 keys"


# --- Redis -----------------------------------------------------------------------------


def redis_overrides(url: str, secret: str, keys: list[str] | None = None) -> dict[str, Any]:
    return cached(
        {
            "cache.url": url,
            "cache.key_secret": secret,
            "cache.encryption_keys": keys or [Fernet.generate_key().decode()],
        }
    )


@pytest.fixture
def isolated_secret() -> str:
    """Each test gets its own key namespace in the shared Redis (keys are HMACs of it)."""
    return "test-" + uuid.uuid4().hex


async def redis_dump(url: str) -> dict[bytes, bytes]:
    client = aioredis.from_url(url)
    try:
        found: dict[bytes, bytes] = {}
        async for key in client.scan_iter(match="c360:*", count=1000):
            value = await client.get(key)
            if value is not None:
                found[key] = value
        return found
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_values_are_encrypted_and_keys_reveal_nothing(
    demo_systems: DemoSystems,
    demo_world: DemoWorld,
    tmp_path: Path,
    redis_url: str,
    isolated_secret: str,
) -> None:
    overrides = redis_overrides(redis_url, isolated_secret)
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        reply = await gateway.query(PAGE, {"n": 40})
    assert not reply.errors
    stored = await redis_dump(redis_url)
    assert len(stored) >= 40
    everything = b"\n".join(list(stored) + list(stored.values()))
    for person in demo_world.persons[:200]:
        assert person.email.encode() not in everything
        assert person.phone.encode() not in everything
        assert person.national_id.encode() not in everything
        segments = {segment for key in stored for segment in key.split(b":")}
        for sales_id in person.sales_ids:
            assert str(sales_id).encode() not in segments  # keys are HMACs, never ids
    for node in (e["node"] for e in reply.data["customers"]["edges"]):
        assert node["name"] is None or node["name"].encode() not in everything


@pytest.mark.redis
async def test_two_instances_share_redis_and_see_evictions(
    demo_systems: DemoSystems, tmp_path: Path, redis_url: str, isolated_secret: str
) -> None:
    overrides = redis_overrides(redis_url, isolated_secret)
    async with (
        running_gateway(demo_systems, tmp_path / "a", overrides) as first,
        running_gateway(demo_systems, tmp_path / "b", overrides) as second,
    ):
        warm = await first.query(PAGE, {"n": 10})
        before = second.source_calls("sales")
        shared = await second.query(PAGE, {"n": 10})
        assert shared.data == warm.data
        assert second.source_calls("sales") == before  # warmed by the other instance
        cuid = warm.data["customers"]["edges"][0]["node"]["id"]
        key = first.gateway.identity.links(cuid)["sales"]
        secrets = first.gateway.config.cache.webhook_secrets  # type: ignore[union-attr]
        secret_id, secret = next(iter(secrets.items()))
        body = orjson.dumps({"source": "sales", "entity": "customer", "keys": [key]})
        async with first.http.post(
            first.url + "/cache/invalidate",
            data=body,
            headers=signed_headers(secret_id, secret, body),
        ) as response:
            assert response.status == 200
        counter = KeyCounter(second, "sales")
        await second.query(PAGE, {"n": 10})
    assert counter.calls == [1]  # the eviction reached the second instance


@pytest.mark.redis
async def test_concurrent_instances_keep_the_stampede_bounded(
    demo_systems: DemoSystems,
    tmp_path: Path,
    redis_url: str,
    isolated_secret: str,
    sources: SourceAdmin,
) -> None:
    # Twenty pages at once in one process (both instances, the systems and the test) can
    # hold its event loop for longer than the 250 ms a cache operation is given; a claim
    # that times out is a cache outage, answered by calling the system directly, which is
    # not the case this test is about.
    overrides = {
        **redis_overrides(redis_url, isolated_secret),
        "cache.operation_timeout_ms": 5000,
    }
    async with (
        running_gateway(demo_systems, tmp_path / "a", overrides) as first,
        running_gateway(demo_systems, tmp_path / "b", overrides) as second,
    ):
        counters = [KeyCounter(first, "service"), KeyCounter(second, "service")]
        await sources.fault("service", "ok", latency_ms=200)
        replies = await asyncio.gather(
            *(gateway.query(TICKETS, {"n": 20}) for gateway in [first, second] * 10)
        )
    assert all(not reply.errors for reply in replies)
    fetched = [key for counter in counters for key in counter.keys]
    # Each key is fetched once across both instances (they may split the batch between
    # them when their claims interleave), and each instance makes at most one call.
    assert len(fetched) == len(set(fetched)) > 0
    assert all(len(counter.calls) <= 1 for counter in counters)
    assert await sources.calls("service", TICKETS_ROUTE) <= 2


@pytest.mark.redis
async def test_encryption_keys_rotate_without_a_flush(
    demo_systems: DemoSystems, tmp_path: Path, redis_url: str, isolated_secret: str
) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    async with running_gateway(
        demo_systems, tmp_path / "a", redis_overrides(redis_url, isolated_secret, [old_key])
    ) as before:
        await before.query(PAGE, {"n": 5})
    rotated = redis_overrides(redis_url, isolated_secret, [new_key, old_key])
    async with running_gateway(demo_systems, tmp_path / "b", rotated) as after:
        calls = after.source_calls("sales")
        await after.query(PAGE, {"n": 5})
        assert after.source_calls("sales") == calls  # old entries still read
        await after.query(PAGE, {"n": 8})  # three new customers, written with the new key
    values = list((await redis_dump(redis_url)).values())
    new_only, old_only = Fernet(new_key.encode()), Fernet(old_key.encode())
    readable_by_new = sum(1 for v in values if _decrypts(new_only, v))
    readable_by_old = sum(1 for v in values if _decrypts(old_only, v))
    assert readable_by_new >= 3
    assert readable_by_old >= 5


def _decrypts(fernet: Fernet, token: bytes) -> bool:
    try:
        fernet.decrypt(token)
    except Exception:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def private_redis(redis_url: str) -> AsyncIterator[str]:
    """A Redis of this test's own, so the test can stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed (a Redis of this test's own)")
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(10):
            while True:  # until it accepts connections
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                break
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


@pytest.mark.redis
async def test_a_redis_that_stops_degrades_to_the_sources(
    demo_systems: DemoSystems,
    tmp_path: Path,
    private_redis: str,
    isolated_secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = int(private_redis.rsplit(":", 1)[1].split("/")[0])
    async with running_gateway(
        demo_systems, tmp_path, redis_overrides(private_redis, isolated_secret)
    ) as gateway:
        warm = await gateway.query(PAGE, {"n": 5})
        calls = gateway.source_calls("sales")
        client = aioredis.from_url(private_redis)
        await client.shutdown(nosave=True)
        await client.aclose()
        with caplog.at_level("WARNING", logger="c360.cache"):
            after = await gateway.query(PAGE, {"n": 5})
    assert after.status == 200
    assert not after.errors
    assert after.data == warm.data
    assert gateway.source_calls("sales") == calls + 1
    assert any("cache unavailable" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConnectionRefusedError):  # it really was down
        socket.create_connection(("127.0.0.1", port), timeout=0.2)


# --- Key names -------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 16, 63, 64, 65, 200])
def test_key_mac_is_hmac_sha256(length: int) -> None:
    secret = bytes(range(256))[:length]
    mac = KeyMac(secret)
    for message in (b"", b"sales\x1fcustomer\x1f42", "客户".encode() * 40):
        assert mac.hexdigest(message) == hmac.new(secret, message, hashlib.sha256).hexdigest()


def test_cache_key_names_follow_the_secret_across_a_reload() -> None:
    def settings(secret: str) -> CacheSettings:
        parsed = parse_cache_settings({"enabled": True, "key_secret": secret}, {})
        assert parsed is not None
        return parsed

    store = RecordStore(settings("first-secret-0123"))
    before = store.cache_key("sales", "customer", "42")
    expected = hmac.new(b"first-secret-0123", b"sales\x1fcustomer\x1f42", hashlib.sha256)
    assert before == "r:sales:customer:" + expected.hexdigest()[:40]
    store.rotate(settings("second-secret-0123"))
    after = store.cache_key("sales", "customer", "42")
    expected = hmac.new(b"second-secret-0123", b"sales\x1fcustomer\x1f42", hashlib.sha256)
    assert after == "r:sales:customer:" + expected.hexdigest()[:40]
