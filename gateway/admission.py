"""How many GraphQL requests execute at once: a fair gate in front of execution.

Under overload a gateway without one takes every request on: each shares the one core
more thinly, holds its pool connections and source calls open longer, and all of them
answer late (or trip the breakers of healthy systems) instead of some answering in time.
The gate lets `limit` requests execute and queues the others in arrival order (a freed
place goes straight to the longest waiter, never to a newcomer); a request that waited
`queue_timeout_s`, or finds `max_queued` ahead of it, is refused with 503 OVERLOADED.

On by default at 32 per process: a request waits on its systems several times as long
as it uses the core, so a few in flight keep a core busy, and 32 leave room for slower
systems (the longer the wait per unit of CPU, the more places; the figures behind 32 are
in bench/HISTORY.md). Without a gate, (b) at 64 and 128 connections queued inside the
source calls until their timeouts tripped the breakers of healthy systems, and its p99
left the 3x p50 target far behind (`make bench-full`, (b) at 64 and 128 connections).
Raise it for slow systems, 0 turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass


class Overloaded(Exception):
    """No place to execute within the queue's bounds."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AdmissionSettings:
    limit: int = 32  # requests executing at once; 0: no gate
    max_queued: int = 1024  # requests waiting for a place
    queue_timeout_s: float = 5.0  # the longest a request waits for one


class Admission:
    """A FIFO counting gate: `async with admission.place(): ...`."""

    def __init__(self, settings: AdmissionSettings) -> None:
        self.settings = settings
        self.executing = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def place(self) -> AsyncIterator[bool]:
        """Yields whether the request waited for its place (then its client may be gone)."""
        if self.settings.limit <= 0:
            yield False
            return
        waited = await self._enter()
        try:
            yield waited
        finally:
            self._leave()

    async def _enter(self) -> bool:
        if self.executing < self.settings.limit and not self._waiting:
            self.executing += 1
            return False
        if len(self._waiting) >= self.settings.max_queued:
            raise Overloaded(f"{len(self._waiting)} requests are already waiting")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            async with asyncio.timeout(self.settings.queue_timeout_s):
                await turn  # resolved by _leave, which hands over its place
        except BaseException as error:
            handed_over = turn.done() and not turn.cancelled()
            if handed_over and isinstance(error, TimeoutError):
                return True  # the place came just as the time ran out: take it
            if handed_over:
                self._leave()  # cancelled after the hand-over: pass the place on
            else:
                turn.cancel()
                with contextlib.suppress(ValueError):
                    self._waiting.remove(turn)
            if isinstance(error, TimeoutError):
                raise Overloaded(
                    f"no place to execute within {self.settings.queue_timeout_s:g} s"
                ) from None
            raise
        return True

    def _leave(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the place passes on; `executing` stays
                return
        self.executing -= 1
