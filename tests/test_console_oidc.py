"""The security console's sign-in through a real OpenID Connect provider: `oidc-provider`
(npm, certified) started from tests/systems/oidc/provider.mjs, with its development login
and consent pages, one confidential client (client_secret_basic, PKCE required) and three
accounts: `reviewer` (security, pwd+mfa), `nomfa` (security, pwd only), `seller` (sales).

In headless chromium: the console's button, the provider's login and consent pages, the
signed-in overview, signing out through the provider; `nomfa`'s refusal page. Over HTTP
(aiohttp, the same pages): the cookies' flags (over TLS too), the CSRF requirement on
/graphql, expiry and refresh, state/nonce/PKCE mismatches, the access records."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html
import json
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson
import pytest
from yarl import URL

from bench.console_page import CHROMEDRIVER, CHROMIUM, FLAGS
from bench.console_page import missing as missing_browser
from connectors.tls import client_context
from demo.ca import DemoCertificates
from demo.systems import DemoSystems
from gateway.audit.sinks import JsonlSink
from gateway.config import ConfigError
from gateway.console.oidc import ConsoleSignIn, OIDCSettings
from gateway.console.report import REPORT
from gateway.tls import ServerTLS
from harness import RunningGateway, node_and_npm, running_gateway, unavailable

OIDC_DIR = Path(__file__).parent / "systems" / "oidc"
CLIENT_ID = "c360-console"
CLIENT_SECRET = "c360-console-test-secret-9f1c2e"
PASSWORDS = {"reviewer": "reviewer-pass", "nomfa": "nomfa-pass", "seller": "seller-pass"}
# What the console asks first and what its overview shows: a console read and a write.
SIGNED_IN = "query ConsoleSignIn { accessAlerts(first: 0) { pageInfo { hasNextPage } } }"
EXPORT = """mutation ConsoleExport { recordConsoleExport(view: OVERVIEW, table: TOP_SUBJECTS,
  rows: 1) { requestId } }"""


# --- the provider ------------------------------------------------------------------------


async def _node() -> str:
    """node, with the provider's package installed once (skip without node/npm; CI=true
    fails instead)."""
    node, npm = node_and_npm()
    if not (OIDC_DIR / "node_modules" / "oidc-provider").exists():
        process = await asyncio.create_subprocess_exec(
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            cwd=OIDC_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 300)
        assert process.returncode == 0, output.decode(errors="replace")
    return node


@pytest.fixture(scope="session")
async def issuer() -> AsyncIterator[str]:
    """The provider, running for the session: its issuer URL."""
    node = await _node()
    process = await asyncio.create_subprocess_exec(
        node,
        "provider.mjs",
        cwd=OIDC_DIR,
        env={**os.environ, "OIDC_CLIENT_ID": CLIENT_ID, "OIDC_CLIENT_SECRET": CLIENT_SECRET},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,  # its development-mode warnings
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = await process.stdout.readline()
        assert line, "provider.mjs ended before listening"
        port = int(json.loads(line)["port"])
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


def oidc_config(issuer: str, **extra: Any) -> dict[str, Any]:
    return {
        "console.oidc": {
            "issuer": issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": ["openid", "roles"],
            "require_roles": ["security"],
            "require_amr": ["mfa"],
            **extra,
        }
    }


@pytest.fixture(scope="module")
async def console(
    demo_systems: DemoSystems, issuer: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    """A gateway whose console signs in through the provider."""
    async with running_gateway(
        demo_systems, tmp_path_factory.mktemp("oidc-gateway"), oidc_config(issuer)
    ) as running:
        yield running


def sign_in_of(gateway: RunningGateway) -> ConsoleSignIn:
    sign_in = gateway.gateway.console_sign_in
    assert sign_in is not None
    return sign_in


# --- signing in over HTTP, through the provider's own pages ---------------------------------


@dataclass
class SignIn:
    """What one sign-in through the provider showed: every answer's Set-Cookie on the way,
    the authorization request, and the callback's answer."""

    authorize: str = ""
    login_cookie: Morsel[str] | None = None
    callback_status: int = 0
    callback_location: str = ""
    callback_page: str = ""
    cookies: dict[str, Morsel[str]] = dataclasses.field(default_factory=dict)

    def value(self, name: str) -> str:
        return self.cookies[name].value

    def headers(self, csrf: bool = True) -> dict[str, str]:
        """A console request's headers: the session's cookie (and its CSRF token)."""
        session = next(m for n, m in self.cookies.items() if n.endswith("c360-session"))
        token = next(m for n, m in self.cookies.items() if n.endswith("c360-csrf"))
        headers = {"cookie": f"{session.key}={session.value}", "authorization": ""}
        if csrf:
            headers["x-csrf-token"] = token.value
        return headers


def _set_cookies(response: aiohttp.ClientResponse) -> dict[str, Morsel[str]]:
    found: dict[str, Morsel[str]] = {}
    for header in response.headers.getall("set-cookie", []):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        found.update(jar)
    return found


FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')


async def sign_in(
    gateway: RunningGateway,
    account: str,
    *,
    language: str = "en",
    tamper: Mapping[str, str] | None = None,
    password: str | None = None,
    client_ssl: ssl.SSLContext | None = None,
) -> SignIn:
    """/console/login, the provider's login and consent pages, back to /console/callback.
    `tamper`: parameters of the authorization request changed on the way to the provider
    (what an attacker's injected code would have been issued for)."""
    seen = SignIn()
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    connector = aiohttp.TCPConnector(ssl=client_ssl if client_ssl is not None else True)
    callback = gateway.url + "/console/callback"
    async with aiohttp.ClientSession(
        cookie_jar=jar, connector=connector, headers={"accept-language": language}
    ) as http:
        async with http.get(gateway.url + "/console/login", allow_redirects=False) as login:
            assert login.status == 303, await login.text()
            seen.authorize = login.headers["location"]
            seen.login_cookie = next(iter(_set_cookies(login).values()))
        url = seen.authorize
        if tamper:
            parts = urlsplit(url)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()} | dict(tamper)
            url = urlunsplit(parts._replace(query=urlencode(query)))
        method, form = "GET", None
        for _ in range(20):
            async with http.request(method, url, data=form, allow_redirects=False) as answer:
                if url.startswith(callback):
                    seen.callback_status = answer.status
                    seen.callback_location = answer.headers.get("location", "")
                    seen.callback_page = html.unescape(await answer.text())
                    seen.cookies = _set_cookies(answer)
                    return seen
                if answer.status in (302, 303):
                    method, form = "GET", None
                    url = str(answer.url.join(URL(answer.headers["location"])))
                    continue
                page = await answer.text()
                assert answer.status == 200, page
                action = FORM_ACTION.search(page)
                assert action, page
                url = str(answer.url.join(URL(action.group(1))))
                method = "POST"
                if 'name="login"' in page:
                    secret = password or PASSWORDS[account]
                    form = {"prompt": "login", "login": account, "password": secret}
                else:
                    form = {"prompt": "consent"}
    raise AssertionError("the sign-in did not come back to the console")


async def records(gateway: RunningGateway) -> list[dict[str, Any]]:
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    return [record for _, record in sink.lines() if record is not None]


async def session_info(
    gateway: RunningGateway, headers: Mapping[str, str], method: str = "GET"
) -> tuple[int, dict[str, Any], dict[str, Morsel[str]]]:
    async with gateway.http.request(
        method, gateway.url + "/console/session", headers=headers
    ) as answer:
        return answer.status, orjson.loads(await answer.read()), _set_cookies(answer)


@contextlib.contextmanager
def clock_ahead(gateway: RunningGateway, seconds: float) -> Iterator[None]:
    """The sessions' clock moved forward (as if the reviewer had waited)."""
    sessions = sign_in_of(gateway).sessions
    sessions.now = lambda: time.time() + seconds
    try:
        yield
    finally:
        sessions.now = time.time


# --- over HTTP ---------------------------------------------------------------------------------


async def test_the_sign_in_runs_the_code_flow_with_pkce_and_sets_strict_cookies(
    console: RunningGateway, issuer: str
) -> None:
    seen = await sign_in(console, "reviewer")
    # The authorization request: code flow, PKCE S256, state and nonce, the configured scopes.
    authorize = urlsplit(seen.authorize)
    query = {k: v[0] for k, v in parse_qs(authorize.query).items()}
    assert seen.authorize.startswith(issuer + "/auth?")
    assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 43 and len(query["nonce"]) >= 43
    assert query["scope"] == "openid roles"
    assert query["redirect_uri"] == console.url + "/console/callback"
    # The state is bound to the browser by a short-lived Lax cookie, for the callback only.
    login = seen.login_cookie
    assert login is not None and login.key == "c360-login" and login.value == query["state"]
    assert login["httponly"] and login["samesite"].lower() == "lax"
    assert login["path"] == "/console/callback" and int(login["max-age"]) == 600
    assert not login["secure"]  # plain http here; see the TLS test

    assert seen.callback_status == 303, seen.callback_page
    assert seen.callback_location == "/console"
    session, csrf = seen.cookies["c360-session"], seen.cookies["c360-csrf"]
    assert session["httponly"] and session["samesite"].lower() == "strict"
    assert session["path"] == "/" and not session["secure"]
    # Short-lived: the provider's access token lives 600 s, under session_ttl_s (900).
    assert 590 <= int(session["max-age"]) <= 600
    assert not csrf["httponly"] and csrf["samesite"].lower() == "strict"
    assert seen.cookies["c360-login"]["max-age"] == "0"  # used once, then gone
    assert session.value != csrf.value and len(session.value) >= 43

    status, info, _ = await session_info(console, seen.headers())
    assert status == 200, info
    assert info["subject"] == "reviewer" and info["roles"] == ["security"]
    assert info["amr"] == ["mfa", "pwd"] and info["purpose"] == "audit"
    assert info["refreshable"] is True
    # The server keeps the session by its id's hash, with no ID or access token.
    kept = list(sign_in_of(console).sessions._sessions.values())[-1]
    assert kept.principal.subject == "reviewer"
    assert "eyJ" not in repr(kept) and seen.value("c360-session") not in repr(kept)


async def test_graphql_takes_the_session_cookie_only_with_its_csrf_token(
    console: RunningGateway,
) -> None:
    seen = await sign_in(console, "reviewer")
    with_token = seen.headers()
    cookie_only = seen.headers(csrf=False)
    read = await console.query(SIGNED_IN, headers=with_token)
    assert read.status == 200 and not read.errors, read.body
    assert read.data["accessAlerts"]["pageInfo"]["hasNextPage"] is False
    written = await console.query(EXPORT, headers=with_token)
    assert written.status == 200 and not written.errors, written.body

    # The cookie alone (what a cross-site form or link would carry): refused, read or write.
    for document in (SIGNED_IN, EXPORT):
        refused = await console.query(document, headers=cookie_only)
        assert refused.status == 403 and refused.codes() == ["FORBIDDEN"], refused.body
        assert "X-CSRF-Token" in refused.errors[0]["message"] and "data" not in refused.body
    wrong = await console.query(SIGNED_IN, headers={**cookie_only, "x-csrf-token": "guess"})
    assert wrong.status == 403 and wrong.codes() == ["FORBIDDEN"]
    # Another session's CSRF token does not fit this session either.
    other = await sign_in(console, "reviewer")
    crossed = {**cookie_only, "x-csrf-token": other.value("c360-csrf")}
    assert (await console.query(SIGNED_IN, headers=crossed)).status == 403
    # The session acts for the console's purposes only: the log's review (audit) ...
    marketing = await console.query(SIGNED_IN, headers={**with_token, "x-purpose": "marketing"})
    assert marketing.status == 403 and marketing.codes() == ["FORBIDDEN"]
    # ... and a person's rights, where the policy file decides by role (security: no).
    report = await console.query(
        REPORT, {"customer": "cus_" + "a" * 16}, headers={**with_token, "x-purpose": "rights"}
    )
    assert report.status == 200 and report.codes() == ["FORBIDDEN"], report.body
    assert report.errors[0]["extensions"]["policy"] == "rights.report"
    # A bearer token, when there is one, is the credential; the cookie is not looked at.
    bearer = await console.query(SIGNED_IN, headers={**cookie_only, **console.as_role("sales")})
    assert bearer.status == 200 and bearer.codes() == ["FORBIDDEN"]  # sales: audit.read denies
    assert bearer.errors[0]["extensions"]["policy"] == "audit.read"
    # Without a cookie or a token: 401, as before.
    anonymous = await console.query(SIGNED_IN, headers={"authorization": ""})
    assert anonymous.status == 401 and anonymous.codes() == ["UNAUTHENTICATED"]

    # The session's requests are in the access log under the provider's subject.
    logged = [r for r in await records(console) if r["subject"] == "reviewer"]
    served = [r for r in logged if r["status"] == 200]
    assert served and {tuple(r["roles"]) for r in served} == {("security",)}
    assert {r["purpose"] for r in served} == {"audit", "rights"}
    assert any(r["operation"] == "ConsoleSignIn" for r in served)
    assert any(r["operation_type"] == "mutation" for r in served)
    # The refused ones too (before any principal: no subject), with their reason.
    csrf_refusals = [r for r in await records(console) if r["reason"] == "csrf"]
    assert len(csrf_refusals) == 4 and {r["subject"] for r in csrf_refusals} == {None}
    assert all(r["status"] == 403 and r["outcome"] == "rejected" for r in csrf_refusals)


async def test_an_expired_session_is_refused_and_a_live_one_is_refreshed(
    console: RunningGateway,
) -> None:
    seen = await sign_in(console, "reviewer")
    headers = seen.headers()
    _, before, _ = await session_info(console, headers)

    # Ten minutes on, just before its end: refreshed with the provider's refresh token, the
    # session lives on (new cookies, a later end, the new ID token's claims checked again).
    with clock_ahead(console, 590):
        status, after, cookies = await session_info(console, headers, "POST")
        assert status == 200, after
        assert after["expiresAt"] > before["expiresAt"] + 500
        assert after["subject"] == "reviewer" and after["amr"] == ["mfa", "pwd"]
        assert 590 <= int(cookies["c360-session"]["max-age"]) <= 600
        assert cookies["c360-session"].value == seen.value("c360-session")
        assert (await console.query(SIGNED_IN, headers=headers)).status == 200

    # Two tabs renewing at once: one renewal at the provider (whose refresh tokens are
    # single-use), both answered, the session alive.
    with clock_ahead(console, 590 + 590):
        both = await asyncio.gather(*(session_info(console, headers, "POST") for _ in range(2)))
        assert [status for status, _, _ in both] == [200, 200], both
        assert both[0][1]["expiresAt"] == both[1][1]["expiresAt"] > after["expiresAt"] + 500
        assert (await console.query(SIGNED_IN, headers=headers)).status == 200
        after = both[0][1]

    # Past its end (and without a refresh in time): refused, and cannot be refreshed.
    with clock_ahead(console, 590 + 590 + 601):
        expired = await console.query(SIGNED_IN, headers=headers)
        assert expired.status == 401 and expired.codes() == ["UNAUTHENTICATED"]
        assert "data" not in expired.body
        status, body, _ = await session_info(console, headers, "POST")
        assert status == 401 and body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    # Gone for good: the clock back does not bring it back.
    assert (await console.query(SIGNED_IN, headers=headers)).status == 401


async def test_state_nonce_and_pkce_mismatches_are_refused(console: RunningGateway) -> None:
    before = len(sign_in_of(console).sessions)
    # An ID token issued for another authorization request (another nonce), its code sent
    # back with this sign-in's state: the nonce does not match.
    nonce = await sign_in(console, "reviewer", tamper={"nonce": "n" * 43})
    assert nonce.callback_status == 400 and "could not be verified" in nonce.callback_page
    # A code issued for another PKCE challenge: the provider refuses the exchange.
    pkce = await sign_in(console, "reviewer", tamper={"code_challenge": "c" * 43})
    assert pkce.callback_status == 502
    assert "did not accept the sign-in's code" in pkce.callback_page
    # Another state than the one this browser started with.
    state = await sign_in(console, "reviewer", tamper={"state": "s" * 43})
    assert state.callback_status == 400 and "could not be completed" in state.callback_page
    assert all(not seen.cookies.get("c360-session") for seen in (nonce, pkce, state))
    assert len(sign_in_of(console).sessions) == before

    # The right state without the browser's login cookie (a callback link sent to someone
    # else), and a callback replayed: refused.
    async with console.http.get(console.url + "/console/login", allow_redirects=False) as r:
        started = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
    callback = f"{console.url}/console/callback?code=abc&state={started}"
    async with console.http.get(callback, allow_redirects=False) as foreign:
        assert foreign.status == 400
    good = await sign_in(console, "reviewer")
    assert good.callback_status == 303
    state_again = parse_qs(urlsplit(good.authorize).query)["state"][0]
    replay = f"{console.url}/console/callback?code=abc&state={state_again}"
    headers = {"cookie": f"c360-login={state_again}"}
    async with console.http.get(replay, headers=headers, allow_redirects=False) as replayed:
        assert replayed.status == 400
        assert "could not be completed" in await replayed.text()


async def test_an_account_without_mfa_or_the_role_gets_a_refusal_page_and_a_record(
    console: RunningGateway,
) -> None:
    nomfa = await sign_in(console, "nomfa")
    assert nomfa.callback_status == 403 and "c360-session" not in nomfa.cookies
    assert "requires a sign-in with mfa" in nomfa.callback_page
    assert "nomfa used pwd" in nomfa.callback_page
    assert 'href="/console/login?prompt=login"' in nomfa.callback_page  # sign in again
    chinese = await sign_in(console, "nomfa", language="zh-CN,zh;q=0.9")
    assert chinese.callback_status == 403
    assert "安全控制台要求以 mfa 方式登录" in chinese.callback_page
    assert '<html lang="zh-CN">' in chinese.callback_page
    seller = await sign_in(console, "seller")
    assert seller.callback_status == 403 and "c360-session" not in seller.cookies
    assert "none of the roles the security console admits (security)" in seller.callback_page
    wrong = await sign_in(console, "reviewer", password="not-the-password")
    assert wrong.callback_status == 403 and "access_denied" in wrong.callback_page

    written = await records(console)
    refused = {r["subject"]: r for r in written if r["reason"] in ("amr_required", "role_required")}
    assert refused["nomfa"]["reason"] == "amr_required"
    assert refused["seller"]["reason"] == "role_required" and refused["seller"]["roles"] == [
        "sales"
    ]
    for record in refused.values():
        assert record["outcome"] == "rejected" and record["status"] == 403
        assert record["customers"] == [] and record["fields"] == {}
        assert record["purpose"] == "audit" and record["client"] == "c360-console"
        assert record["hash"] and record["prev_hash"]  # sealed into the chain


async def test_sign_out_ends_the_session_and_goes_to_the_providers_end_session(
    console: RunningGateway, issuer: str
) -> None:
    seen = await sign_in(console, "reviewer")
    headers = seen.headers()
    assert (await console.query(SIGNED_IN, headers=headers)).status == 200
    async with console.http.get(
        console.url + "/console/logout", headers=headers, allow_redirects=False
    ) as out:
        assert out.status == 303
        target = urlsplit(out.headers["location"])
        cleared = _set_cookies(out)
    assert f"{target.scheme}://{target.netloc}{target.path}" == issuer + "/session/end"
    assert parse_qs(target.query) == {
        "client_id": [CLIENT_ID],
        "post_logout_redirect_uri": [console.url + "/console"],
    }
    assert cleared["c360-session"]["max-age"] == "0" and cleared["c360-csrf"]["max-age"] == "0"
    after = await console.query(SIGNED_IN, headers=headers)
    assert after.status == 401 and after.codes() == ["UNAUTHENTICATED"]


async def test_over_tls_the_cookies_are_secure_and_host_prefixed(
    demo_systems: DemoSystems, issuer: str, tmp_path: Path
) -> None:
    certs = await asyncio.to_thread(DemoCertificates.create, tmp_path / "ca")
    trust = client_context(certs.ca_file)
    async with running_gateway(
        demo_systems,
        tmp_path / "gateway",
        oidc_config(issuer),
        server_tls=ServerTLS(certs.gateway.cert_file, certs.gateway.key_file),
        client_ssl=trust,
    ) as gateway:
        assert gateway.url.startswith("https://")
        seen = await sign_in(gateway, "reviewer", client_ssl=trust)
        login = seen.login_cookie
        assert login is not None and login.key == "__Secure-c360-login" and login["secure"]
        assert seen.callback_status == 303
        session, csrf = seen.cookies["__Host-c360-session"], seen.cookies["__Host-c360-csrf"]
        assert session["secure"] and session["httponly"] and session["path"] == "/"
        assert csrf["secure"] and not csrf["httponly"]
        assert "c360-session" not in seen.cookies
        reply = await gateway.query(SIGNED_IN, headers=seen.headers())
        assert reply.status == 200 and not reply.errors, reply.body


async def test_without_console_oidc_the_cookie_is_no_credential(gateway: RunningGateway) -> None:
    status, _ = await gateway.get("/console/login")
    assert status == 404
    headers = {"authorization": "", "cookie": "c360-session=x", "x-csrf-token": "x"}
    reply = await gateway.query(SIGNED_IN, headers=headers)
    assert reply.status == 401 and reply.codes() == ["UNAUTHENTICATED"]
    status, page = await gateway.get("/console")
    assert status == 200 and 'id="signin-form"' in page and "/console/login" not in page


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"issuer": "http://sso.example.com"}, "console.oidc.issuer"),
        ({"client_secret": ""}, "console.oidc.client_secret"),
        ({"scopes": ["roles"]}, "console.oidc.scopes"),
        ({"session_ttl_s": 5}, "console.oidc.session_ttl_s"),
        ({"redirect_uri": "https://c360.example.com/elsewhere"}, "console.oidc.redirect_uri"),
        ({"require_amr": "mfa"}, "console.oidc.require_amr"),
        ({"client": "x"}, "console.oidc.client"),
    ],
)
def test_console_oidc_settings_errors_name_the_key(change: dict[str, Any], key: str) -> None:
    settings = {
        "issuer": "https://sso.example.com/realms/corp",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **change,
    }
    with pytest.raises(ConfigError, match=re.escape(key)):
        OIDCSettings.parse(settings)
    parsed = OIDCSettings.parse(
        {"issuer": "https://sso.example.com", "client_id": "c", "client_secret": CLIENT_SECRET}
    )
    assert (parsed.scopes, parsed.roles_claim, parsed.session_ttl_s) == (("openid",), "roles", 900)
    assert parsed.session_max_s == 28_800 and parsed.require_amr == ()
    assert CLIENT_SECRET not in repr(parsed)  # out of logs and tracebacks


# --- in the browser ----------------------------------------------------------------------------


def _require_browser() -> None:
    absent = missing_browser()
    if absent is None:
        return
    unavailable(f"{absent} (make test installs chromium and chromium-driver)")


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    # The provider's development pages import a web font: nothing leaves this machine.
    options.add_argument(
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"
    )
    options.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1280, 800)
    return driver


def browse(base: str, shots: Path) -> dict[str, Any]:
    """Runs in a thread (Selenium blocks; the gateway serves on the test's loop)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    seen: dict[str, Any] = {}
    driver = _browser()

    def find(css: str) -> Any:
        return driver.find_element(By.CSS_SELECTOR, css)

    def wait(condition: Any, timeout: float = 15) -> Any:
        ignored = (NoSuchElementException, StaleElementReferenceException)
        return WebDriverWait(driver, timeout, 0.05, ignored_exceptions=ignored).until(
            lambda _: condition()
        )

    def provider_sign_in(account: str) -> None:
        wait(lambda: find("input[name=login]").is_displayed())
        seen.setdefault("provider_pages", []).append(driver.current_url.split("/interaction")[0])
        find("input[name=login]").send_keys(account)
        find("input[name=password]").send_keys(PASSWORDS[account])
        find("button[type=submit]").click()
        # The consent page (first sign-in of the account to this client).
        wait(lambda: "/interaction/" not in driver.current_url or find("input[value=consent]"))
        if "/interaction/" in driver.current_url:
            driver.save_screenshot(str(shots / f"consent-{account}.png"))
            find("button[type=submit]").click()

    try:
        driver.get(base + "/console")
        wait(lambda: find("#signin").is_displayed())
        seen["token_form"] = len(driver.find_elements(By.CSS_SELECTOR, "#signin-form"))
        seen["button"] = find("#signin-provider").text
        driver.save_screenshot(str(shots / "signin.png"))
        find("#signin-provider").click()
        provider_sign_in("reviewer")
        # Back on the console, signed in: the overview with its data.
        wait(lambda: find("#view").get_attribute("data-ready") == "overview")
        wait(lambda: find("#chart-roles").is_displayed())
        seen["url"] = driver.current_url
        seen["whoami"] = find("#whoami").text
        seen["overview_heading"] = find("#view h1").text
        seen["kept"] = driver.execute_script(
            "return [document.cookie, Object.keys(sessionStorage), Object.keys(localStorage)]"
        )
        seen["page_source"] = driver.page_source
        driver.save_screenshot(str(shots / "overview.png"))

        # Sign out: the gateway ends the session, the provider asks, then back to the console.
        find("#signout").click()
        wait(lambda: find("button[name=logout][value=yes]").is_displayed())
        find("button[name=logout][value=yes]").click()
        wait(lambda: driver.current_url.startswith(base + "/console"))
        wait(lambda: find("#signin").is_displayed())
        seen["after_signout"] = {
            "signin": find("#signin").is_displayed(),
            "view": find("#view").is_displayed(),
            "cookie": driver.execute_script("return document.cookie"),
        }

        # Without a second factor: the refusal page, in English.
        find("#signin-provider").click()
        provider_sign_in("nomfa")
        wait(lambda: find("#refused").is_displayed())
        seen["refused"] = find("#refused").text
        seen["refused_url"] = driver.current_url
        seen["refused_cookie"] = driver.execute_script("return document.cookie")
        driver.save_screenshot(str(shots / "refused.png"))
    finally:
        driver.quit()
    return seen


async def test_signing_in_through_the_provider_in_a_browser(
    console: RunningGateway, issuer: str, tmp_path: Path
) -> None:
    _require_browser()
    seen = await asyncio.to_thread(browse, console.url, tmp_path)

    assert seen["token_form"] == 0  # the pasted-token form is not offered with [console.oidc]
    assert seen["button"] == "Sign in with your organisation's account"
    assert seen["provider_pages"] == [issuer, issuer]  # the provider's own login page, twice
    assert seen["url"].startswith(console.url + "/console")
    assert seen["whoami"] == "Signed in as reviewer"
    assert seen["overview_heading"]
    cookie, session_keys, local_keys = seen["kept"]
    # Only the CSRF token is readable by the page; the session cookie is HttpOnly, and no
    # token is kept anywhere in the page.
    assert re.fullmatch(r"c360-csrf=[\w-]{43}", cookie), cookie
    assert session_keys == [] and local_keys in ([], ["c360.console.lang"])
    assert "eyJ" not in seen["page_source"]
    assert seen["after_signout"] == {"signin": True, "view": False, "cookie": ""}
    assert "Sign-in refused" in seen["refused"]
    assert "requires a sign-in with mfa" in seen["refused"]
    assert seen["refused_url"].startswith(console.url + "/console/callback")
    assert seen["refused_cookie"] == ""

    written = await records(console)
    assert any(r["subject"] == "reviewer" and r["operation"] == "ConsoleSignIn" for r in written)
    assert any(r["subject"] == "nomfa" and r["reason"] == "amr_required" for r in written)


async def test_the_page_offers_the_token_sign_in_beside_the_provider_when_asked() -> None:
    from starlette.requests import Request

    from gateway.console.routes import console_page

    settings = OIDCSettings.parse(
        {
            "issuer": "https://sso.example.com",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "token_sign_in": True,
        }
    )
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/console",
        "headers": [],
        "query_string": b"",
    }
    page = await console_page(Request(scope), sign_in=ConsoleSignIn(settings, lambda _: None))
    text = page.body.decode()
    assert 'id="signin-provider" class="button" href="/console/login"' in text
    assert 'id="signin-form"' in text and CLIENT_SECRET not in text


def test_the_client_secret_can_come_from_the_environment(tmp_path: Path) -> None:
    from gateway.config import apply_env

    data = apply_env(
        {"console": {"oidc": {"issuer": "https://sso.example.com", "client_id": CLIENT_ID}}},
        {"C360_CONSOLE__OIDC__CLIENT_SECRET": "from-the-environment"},
    )
    assert OIDCSettings.parse(data["console"]["oidc"]).client_secret == "from-the-environment"
