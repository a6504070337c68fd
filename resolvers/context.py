"""What every resolver sees of one request: the principal, the per-request loaders, and
the failures to report. The gateway builds one per request."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    system failed for it; the observer hears what the lookup cost and what was stale."""

    async def fetch(
        self, source: str, entity: str, keys: Sequence[str], observer: Any = None
    ) -> dict[str, Fetched | SourceUnavailable]: ...

    def expected_latency_s(self, source: str) -> float: ...

    async def invalidate(self, source: str, entity: str, keys: Sequence[str]) -> int: ...

    async def write(self, source: str, action: str, values: Mapping[str, Any]) -> Any: ...

    def actions(self, source: str) -> Mapping[str, Any]: ...

    @property
    def connectors(self) -> Mapping[str, Any]: ...


class Siblings(Protocol):
    """The customers one parent resolved together (resolvers/loading.py)."""

    def prepare(
        self,
        ctx: GraphContext,
        name: str,
        key: str,
        shape: Callable[[Any], Any],
        resolving: Any,
    ) -> None:
        """Settle field `name` (response key `key`) for every sibling but `resolving`."""


@dataclass(slots=True)
class SourceUse:
    """One request's use of one system, for the access log."""

    calls: int = 0
    cache_hits: int = 0
    errors: int = 0


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
    graph: Any = None  # the built graph (resolvers/types.py `Graph`): its types and tables
    schema: Any = None  # the schema serving that graph (the request executes against it)
    # Writes this request made (resolvers/writes.py): what the access record says of them.
    writes: list[dict[str, Any]] = field(default_factory=list)
    idempotent_writes: Any = None  # the gateway's answers by Idempotency-Key
    # After a write changed a record's email or phone: (system, key, {"email": …}) -> None
    rekey: Any = None
    restrict: Any = None  # (cuid, restricted) -> None: a restriction of processing
    unlink: Any = None  # an erasure: cuid -> number of links removed (tombstones left)
    entity_batch: Any = None  # the _entities references being gathered (resolvers/loading.py)
    request: Any = None  # the HTTP request (its headers); None outside HTTP
    request_id: str | None = None  # the request's id, as its access record carries it
    # The credential was the console's sign-in session: it reads (a person's report
    # among it), and changes nothing of a person's rights (resolvers/rights.py).
    session: bool = False
    failures: dict[str, SourceFailure] = field(default_factory=dict)
    stale_ages: dict[tuple[str, str], float] = field(default_factory=dict)  # oldest served
    sources_used: dict[str, SourceUse] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)  # CUIDs this request resolved
    operation: dict[str, Any] | None = None  # name, type, document hash (no literals)
    audit_query: dict[str, Any] | None = None  # what an accessLog query looked for
    audit: Any = None  # the access log reader, for the accessLog query
    loaders: dict[tuple[str, str], DataLoader[str, Fetched | None]] = field(default_factory=dict)
    fetched_records: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    siblings: dict[int, Siblings] = field(default_factory=dict)  # id(customer) -> its batch
    # Root response key -> the CustomerLoad started for it before execution
    # (resolvers/planning.py), until its resolver takes it.
    planned: dict[str, Any] = field(default_factory=dict)

    async def fetch_many(
        self, source: str, entity: str, keys: Sequence[str]
    ) -> Mapping[str, Fetched | SourceUnavailable | None]:
        """Records by key for this request, each key fetched at most once per request:
        one batched call for the keys not seen yet. A key maps to its record(s), None
        (the system has no such record) or the error of a system that failed for it."""
        memo = self.fetched_records.setdefault((source, entity), {})
        missing = [key for key in dict.fromkeys(keys) if key not in memo]
        if missing:
            try:
                found = await self.sources.fetch(source, entity, missing, self)
            except SourceUnavailable as error:
                found = dict.fromkeys(missing, error)
            for key in missing:
                memo[key] = found.get(key)
        return memo

    def release(self) -> None:
        """Let go of what the request resolved, once it is answered and accounted for.

        The context sits in reference cycles (the request holds it and it holds the
        request; graphql-core's executor holds it and is a cycle of its own), so what it
        holds is freed only by the cyclic collector. For a page of 100 customers that is
        every object of the page, and the collector's full passes stalled the whole
        gateway every second or two (bench (b)'s tail at c=1)."""
        self.request = None
        self.planned.clear()
        self.siblings.clear()
        self.fetched_records.clear()
        self.loaders.clear()
        self.guard.decided = {}  # the access record may still read the old one

    def loader(self, source: str, entity: str) -> DataLoader[str, Fetched | None]:
        """For fields their parent did not prefetch: keys asked for in the same tick become
        one call (through `fetch_many`, so nothing is fetched twice)."""
        slot = (source, entity)
        loader = self.loaders.get(slot)
        if loader is None:

            async def load(keys: list[str]) -> list[Fetched | BaseException | None]:
                found = await self.fetch_many(source, entity, keys)
                return [found.get(key) for key in keys]

            loader = self.loaders[slot] = DataLoader(load_fn=load)
        return loader

    def fetched(self, source: str, hits: int, calls: int, errors: int) -> None:
        use = self.sources_used.setdefault(source, SourceUse())
        use.calls += calls
        use.cache_hits += hits
        use.errors += errors

    def stale(self, source: str, entity: str, age_s: float) -> None:
        slot = (source, entity)
        self.stale_ages[slot] = max(age_s, self.stale_ages.get(slot, 0.0))

    def fail(self, error: SourceUnavailable, path: list[str | int] | None = None) -> None:
        failure = self.failures.get(error.source)
        if failure is None:
            self.failures[error.source] = SourceFailure(error.source, error.reason, path)
        elif failure.path is None:
            failure.path = path
