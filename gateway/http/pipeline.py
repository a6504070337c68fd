"""The /graphql endpoint: one ASGI app that runs a request through the stages in order,
the first refusal being the answer, then accounts for the answer.

An explicit pipeline rather than a stack of ASGI middleware: the stages share one typed
`RequestState` and return a refusal or None, so no stage wraps `receive` or `send` in a
closure of its own per request, the fail_closed accounting can hold the answer back until
its record is durable, and the order is read in one place (`respond`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.admission import Overloaded
from gateway.http.accounting import Accounting
from gateway.http.admission import AdmissionStage
from gateway.http.authn import Authentication
from gateway.http.body import BodyLimit
from gateway.http.execution import REFUSED, ExecutionRefusals
from gateway.http.method import refuse_method
from gateway.http.rate import RateLimit
from gateway.http.responses import client_gone
from gateway.http.state import STATE_KEY, RequestState, new_request_id
from gateway.resilience import request_deadline
from gateway.telemetry import set_request_id
from gateway.view import GraphQLView


class GraphQLEndpoint:
    """Made once per app; each stage is an object made once too."""

    def __init__(
        self,
        view: GraphQLView,
        *,
        body: BodyLimit,
        authentication: Authentication,
        rate_limit: RateLimit | None,
        admission: AdmissionStage,
        execution: ExecutionRefusals,
        accounting: Accounting,
        observe: Callable[[int, float], Any] = lambda status, seconds: None,
    ) -> None:
        self.view = view
        self.body = body
        self.authentication = authentication
        self.rate_limit = rate_limit
        self.admission = admission
        self.execution = execution
        self.accounting = accounting
        self.observe = observe  # metrics: the answer's status and time

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # a Route passes HTTP only; no subscriptions are served
            raise ValueError(f"/graphql serves HTTP, not {scope['type']}")
        started = time.perf_counter()
        request = Request(scope, receive)
        state = scope[STATE_KEY] = RequestState(new_request_id())
        set_request_id(state.request_id)
        # The GraphiQL page holds no data: it is served without credentials and without
        # a record; the queries it sends carry a token and go the whole way.
        page = self.view.is_ide_request(request)
        response = await self.respond(request, state, page)
        seconds = time.perf_counter() - started
        later = not page
        if later and self.accounting.fail_closed:
            response = await self.accounting.before(request, state, response, seconds)
            later = False
        response.headers["x-request-id"] = state.request_id
        try:
            await response(scope, receive, send)
        finally:
            self.observe(response.status_code, seconds)
            if later:
                self.accounting.after(request, state, response, seconds)  # releases context
            elif state.context is not None:
                state.context.release()

    async def respond(self, request: Request, state: RequestState, page: bool) -> Response:
        """The stages in order, the first refusal being the answer. A declared
        Content-Length over the limit is refused before anything else is read;
        authentication and the rate limit come before the body is read, so a refused
        client never has its body read; the body is read whole before the request waits
        for a place to execute. Admission and execution are entered here, in this frame,
        rather than as stages of their own: that would be coroutines more per request."""
        refusal = refuse_method(request, state) or self.body.refuse_declared(request, state)
        if refusal is None and not page:
            refusal = await self.authentication.check(request, state)
            if refusal is None and self.rate_limit is not None:
                refusal = await self.rate_limit.check(request, state)
        if refusal is None:
            refusal = await self.body.read(request, state)
        if refusal is not None:
            return refusal
        deadline_s = self.execution.deadline_s
        try:
            async with self.admission.place() as waited:
                if waited and await request.is_disconnected():
                    raise ClientDisconnect  # gone while it waited for its place
                if deadline_s is None:
                    return await self.view.run(request)
                async with request_deadline(deadline_s):
                    return await self.view.run(request)
        except Overloaded as refused:
            return self.admission.refuse(refused, request, state)
        except REFUSED as refused:
            return self.execution.refuse(refused, request, state)
        except ClientDisconnect:
            # Gone while it waited for a place (under load): nothing ran and nobody is
            # there to answer; the access record says so.
            return client_gone(state)
