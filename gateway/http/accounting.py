"""Accounting: every answer of /graphql gets its access record, with its true status. With
`fail_closed`, the record is made durable before the answer (or the answer is a 503);
otherwise it is written after the answer, so the client does not wait for its own record."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.audit.log import AccessLog, AuditUnavailable
from gateway.audit.recorder import (
    GraphFacts,
    access_record,
    client_name,
    current_trace_id,
    now_iso,
    record_with_alerts,
    superseding,
)
from gateway.http.responses import error_response
from gateway.http.state import RequestState


class Accounting:
    def __init__(self, access_log: AccessLog) -> None:
        self.access_log = access_log

    @property
    def fail_closed(self) -> bool:
        """Read per request: the access log's settings are its own to change."""
        return self.access_log.settings.fail_closed

    def _record(
        self, request: Request, state: RequestState, response: Response, seconds: float
    ) -> Callable[[], dict[str, Any]]:
        """The request's access record, to be made: what it reads of the request, taken
        now (its time and trace are the answer's)."""
        return functools.partial(
            access_record,
            ts=now_iso(),
            trace_id=current_trace_id(),
            request_id=state.request_id,
            principal=state.principal,
            client=client_name(request.headers.get("x-client-name")),
            status=response.status_code,
            outcome=state.outcome,
            duration_ms=seconds * 1000,
            reason=state.reason,
            graph=GraphFacts.of(state.context),
        )

    async def before(
        self, request: Request, state: RequestState, response: Response, seconds: float
    ) -> Response:
        """Write the record before the answer and wait until it is durable: what cannot
        be recorded is refused (503), and that refusal recorded too."""
        record = self._record(request, state, response, seconds)()
        try:
            await self.access_log.durable(record_with_alerts(self.access_log, record))
        except AuditUnavailable:
            # The record above says what the answer would have been; this one what it is.
            self.access_log.record(superseding(record, 503, "audit_unavailable"), awaited=False)
            return error_response(
                "AUDIT_UNAVAILABLE",
                503,
                "The access log cannot record this request; it was refused.",
            )
        return response

    def after(
        self, request: Request, state: RequestState, response: Response, seconds: float
    ) -> None:
        """Write the record once the answer is sent (AccessLog.later), from what it reads
        of the request taken now; and let go of the request's context now."""
        record = self._record(request, state, response, seconds)
        if state.context is not None:
            state.context.release()
        access_log = self.access_log
        access_log.later(lambda: record_with_alerts(access_log, record()))
