"""Per-source resilience: retries with full-jitter backoff for idempotent reads, a circuit
breaker per source, and a deadline that bounds a whole request.

The connectors already time out each call (`timeout_ms`) and turn every transport
failure into SourceUnavailable; this module decides whether to try again, when to stop
asking a system that keeps failing, and when the request has run out of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from connectors.base import SourceUnavailable
from gateway.errors import ConfigError

log = logging.getLogger("c360.resilience")

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]
# For a Prometheus gauge (`c360_source_circuit_state{source}`).
STATE_VALUES: Mapping[State, int] = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    """`[resilience]`, and per source `[sources.X.resilience]` over it (the deadline is
    the request's, so only the top-level one counts)."""

    retries: int = 2  # extra attempts for an idempotent read
    backoff_base_s: float = 0.05
    backoff_cap_s: float = 0.5
    breaker_failures: int = 5  # consecutive failed calls that open the circuit
    breaker_cooldown_s: float = 10.0  # open this long before one trial call
    request_deadline_s: float = 10.0

    @classmethod
    def parse(
        cls,
        table: Mapping[str, Any],
        *,
        base: ResilienceSettings | None = None,
        path: str = "resilience",
    ) -> ResilienceSettings:
        base = base or cls()
        values = {f.name: getattr(base, f.name) for f in fields(cls)}
        for key, value in table.items():
            if key not in values:
                raise ConfigError(f"{path}.{key}: unknown key")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{path}.{key}: expected a number")
            if key in ("retries", "breaker_failures"):
                if not isinstance(value, int) or value < (0 if key == "retries" else 1):
                    least = 0 if key == "retries" else 1
                    raise ConfigError(f"{path}.{key}: expected an integer >= {least}")
            elif value <= 0:
                raise ConfigError(f"{path}.{key}: expected a number of seconds > 0")
            values[key] = value
        settings = cls(**values)
        if settings.backoff_cap_s < settings.backoff_base_s:
            raise ConfigError(f"{path}.backoff_cap_s: must be at least backoff_base_s")
        return settings

    def backoff_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The pause before retry number `attempt + 1`: "full jitter", uniform in
        [0, min(cap, base x 2^attempt)), so instances retrying a failed system do not
        arrive together."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2.0**attempt)
        return rand() * ceiling


_STATE_MESSAGES: Mapping[State, str] = {
    "open": "circuit opened: calls to the source are refused for the cool-down",
    "half_open": "circuit half-open: one trial call to the source",
    "closed": "circuit closed: the source answers again",
}


@dataclass(frozen=True, slots=True)
class Admission:
    """Leave to make one call; a trial is the one call a half-open circuit lets through."""

    trial: bool = False


class CircuitBreaker:
    """closed → open after `failures` consecutive failures → half-open once `cooldown_s`
    has passed, letting one trial call through → closed when it succeeds, open again
    (for another cool-down) when it fails.

    While half-open, only the trial's outcome counts: calls that started before the
    circuit opened and end later neither close nor reopen it."""

    def __init__(
        self,
        source: str,
        failures: int = 5,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, State], None] | None = None,
    ) -> None:
        self.source = source
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.on_change = on_change
        self._state: State = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_out = False

    @classmethod
    def from_settings(
        cls, source: str, settings: ResilienceSettings, **kwargs: Any
    ) -> CircuitBreaker:
        return cls(source, settings.breaker_failures, settings.breaker_cooldown_s, **kwargs)

    @property
    def state(self) -> State:
        """As /readyz reports it: an open circuit whose cool-down is over is half-open
        (the next call is the trial)."""
        if self._state == "open" and self.clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return self._state

    def admit(self) -> Admission | None:
        """Leave for one call, or None: the circuit is open (or its trial is out)."""
        if self._state == "closed":
            return Admission()
        if self.state == "open" or self._trial_out:
            return None
        self._move("half_open")
        self._trial_out = True
        return Admission(trial=True)

    def succeeded(self, admission: Admission) -> None:
        if admission.trial:
            self._trial_out = False
            self._consecutive = 0
            self._move("closed")
        elif self._state == "closed":
            self._consecutive = 0

    def failed(self, admission: Admission) -> None:
        if admission.trial:
            self._trial_out = False
            self._open()
        elif self._state == "closed":
            self._consecutive += 1
            if self._consecutive >= self.failures:
                self._open()

    def abandoned(self, admission: Admission) -> None:
        """The call ended with no verdict on the system (cancelled, out of request time, a
        bug of ours): a trial is handed back, so the next call can be the trial."""
        if admission.trial:
            self._trial_out = False

    def _open(self) -> None:
        self._opened_at = self.clock()
        self._consecutive = 0
        self._move("open")

    def _move(self, state: State) -> None:
        if state == self._state:
            return
        self._state = state
        level = logging.WARNING if state == "open" else logging.INFO
        log.log(level, _STATE_MESSAGES[state], extra={"source": self.source})
        if self.on_change is not None:
            self.on_change(self.source, state)


async def call_with_resilience(
    breaker: CircuitBreaker,
    settings: ResilienceSettings,
    call: Callable[[], Awaitable[T]],
    *,
    idempotent: bool,
    source: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """One logical call to a system: refused at once while its circuit is open; retried
    (idempotent reads only, SourceUnavailable only) with backoff while the circuit and the
    request's deadline allow. Each attempt is one call to the system, and one outcome for
    its breaker. Raises SourceUnavailable with the last attempt's reason."""
    attempts = 1 + (settings.retries if idempotent else 0)
    last: SourceUnavailable | None = None
    for attempt in range(attempts):
        admission = breaker.admit()
        if admission is None:
            raise last or SourceUnavailable(source, "circuit open")
        try:
            result = await _within_deadline(call, source)
        except _OutOfTime as out:
            breaker.abandoned(admission)
            raise SourceUnavailable(source, "the request's deadline was reached") from out
        except SourceUnavailable as error:
            breaker.failed(admission)
            last = error
        except BaseException:
            breaker.abandoned(admission)
            raise
        else:
            breaker.succeeded(admission)
            return result
        if attempt + 1 == attempts:
            break
        pause = settings.backoff_s(attempt, rand)
        remaining = remaining_s()
        if remaining is not None and pause >= remaining:
            break  # no time left for another try
        await sleep(pause)
    assert last is not None
    raise last


# --- the request's deadline ---------------------------------------------------------------

# The loop time by which the current request must be answered; tasks started for it
# (DataLoader batches) inherit it with their context.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "c360_request_deadline", default=None
)


class DeadlineExceeded(TimeoutError):
    """The request as a whole ran past its deadline (and its grace)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request did not complete within {seconds:g} s.")
        self.seconds = seconds


class _OutOfTime(Exception):
    pass


def remaining_s() -> float | None:
    """Seconds left before the current request's deadline; None outside one."""
    at = _deadline.get()
    if at is None:
        return None
    return at - asyncio.get_running_loop().time()


async def _within_deadline(call: Callable[[], Awaitable[T]], source: str) -> T:
    at = _deadline.get()
    if at is None:
        return await call()
    if at <= asyncio.get_running_loop().time():
        raise _OutOfTime(source)  # not even started: a system is not asked in vain
    timeout = asyncio.timeout_at(at)
    try:
        async with timeout:
            return await call()
    except TimeoutError as error:
        if timeout.expired():
            raise _OutOfTime(source) from error
        raise


@contextlib.asynccontextmanager
async def request_deadline(seconds: float, grace_s: float = 0.25) -> AsyncIterator[None]:
    """Bound a request. Calls to the systems end at the deadline (their fields become
    null with SOURCE_UNAVAILABLE, so the client still gets the rest); whatever still runs
    `grace_s` later is cancelled and DeadlineExceeded raised."""
    loop = asyncio.get_running_loop()
    at = loop.time() + seconds
    token = _deadline.set(at)
    timeout = asyncio.timeout_at(at + grace_s)
    try:
        async with timeout:
            yield
    except TimeoutError as error:
        if timeout.expired():
            raise DeadlineExceeded(seconds) from error
        raise
    finally:
        _deadline.reset(token)
