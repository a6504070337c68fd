"""Authentication: who sends the request, for which purpose. A bearer token, or without
one the console's sign-in session; 401 (with `WWW-Authenticate: Bearer`) or 403 otherwise."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import Authenticator, AuthError
from gateway.http.responses import error_response, media_type
from gateway.http.state import RequestState
from policies.principal import Principal

BEARER = {"www-authenticate": "Bearer"}


class Authentication:
    """Sets the request's principal, or refuses the request."""

    def __init__(
        self,
        authenticator: Authenticator,
        session: Callable[[Request], Principal | None] | None = None,
    ) -> None:
        self.authenticator = authenticator
        # `[console.oidc]`: the principal of the console session whose cookie the request
        # carries (AuthError for an ended session or a missing CSRF header), or None.
        self.session = session

    async def check(self, request: Request, state: RequestState) -> Response | None:
        """Without an Authorization header, the console's sign-in session is the
        credential when the request carries its cookie; the bearer token otherwise."""
        try:
            authorization = request.headers.get("authorization")
            principal = None
            if authorization is None and self.session is not None:
                principal = self.session(request)
                state.session = principal is not None
            if principal is None:
                principal = await self.authenticator.authenticate(
                    authorization, request.headers.get("x-purpose")
                )
        except AuthError as error:
            unauthenticated = error.status == 401
            state.reason = error.reason or ("unauthenticated" if unauthenticated else "purpose")
            return error_response(
                "UNAUTHENTICATED" if unauthenticated else "FORBIDDEN",
                error.status,
                str(error),
                media_type=media_type(request),
                headers=BEARER if unauthenticated else None,
            )
        state.principal = principal
        return None
