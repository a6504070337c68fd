"""What the pipeline knows of one request, typed and in one place: made when the request
arrives, filled in by the stages, read by the view's hooks and by the access record."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection
from starlette.responses import Response

from policies.principal import Principal

if TYPE_CHECKING:
    from resolvers.context import GraphContext

# The ASGI scope key under which the pipeline keeps a request's state (an extension key of
# its own: nothing else writes it, and a scope without it never reached the pipeline).
STATE_KEY = "c360.request"


# Request ids: a random prefix per process (a forked worker draws its own) and a counter,
# 32 hex digits as a uuid4's. The id correlates logs and records and is no secret, so it
# need not cost a read of os.urandom (as a uuid4 would) on every request's path.
_request_ids: tuple[int, str, itertools.count[int]] = (0, "", itertools.count())


def new_request_id() -> str:
    global _request_ids
    pid, prefix, numbers = _request_ids
    if pid != os.getpid():
        pid, prefix, numbers = _request_ids = (os.getpid(), os.urandom(8).hex(), itertools.count())
    return f"{prefix}{next(numbers):016x}"


@dataclass(slots=True)
class RequestState:
    """One request's facts. Slots: a misspelt attribute is an AttributeError, never a new
    attribute or a silent default."""

    request_id: str
    principal: Principal | None = None  # once authenticated; None for the GraphiQL page
    session: bool = False  # the credential was the console's sign-in session, not a token
    reason: str | None = None  # why the request was refused, for the access record
    outcome: str = "rejected"  # ok | partial | error | rejected; set once a result exists
    context: GraphContext | None = None  # what the resolvers saw, once execution began
    sub_response: Response | None = None  # strawberry's, from get_sub_response on


def state_of(connection: HTTPConnection) -> RequestState:
    """The request's state; KeyError for a request that did not come through the
    pipeline (a bug to see, not a default to carry on with)."""
    state: RequestState = connection.scope[STATE_KEY]
    return state
