"""The rate limit: 429 with `Retry-After` once the principal's bucket is empty."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.http.responses import error_response, media_type
from gateway.http.state import RequestState
from gateway.ratelimit import RateLimiter, retry_after


class RateLimit:
    """Takes a token from the principal's bucket; runs after authentication."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def check(self, request: Request, state: RequestState) -> Response | None:
        if state.principal is None:
            raise RuntimeError("the rate limit needs an authenticated request")
        wait = await self.limiter.take(state.principal.subject)
        if wait is None:
            return None
        state.reason = "rate_limited"
        return error_response(
            "RATE_LIMITED",
            429,
            "Too many requests; retry later.",
            media_type=media_type(request),
            headers={"retry-after": retry_after(wait)},
        )
