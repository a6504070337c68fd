"""Rate limiting per principal: the token bucket in memory, and shared through Redis."""

from __future__ import annotations

import logging
import uuid

import pytest
import redis.asyncio as aioredis

from gateway.errors import ConfigError
from gateway.ratelimit import (
    MemoryRateLimiter,
    RateLimitSettings,
    RedisRateLimiter,
    build_rate_limiter,
    retry_after,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_burst_then_one_token_per_interval() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(RateLimitSettings(rate_per_s=2.0, burst=3), clock)

    assert [await limiter.take("alice") for _ in range(3)] == [None, None, None]
    assert await limiter.take("alice") == pytest.approx(0.5)  # one token every 0.5 s
    assert await limiter.take("bob") is None  # buckets are per subject

    clock.now += 0.25
    assert await limiter.take("alice") == pytest.approx(0.25)  # half a token so far
    clock.now += 0.25
    assert await limiter.take("alice") is None
    assert await limiter.take("alice") == pytest.approx(0.5)

    clock.now += 60  # refills up to the burst, never beyond
    assert [await limiter.take("alice") for _ in range(4)][-1] == pytest.approx(0.5)


async def test_memory_stays_bounded() -> None:
    clock = Clock()
    settings = RateLimitSettings(rate_per_s=1.0, burst=5)  # full again after 5 s idle
    limiter = MemoryRateLimiter(settings, clock, max_buckets=100)
    for i in range(50):
        await limiter.take(f"user{i}")
    assert len(limiter) == 50

    clock.now += 5.0  # everyone is full again: forgetting them changes nothing
    await limiter.take("late")
    assert len(limiter) == 1

    for i in range(250):  # more active subjects than the cap: the least recent go
        await limiter.take(f"busy{i}")
    assert len(limiter) == 100


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after(s) for s in (0.01, 0.5, 1.0, 1.2, 7.9)] == ["1", "1", "1", "2", "8"]


def test_settings_from_the_rate_limit_table() -> None:
    assert RateLimitSettings.parse({}) is None
    assert RateLimitSettings.parse({"enabled": False, "burst": 3}) is None
    assert RateLimitSettings.parse({"rate_per_s": 5, "burst": 10}) == RateLimitSettings(5.0, 10, "")
    for table, message in [
        ({"rate_per_s": 0}, "rate_limit.rate_per_s: expected a number > 0"),
        ({"burst": 0.5}, "rate_limit.burst: expected an integer >= 1"),
        ({"url": "http://x"}, "rate_limit.url: expected empty"),
        ({"rate": 3}, "rate_limit.rate: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            RateLimitSettings.parse(table)
    settings = RateLimitSettings(url="redis://127.0.0.1:6379/0")
    assert isinstance(build_rate_limiter(RateLimitSettings()), MemoryRateLimiter)
    assert isinstance(build_rate_limiter(settings), RedisRateLimiter)


@pytest.mark.redis
async def test_two_instances_share_one_bucket_in_redis(redis_url: str) -> None:
    settings = RateLimitSettings(
        rate_per_s=0.5, burst=3, url=redis_url, key_prefix=f"c360:test:{uuid.uuid4().hex}:"
    )
    one, two = RedisRateLimiter(settings), RedisRateLimiter(settings)
    try:
        assert await one.take("alice") is None
        assert await two.take("alice") is None
        assert await one.take("alice") is None
        wait = await two.take("alice")  # the shared bucket is empty, whichever instance asks
        assert wait is not None and 1.5 < wait <= 2.0
        assert await one.take("bob") is None

        raw = aioredis.Redis.from_url(redis_url)
        try:
            keys = [key.decode() async for key in raw.scan_iter(settings.key_prefix + "*")]
            assert len(keys) == 2 and not any("alice" in key for key in keys)
            assert 0 < await raw.pttl(keys[0]) <= 7000  # forgotten once full again (6 s)
        finally:
            await raw.aclose()
    finally:
        await one.close()
        await two.close()


async def test_a_redis_that_is_down_never_refuses_a_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    settings = RateLimitSettings(rate_per_s=1.0, burst=2, url="redis://127.0.0.1:1/0")
    limiter = RedisRateLimiter(settings, clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="c360.ratelimit"):
            assert await limiter.take("alice") is None  # served by the memory buckets
        assert "limiting in memory" in caplog.text
        assert await limiter.take("alice") is None
        assert await limiter.take("alice") == pytest.approx(1.0)  # still limited, locally
    finally:
        await limiter.close()
