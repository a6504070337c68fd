"""Admission: a place to execute in (the gateway's admission gate), held while the request
runs; 503 OVERLOADED with `Retry-After` when none comes within the queue's bounds."""

from __future__ import annotations

import contextlib

from starlette.requests import Request
from starlette.responses import Response

from gateway.admission import Admission, Overloaded
from gateway.http.responses import error_response, media_type
from gateway.http.state import RequestState

RETRY_SOON = {"retry-after": "1"}


class AdmissionStage:
    """The pipeline enters `place()` around execution and answers `Overloaded` with
    `refuse` (in its own frame: a stage of its own would be a coroutine more per request)."""

    def __init__(self, admission: Admission | None) -> None:
        self.admission = admission

    def place(self) -> contextlib.AbstractAsyncContextManager[bool]:
        """A place to execute in (at once without a gate); says whether the request had
        to wait for it (then its client may be gone)."""
        if self.admission is None:
            return contextlib.nullcontext(False)
        return self.admission.place()

    def refuse(self, refused: Overloaded, request: Request, state: RequestState) -> Response:
        state.reason = "overloaded"
        return error_response(
            "OVERLOADED",
            503,
            f"The gateway is overloaded ({refused.reason}).",
            media_type=media_type(request),
            headers=RETRY_SOON,
        )
