"""Per-source resilience: the breaker's cycle, retries with jittered backoff, the deadline."""

from __future__ import annotations

import asyncio

import pytest

from connectors.base import SourceUnavailable
from gateway.errors import ConfigError
from gateway.resilience import (
    CircuitBreaker,
    DeadlineExceeded,
    ResilienceSettings,
    call_with_resilience,
    remaining_s,
    request_deadline,
)

FAST = ResilienceSettings(retries=2, backoff_base_s=0.05, backoff_cap_s=0.5)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FlakySystem:
    """A fake department system call: fails while `down`, counts every call."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.calls = 0

    async def fetch(self) -> str:
        self.calls += 1
        if self.down:
            raise SourceUnavailable("service", f"HTTP 503 (call {self.calls})")
        return "records"


class Pauses:
    """Records the backoff pauses instead of sleeping."""

    def __init__(self) -> None:
        self.taken: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)


async def call(
    breaker: CircuitBreaker,
    system: FlakySystem,
    *,
    settings: ResilienceSettings = FAST,
    idempotent: bool = True,
    pauses: Pauses | None = None,
    rand: float = 0.5,
) -> str:
    return await call_with_resilience(
        breaker,
        settings,
        system.fetch,
        idempotent=idempotent,
        source="service",
        sleep=pauses or Pauses(),
        rand=lambda: rand,
    )


async def test_open_half_open_closed_cycle() -> None:
    clock = Clock()
    changes: list[str] = []
    breaker = CircuitBreaker(
        "service",
        failures=3,
        cooldown_s=10.0,
        clock=clock,
        on_change=lambda s, st: changes.append(st),
    )
    system = FlakySystem(down=True)
    no_retries = ResilienceSettings(retries=0)

    for _ in range(2):
        with pytest.raises(SourceUnavailable):
            await call(breaker, system, settings=no_retries)
    assert breaker.state == "closed"
    with pytest.raises(SourceUnavailable):
        await call(breaker, system, settings=no_retries)
    assert breaker.state == "open" and system.calls == 3

    # Open: refused without calling the system.
    with pytest.raises(SourceUnavailable, match="circuit open"):
        await call(breaker, system)
    assert system.calls == 3

    # After the cool-down, one trial; it fails: open again for a whole cool-down.
    clock.now += 10.0
    assert breaker.state == "half_open"
    with pytest.raises(SourceUnavailable, match="HTTP 503"):
        await call(breaker, system)  # retries are refused by the reopened circuit
    assert system.calls == 4 and breaker.state == "open"
    clock.now += 9.9
    assert breaker.state == "open"

    # The next trial succeeds: closed, and calls flow again.
    clock.now += 0.1
    system.down = False
    assert await call(breaker, system) == "records"
    assert breaker.state == "closed"
    assert await call(breaker, system) == "records"
    assert changes == ["open", "half_open", "open", "half_open", "closed"]


async def test_half_open_lets_exactly_one_trial_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker("service", failures=1, cooldown_s=1.0, clock=clock)
    breaker.failed(breaker.admit() or pytest.fail("closed circuits admit"))
    clock.now += 1.0

    trial = breaker.admit()
    assert trial is not None and trial.trial
    assert breaker.admit() is None  # concurrent calls wait for the trial's verdict
    breaker.abandoned(trial)  # e.g. the request was cancelled: no verdict
    second = breaker.admit()
    assert second is not None and second.trial
    breaker.succeeded(second)
    assert breaker.state == "closed"


async def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker("service", failures=2, clock=Clock())
    system = FlakySystem(down=True)
    no_retries = ResilienceSettings(retries=0)
    with pytest.raises(SourceUnavailable):
        await call(breaker, system, settings=no_retries)
    system.down = False
    await call(breaker, system, settings=no_retries)
    system.down = True
    with pytest.raises(SourceUnavailable):
        await call(breaker, system, settings=no_retries)
    assert breaker.state == "closed"


async def test_idempotent_reads_are_retried_with_backoff() -> None:
    breaker = CircuitBreaker("service", failures=100, clock=Clock())
    system = FlakySystem(down=True)
    pauses = Pauses()
    with pytest.raises(SourceUnavailable, match=r"call 3\)"):  # the last attempt's reason
        await call(breaker, system, pauses=pauses)
    assert system.calls == 3  # 1 + retries
    assert pauses.taken == [0.025, 0.05]  # rand 0.5 x min(0.5, 0.05 x 2^attempt)


async def test_a_retry_that_succeeds_returns_the_records() -> None:
    breaker = CircuitBreaker("service", clock=Clock())
    system = FlakySystem(down=True)

    async def recovering() -> str:
        try:
            return await system.fetch()
        finally:
            system.down = False  # the next attempt works

    result = await call_with_resilience(
        breaker, FAST, recovering, idempotent=True, source="service", sleep=Pauses()
    )
    assert result == "records" and system.calls == 2


async def test_writes_are_never_retried() -> None:
    breaker = CircuitBreaker("service", clock=Clock())
    system = FlakySystem(down=True)
    pauses = Pauses()
    with pytest.raises(SourceUnavailable):
        await call(breaker, system, idempotent=False, pauses=pauses)
    assert system.calls == 1 and pauses.taken == []


async def test_only_source_failures_are_retried() -> None:
    breaker = CircuitBreaker("service", failures=1, clock=Clock())
    calls = 0

    async def broken() -> str:
        nonlocal calls
        calls += 1
        raise KeyError("a bug of ours, not the system's")

    with pytest.raises(KeyError):
        await call_with_resilience(
            breaker, FAST, broken, idempotent=True, source="service", sleep=Pauses()
        )
    assert calls == 1 and breaker.state == "closed"  # and the system is not blamed


@pytest.mark.parametrize("attempt", range(6))
def test_full_jitter_stays_within_its_bounds(attempt: int) -> None:
    ceiling = min(0.5, 0.05 * 2**attempt)
    assert FAST.backoff_s(attempt, lambda: 0.0) == 0.0
    assert FAST.backoff_s(attempt, lambda: 0.999999) == pytest.approx(ceiling, rel=1e-5)
    samples = [FAST.backoff_s(attempt) for _ in range(200)]
    assert all(0.0 <= s < ceiling for s in samples)
    assert max(samples) - min(samples) > ceiling / 4  # jittered, not a constant


async def test_a_deadline_ends_source_calls_with_source_unavailable() -> None:
    breaker = CircuitBreaker("service", failures=1)

    async def hangs() -> str:
        await asyncio.sleep(10)
        return "never"

    async with request_deadline(0.05):
        remaining = remaining_s()
        assert remaining is not None and 0 < remaining <= 0.05
        with pytest.raises(SourceUnavailable, match="deadline"):
            await call_with_resilience(breaker, FAST, hangs, idempotent=True, source="service")
    assert remaining_s() is None
    assert breaker.state == "closed"  # running out of request time is not the system's fault


async def test_no_retry_is_started_past_the_deadline() -> None:
    breaker = CircuitBreaker("service", failures=100)
    system = FlakySystem(down=True)
    slow = ResilienceSettings(retries=5, backoff_base_s=1.0, backoff_cap_s=1.0)
    async with request_deadline(0.5):
        with pytest.raises(SourceUnavailable, match="HTTP 503"):
            await call_with_resilience(
                breaker, slow, system.fetch, idempotent=True, source="service", rand=lambda: 0.9
            )
    assert system.calls == 1


async def test_a_request_past_its_deadline_and_grace_is_cut_short() -> None:
    with pytest.raises(DeadlineExceeded, match=r"within 0\.05 s"):
        async with request_deadline(0.05, grace_s=0.01):
            await asyncio.sleep(10)


async def test_a_timeout_inside_the_request_is_not_mistaken_for_the_deadline() -> None:
    async def request() -> None:
        async with request_deadline(5.0), asyncio.timeout(0.01):
            await asyncio.sleep(1)

    with pytest.raises(TimeoutError) as raised:
        await request()
    assert not isinstance(raised.value, DeadlineExceeded)


def test_settings_from_their_tables() -> None:
    assert ResilienceSettings.parse({}) == ResilienceSettings()
    base = ResilienceSettings.parse({"retries": 1, "breaker_cooldown_s": 30})
    assert base.retries == 1 and base.breaker_cooldown_s == 30
    per_source = ResilienceSettings.parse(
        {"retries": 0}, base=base, path="sources.sales.resilience"
    )
    assert per_source.retries == 0 and per_source.breaker_cooldown_s == 30
    for table, message in [
        ({"retries": -1}, "resilience.retries: expected an integer >= 0"),
        ({"breaker_failures": 0}, "resilience.breaker_failures: expected an integer >= 1"),
        ({"retries": 1.5}, "resilience.retries: expected an integer >= 0"),
        ({"request_deadline_s": 0}, "resilience.request_deadline_s: expected a number"),
        ({"backoff_cap_s": 0.01}, "resilience.backoff_cap_s: must be at least backoff_base_s"),
        ({"timeout_ms": 5}, "resilience.timeout_ms: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ResilienceSettings.parse(table)
