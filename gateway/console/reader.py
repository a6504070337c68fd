"""The access log as the console's GraphQL queries and mutations read and write it
(`resolvers.audit_views.AccessViews`): the read models of the configured sink, the
integrity monitor, and the access log itself for the records a reviewer's actions add."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.audit.checkpoint import CheckpointSettings
from gateway.audit.log import AccessLog
from gateway.audit.sinks import AccessSink, JsonlSink, PostgresSink
from gateway.console.integrity import IntegrityReport, LatestCheckpoint, monitor_for
from gateway.console.jsonl_views import JsonlViews
from gateway.console.pg_views import PostgresViews
from gateway.console.quality import QualityRuns, data_quality
from gateway.console.rights import request_node, rights_requests
from resolvers.audit_views import (
    AccessLogIntegrity,
    AccessOverview,
    AlertQuery,
    ChainBreak,
    ChainState,
    CheckpointChain,
    CheckpointFinding,
    CheckpointState,
    CustomerSeen,
    FootprintSummary,
    Window,
)
from resolvers.console_pages import DataQuality
from resolvers.console_pages import RightsRequest as RightsRequestNode

Record = Mapping[str, Any]


class ConsoleReader:
    def __init__(
        self,
        sink: AccessSink,
        access_log: AccessLog | None = None,
        quality: QualityRuns | None = None,
    ) -> None:
        self.sink = sink
        self.access_log = access_log
        self.quality = quality

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

    async def rights_requests(self) -> list[RightsRequestNode]:
        """Every rights request in the log, newest first (they are few: all at once)."""
        found = rights_requests(await self.views.rights_records())
        return [request_node(request) for request in found]

    async def data_quality(self, runs: int) -> DataQuality:
        if self.quality is None:
            raise RuntimeError("this reader has no data-quality figures")
        return await data_quality(self.quality, runs)

    def start_quality_run(self) -> bool:
        if self.quality is None:
            raise RuntimeError("this reader cannot start a data-quality run")
        return self.quality.start()

    async def append(self, record: dict[str, Any]) -> Record:
        """Seal a record into this gateway's chain and wait until it is durable (in the
        sink, or in the spill file), so an acknowledgement that is answered is kept."""
        if self.access_log is None:
            raise RuntimeError("this reader cannot write to the access log")
        await self.access_log.durable(self.access_log.record(record))
        if not self.access_log.settings.fail_closed:
            await self.access_log.flush()  # readable by the next page load
        return record

    @property
    def checkpoint_settings(self) -> CheckpointSettings | None:
        # The access log's own settings: a SIGHUP that rotates checkpoint keys updates them.
        return self.access_log.settings.checkpoints if self.access_log is not None else None

    async def integrity(self, refresh: bool) -> AccessLogIntegrity:
        monitor = monitor_for(self.sink)
        settings = self.checkpoint_settings
        last = await monitor.current(refresh, settings)
        checkpoint = checkpoint_state(monitor.latest, last)
        if last is None:
            return AccessLogIntegrity(
                checking=monitor.checking,
                checked_at=None,
                intact=None,
                records=0,
                chains=[],
                breaks=[],
                torn_tail=None,
                checkpoints_configured=settings is not None,
                checkpoint=checkpoint,
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
            checkpoints_configured=settings is not None,
            checkpoint=checkpoint,
        )


def checkpoint_state(
    latest: LatestCheckpoint | None, last: IntegrityReport | None
) -> CheckpointState | None:
    """The newest checkpoint as it is now, and the log compared with it when the last
    finished check compared exactly that one."""
    if latest is None:
        return None
    cp = latest.checkpoint
    if last is not None and last.checkpoint is not None and last.checkpoint.key == latest.key:
        compared_at, findings = last.checked_at, last.findings
    else:
        compared_at, findings = None, None
    verifies: bool | None = None
    if findings is not None and last is not None:
        verifies = last.report.intact and not any(f.fatal for f in findings)
    return CheckpointState(
        file=latest.file,
        scope=str(cp["scope"]),
        timestamp=dt.datetime.fromisoformat(str(cp["timestamp"])),
        key_id=str(cp["key_id"]),
        tree_size=sum(int(entry["size"]) for entry in cp["chains"].values()),
        chains=[
            CheckpointChain(chain=name, size=int(entry["size"]), root=str(entry["root"]))
            for name, entry in sorted(cp["chains"].items())
        ],
        signature_valid=latest.trusted,
        signature_problem=latest.signature_problem,
        log_verifies=verifies,
        compared_at=compared_at,
        findings=[
            CheckpointFinding(chain=f.chain, kind=f.kind, message=f.message, fatal=f.fatal)
            for f in findings or ()
        ],
    )
