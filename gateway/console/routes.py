"""`GET /console` and its static files. The page is a shell with labels and no data: it
carries no token and needs none, and everything it shows it fetches from `/graphql` with
the reviewer's credential (the console's sign-in session with `[console.oidc]`, a pasted
bearer token otherwise), so the policy file decides what it may show."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.console.labels import LANGUAGES, REPORT_LANGUAGES, labels
from gateway.console.report import REPORT

if TYPE_CHECKING:
    from gateway.console.oidc import ConsoleSignIn

HERE = Path(__file__).parent

# No script, style, font or image from anywhere but the gateway itself, no inline script,
# no framing; requests only to the gateway (the GraphQL API).
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def language(accept_language: str | None) -> str:
    """The first Chinese or English entry of Accept-Language; English otherwise."""
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return "en"


async def console_page(
    request: Request, fields: Sequence[str] = (), sign_in: ConsoleSignIn | None = None
) -> HTMLResponse:
    lang = language(request.headers.get("accept-language"))
    context: dict[str, Any] = {
        # How the page signs in: the organisation's provider, a pasted token, or both
        "sign_in": {
            "oidc": sign_in is not None,
            "token": sign_in is None or sign_in.settings.token_sign_in,
        },
        "lang": lang,
        "t": labels()[lang],
        "languages": [(code, labels()[code]["lang.name"]) for code in LANGUAGES],
        "all_labels": labels(),
        "fields": list(fields),
        # A person's report: the command line's own query (so the JSON the page saves is
        # the one `c360 subject report --json` prints) and its page's languages, in order.
        "report": {"query": REPORT, "languages": list(REPORT_LANGUAGES)},
    }
    html = environment().get_template("console.html").render(context)
    return HTMLResponse(html, headers=SECURITY_HEADERS)


def console_routes(
    fields: Sequence[str] = (), sign_in: ConsoleSignIn | None = None
) -> list[BaseRoute]:
    """`fields`: the graph's Customer fields, the timeline's field filter (the declaration's,
    so a department's fields are filterable as soon as they are declared). `sign_in`: the
    OIDC sign-in's routes (/console/login, callback, logout, session) when configured."""
    page = functools.partial(console_page, fields=tuple(fields), sign_in=sign_in)
    return [
        Route("/console", page, methods=["GET"]),
        *(sign_in.routes() if sign_in is not None else []),
        Mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static"),
    ]
