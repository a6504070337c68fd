"""What every resolver sees of one request: the principal, the per-request loaders, and
the failures to report. The gateway builds one per request."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from strawberry.dataloader import DataLoader

from connectors.base import Fetched, SourceUnavailable
from connectors.identity.index import IdentityIndex
from resolvers.bindings import GraphBindings
from resolvers.guard import FieldGuard


class SourceFetcher(Protocol):
    """The gateway's way to a department system (cache, metrics and tracing included).

    A key maps to its record(s), is absent, or maps to the SourceUnavailable error when the
    system failed for it; `on_stale` hears of records served past their TTL."""

    async def fetch(
        self,
        source: str,
        entity: str,
        keys: Sequence[str],
        on_stale: Callable[[str, str, float], None] | None = None,
    ) -> dict[str, Fetched | SourceUnavailable]: ...


@dataclass(slots=True)
class SourceFailure:
    source: str
    reason: str
    path: list[str | int] | None = None


@dataclass
class GraphContext:
    sources: SourceFetcher
    identity: IdentityIndex
    bindings: GraphBindings
    guard: FieldGuard
    max_page_size: int = 100
    request: Any = None
    failures: dict[str, SourceFailure] = field(default_factory=dict)
    stale: dict[tuple[str, str], float] = field(default_factory=dict)  # oldest age served
    loaders: dict[tuple[str, str], DataLoader[str, Fetched | None]] = field(default_factory=dict)

    def loader(self, source: str, entity: str) -> DataLoader[str, Fetched | None]:
        """One batching loader per (source, entity) per request: all keys asked for in the
        same tick become one call to the system."""
        slot = (source, entity)
        loader = self.loaders.get(slot)
        if loader is None:

            async def load(keys: list[str]) -> list[Fetched | BaseException | None]:
                try:
                    found = await self.sources.fetch(source, entity, keys, self.note_stale)
                except SourceUnavailable as error:
                    return [error] * len(keys)
                return [found.get(key) for key in keys]

            loader = self.loaders[slot] = DataLoader(load_fn=load)
        return loader

    def note_stale(self, source: str, entity: str, age_s: float) -> None:
        slot = (source, entity)
        self.stale[slot] = max(age_s, self.stale.get(slot, 0.0))

    def fail(self, error: SourceUnavailable, path: list[str | int] | None = None) -> None:
        failure = self.failures.get(error.source)
        if failure is None:
            self.failures[error.source] = SourceFailure(error.source, error.reason, path)
        elif failure.path is None:
            failure.path = path
