"""The request body, read whole before the request asks for a place to execute: counted
as it streams (chunked too) and within a time limit, so that a client sending slowly (or
never) holds a connection, never an admission place."""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.http.responses import CLOSE, client_gone, error_response
from gateway.http.state import RequestState
from resolvers.upstream import keep_body


class BodyLimit:
    """413 past `max_bytes`, 408 when the body has not all arrived within `timeout_s`;
    both close the connection (the rest of the body is not read)."""

    def __init__(self, max_bytes: int, timeout_s: float) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def refuse_declared(self, request: Request, state: RequestState) -> Response | None:
        """413 before reading any of the body, when its Content-Length is over the limit
        (or is no number at all)."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return self.too_large(state)
        return None

    async def read(self, request: Request, state: RequestState) -> Response | None:
        """Read the whole body, counting its bytes as they arrive (a chunked body has no
        Content-Length to check first). None once it is read: Request.body() hands it out
        from then on, to strawberry among others."""
        chunks: list[bytes] = []
        size = 0
        receive = request.receive  # the ASGI messages themselves: no generator per request
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnect
                    chunk = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > self.max_bytes:
                            return self.too_large(state)
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            state.reason = "body_timeout"
            return error_response(
                "BAD_REQUEST",
                408,
                f"The request body did not arrive within {self.timeout_s:g} s.",
                headers=CLOSE,
            )
        except ClientDisconnect:
            return client_gone(state)
        keep_body(request, b"".join(chunks))  # what Request.body() hands out from now on
        return None

    def too_large(self, state: RequestState) -> Response:
        """413, and the connection closed: the rest of the body is not read, not even to
        be thrown away (a client streaming without end would otherwise keep it busy)."""
        state.reason = "body_too_large"
        return error_response(
            "BAD_REQUEST",
            413,
            f"Request body is larger than {self.max_bytes} bytes.",
            headers=CLOSE,
        )
