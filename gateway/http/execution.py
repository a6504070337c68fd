"""The refusals raised while the strawberry view runs a request (trusted
documents, query limits, a malformed request, the deadline), as whole-request answers."""

from __future__ import annotations

from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.documents import DocumentRefused
from gateway.http.responses import error_response, media_type, refusal_response
from gateway.http.state import RequestState
from gateway.limits import QueryTooComplex
from gateway.resilience import DeadlineExceeded

# What the pipeline catches around `view.run` and hands to `ExecutionRefusals.refuse`.
REFUSED = (QueryTooComplex, DocumentRefused, DeadlineExceeded, HTTPException)


class ExecutionRefusals:
    """The request's deadline (`deadline_s`; none when None) and the answers to what the
    run raised."""

    def __init__(self, deadline_s: float | None) -> None:
        self.deadline_s = deadline_s

    def refuse(self, refused: Exception, request: Request, state: RequestState) -> Response:
        """The answer to one of `REFUSED`."""
        media = media_type(request)
        if isinstance(refused, QueryTooComplex):
            state.reason = "too_complex"
            return refusal_response(refused.error(), 400, media_type=media)
        if isinstance(refused, DocumentRefused):
            state.reason = "document_refused"
            document = refused.refusal
            return refusal_response(
                document.error(), document.status, media_type=media, headers=document.headers
            )
        if isinstance(refused, DeadlineExceeded):
            state.reason = "deadline"
            return error_response(
                "DEADLINE_EXCEEDED",
                504,
                f"The request took longer than {self.deadline_s:g} s.",
                media_type=media,
            )
        if isinstance(refused, HTTPException):
            state.reason = "bad_request"
            return error_response(
                "BAD_REQUEST", refused.status_code, refused.reason, media_type=media
            )
        raise TypeError(f"not an execution refusal: {refused!r}") from refused
