"""The access log as the console's GraphQL queries and mutations read and write it
(`resolvers.audit_views.AccessViews`): the read models of the configured sink, the
integrity monitor, and the access log itself for the records a reviewer's actions add."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.audit.log import AccessLog
from gateway.audit.sinks import AccessSink, JsonlSink, PostgresSink
from gateway.console.integrity import monitor_for
from gateway.console.jsonl_views import JsonlViews
from gateway.console.pg_views import PostgresViews
from resolvers.audit_views import (
    AccessLogIntegrity,
    AccessOverview,
    AlertQuery,
    ChainBreak,
    ChainState,
    CustomerSeen,
    FootprintSummary,
    Window,
)

Record = Mapping[str, Any]


class ConsoleReader:
    def __init__(self, sink: AccessSink, access_log: AccessLog | None = None) -> None:
        self.sink = sink
        self.access_log = access_log

    @property
    def views(self) -> JsonlViews | PostgresViews:
        # Made on use: a reader is made for every request, most never ask the console.
        if isinstance(self.sink, PostgresSink):
            return PostgresViews(self.sink)
        if isinstance(self.sink, JsonlSink):
            return JsonlViews(self.sink)
        raise TypeError(f"no console read models for the {self.sink.name} sink")

    async def footprint(self, subject: str, window: Window) -> FootprintSummary:
        return await self.views.footprint(subject, window)

    async def footprint_customers(
        self, subject: str, window: Window, first: int, after: tuple[str, str] | None
    ) -> Sequence[CustomerSeen]:
        return await self.views.footprint_customers(subject, window, first, after)

    async def overview(self, window: Window, top: int) -> AccessOverview:
        return await self.views.overview(window, top)

    async def alerts(self, query: AlertQuery) -> Sequence[tuple[Record, Record | None]]:
        return await self.views.alerts(query)

    async def find(self, chain: str, seq: int) -> Record | None:
        return await self.views.find(chain, seq)

    async def acknowledgement(self, alert_id: str) -> Record | None:
        return await self.views.acknowledgement(alert_id)

    async def append(self, record: dict[str, Any]) -> Record:
        """Seal a record into this gateway's chain and wait until it is durable (in the
        sink, or in the spill file), so an acknowledgement that is answered is kept."""
        if self.access_log is None:
            raise RuntimeError("this reader cannot write to the access log")
        await self.access_log.durable(self.access_log.record(record))
        if not self.access_log.settings.fail_closed:
            await self.access_log.flush()  # readable by the next page load
        return record

    async def integrity(self, refresh: bool) -> AccessLogIntegrity:
        monitor = monitor_for(self.sink)
        last = monitor.current(refresh)
        if last is None:
            return AccessLogIntegrity(
                checking=monitor.checking,
                checked_at=None,
                intact=None,
                records=0,
                chains=[],
                breaks=[],
                torn_tail=None,
            )
        report = last.report
        return AccessLogIntegrity(
            checking=monitor.checking,
            checked_at=last.checked_at,
            intact=report.intact,
            records=report.records,
            chains=[
                ChainState(chain=name, last_seq=seq) for name, seq in sorted(report.chains.items())
            ],
            breaks=[
                ChainBreak(chain=b.chain, seq=b.seq, location=b.where, problem=b.problem)
                for b in report.breaks
            ],
            torn_tail=last.torn_tail,
        )
