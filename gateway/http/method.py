"""The first stage: /graphql answers GET and POST; any other method gets 405 (and, like
every answer, its access record)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.http.responses import error_response, media_type
from gateway.http.state import RequestState

METHODS = ("GET", "POST")
ALLOW = {"allow": ", ".join(METHODS)}


def refuse_method(request: Request, state: RequestState) -> Response | None:
    """405 with `Allow` for a method GraphQL over HTTP does not use; None otherwise."""
    if request.method in METHODS:
        return None
    state.reason = "method_not_allowed"
    return error_response(
        "BAD_REQUEST",
        405,
        "/graphql answers GET and POST only.",
        media_type=media_type(request),
        headers=ALLOW,
    )
