"""The console's sign-in through the organisation's OpenID Connect provider (`[console.oidc]`).

- `/console/login`: the authorization code flow with PKCE (S256), `state` and `nonce`,
  against the issuer's discovery document (fetched with aiohttp, cached).
- `/console/callback`: the code exchanged at the token endpoint (client_secret_basic); the
  ID token verified (the issuer's JWKS, through gateway/auth.py's Authenticator: signature,
  issuer, audience, expiry; then the nonce here); its roles and `amr` checked; a session.
- The session: a random id in an HttpOnly, SameSite=Strict cookie (`Secure`, and named
  `__Host-…`, over TLS), short-lived, kept in this process's memory (bounded) with only
  what is needed: the subject, roles, amr and acr, when the provider's access token
  expires, a CSRF token, and the provider's refresh token (to refresh; never sent to the
  page). The page reads the CSRF token from a second cookie (not HttpOnly) and echoes it
  in `X-CSRF-Token`: /graphql takes the session cookie as the credential only with it.
- `/console/session`: GET says who is signed in and until when; POST refreshes the session
  with the provider's refresh token (or answers 401: sign in again).
- `/console/logout`: ends the session and sends the browser to the provider's
  `end_session_endpoint` (RP-initiated logout with `client_id`) when it has one.

An account without the required `amr` or role gets a refusal page (en, zh-CN) and an
access record (`outcome` rejected, `reason` amr_required or role_required, no customers).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.audit.recorder import access_record, client_name, current_trace_id, now_iso
from gateway.auth import AuthConfig, Authenticator, AuthError
from gateway.console.labels import labels
from gateway.console.routes import SECURITY_HEADERS, environment, language
from gateway.errors import ConfigError
from gateway.http.state import new_request_id
from policies.principal import Principal

log = logging.getLogger("c360.console.oidc")

# The console's purposes of use: a session's principal acts for the first (reviewing the
# access log) unless a request's X-Purpose picks the other (a person's rights, which the
# privacy office runs from the rights page); the policy file decides who may do either.
PURPOSE = "audit"
PURPOSES = (PURPOSE, "rights")
CLIENT = "c360-console"
# Sign-ins started and not yet back from the provider: at most this many, this long.
PENDING_MAX = 1000
PENDING_TTL_S = 600
# Sessions per instance, in memory: past this many, the oldest goes first.
SESSIONS_MAX = 10_000
# A renewal this soon after the last one answers with that one (another tab's).
RENEWED_RECENTLY_S = 30.0
DISCOVERY_TTL_S = 3600.0
HTTP_TIMEOUT_S = 10.0
LOOPBACK_NAMES = {"localhost"}
# What an error code from the provider may look like on the refusal page (RFC 6749 §4.1.2.1)
ERROR_CODE = re.compile(r"[a-z_]{1,64}")
NO_STORE = {"cache-control": "no-store", "referrer-policy": "no-referrer"}


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _https_or_loopback(url: str, key: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"console.oidc.{key}: an http(s) URL")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ConfigError(f"console.oidc.{key}: https, except on the loopback (got {url})")


def _strings(data: Mapping[str, Any], key: str, default: Sequence[str]) -> tuple[str, ...]:
    value = data.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"console.oidc.{key}: a list of names")
    return tuple(value)


def _integer(data: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"console.oidc.{key}: an integer between {low} and {high}")
    return value


@dataclass(frozen=True)
class OIDCSettings:
    """`[console.oidc]`."""

    issuer: str
    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    scopes: tuple[str, ...] = ("openid",)
    roles_claim: str = "roles"  # a dotted path reaches into an object: realm_access.roles
    require_amr: tuple[str, ...] = ()  # every one of these in the ID token's amr
    require_roles: tuple[str, ...] = ()  # one of these among its roles (empty: any role)
    session_ttl_s: int = 900
    session_max_s: int = 28_800  # refreshing never keeps a session longer than this
    redirect_uri: str | None = None  # default: this request's origin + /console/callback
    token_sign_in: bool = False  # also offer the pasted-token sign-in (development)

    KEYS = frozenset(
        {
            "issuer",
            "client_id",
            "client_secret",
            "scopes",
            "roles_claim",
            "require_amr",
            "require_roles",
            "session_ttl_s",
            "session_max_s",
            "redirect_uri",
            "token_sign_in",
        }
    )

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> OIDCSettings:
        if not isinstance(data, Mapping):
            raise ConfigError("console.oidc: expected a table")
        unknown = sorted(set(data) - cls.KEYS)
        if unknown:
            raise ConfigError(f"console.oidc.{unknown[0]}: unknown key")
        for key in ("issuer", "client_id", "client_secret"):
            if not isinstance(data.get(key), str) or not data[key]:
                secret = key == "client_secret"
                hint = " (or set C360_CONSOLE__OIDC__CLIENT_SECRET)" if secret else ""
                raise ConfigError(f"console.oidc.{key}: required{hint}")
        issuer = data["issuer"]
        _https_or_loopback(issuer, "issuer")
        scopes = _strings(data, "scopes", ("openid",))
        if "openid" not in scopes:
            raise ConfigError("console.oidc.scopes: must include openid")
        roles_claim = data.get("roles_claim", "roles")
        if not isinstance(roles_claim, str) or not roles_claim:
            raise ConfigError("console.oidc.roles_claim: a claim name, e.g. roles")
        ttl = _integer(data, "session_ttl_s", 900, 60, 86_400)
        longest = _integer(data, "session_max_s", max(28_800, ttl), ttl, 7 * 86_400)
        redirect_uri = data.get("redirect_uri")
        if redirect_uri is not None:
            if not isinstance(redirect_uri, str):
                raise ConfigError("console.oidc.redirect_uri: an URL ending in /console/callback")
            _https_or_loopback(redirect_uri, "redirect_uri")
            if not urlsplit(redirect_uri).path.endswith("/console/callback"):
                raise ConfigError("console.oidc.redirect_uri: an URL ending in /console/callback")
        token_sign_in = data.get("token_sign_in", False)
        if not isinstance(token_sign_in, bool):
            raise ConfigError("console.oidc.token_sign_in: true or false")
        return cls(
            issuer=issuer,
            client_id=data["client_id"],
            client_secret=data["client_secret"],
            scopes=scopes,
            roles_claim=roles_claim,
            require_amr=_strings(data, "require_amr", ()),
            require_roles=_strings(data, "require_roles", ()),
            session_ttl_s=ttl,
            session_max_s=longest,
            redirect_uri=redirect_uri,
            token_sign_in=token_sign_in,
        )


class ProviderError(Exception):
    """The provider could not be reached, or answered what it should not have."""


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """What the console uses of the issuer's discovery document."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None
    revocation_endpoint: str | None


async def _post_form(
    url: str, form: Mapping[str, str], settings: OIDCSettings
) -> tuple[int, Mapping[str, Any]]:
    """A POST to the provider with the client's credentials (client_secret_basic: the
    form-urlencoded id and secret, RFC 6749 §2.3.1)."""
    credentials = f"{quote_plus(settings.client_id)}:{quote_plus(settings.client_secret)}"
    headers = {
        "accept": "application/json",
        "authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
    }
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as http,
            http.post(url, data=dict(form), headers=headers) as r,
        ):
            text = await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as error:
        raise ProviderError(f"{url}: {error}") from error
    try:
        body = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        body = {}
    return status, body if isinstance(body, dict) else {}


class Discovery:
    """The issuer's `/.well-known/openid-configuration`, fetched once and kept for an hour
    (a failed fetch keeps the last good one)."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._metadata: ProviderMetadata | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> ProviderMetadata:
        async with self._lock:
            fresh = time.monotonic() - self._fetched_at < DISCOVERY_TTL_S
            if self._metadata is not None and fresh:
                return self._metadata
            try:
                self._metadata = await self._fetch()
                self._fetched_at = time.monotonic()
            except ProviderError:
                if self._metadata is None:
                    raise
                log.warning("OIDC discovery failed, keeping the last document", exc_info=True)
            return self._metadata

    async def _fetch(self) -> ProviderMetadata:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as h,
                h.get(self.url, headers={"accept": "application/json"}) as response,
            ):
                response.raise_for_status()
                document = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise ProviderError(f"{self.url}: {error}") from error
        if not isinstance(document, dict):
            raise ProviderError(f"{self.url}: not a JSON object")
        # OpenID Connect Discovery §4.3: the document's issuer is exactly the one configured.
        if document.get("issuer") != self.issuer:
            raise ProviderError(f"{self.url}: its issuer is {document.get('issuer')!r}")
        found: dict[str, str] = {}
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(key)
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise ProviderError(f"{self.url}: no {key}")
            found[key] = value
        optional = {
            key: value if isinstance(value := document.get(key), str) and value else None
            for key in ("end_session_endpoint", "revocation_endpoint")
        }
        return ProviderMetadata(
            authorization_endpoint=found["authorization_endpoint"],
            token_endpoint=found["token_endpoint"],
            jwks_uri=found["jwks_uri"],
            end_session_endpoint=optional["end_session_endpoint"],
            revocation_endpoint=optional["revocation_endpoint"],
        )


@dataclass(frozen=True, slots=True)
class PendingLogin:
    nonce: str
    verifier: str  # PKCE's code_verifier; the provider got its S256 challenge
    redirect_uri: str
    started: float


@dataclass(slots=True)
class ConsoleSession:
    """A signed-in reviewer, as this instance keeps them (no ID or access token)."""

    principal: Principal
    csrf: str
    started: float
    expires_at: float  # unless refreshed: session_ttl_s, or the access token's expiry
    access_expires_at: float | None
    refresh_token: str | None = dataclasses.field(default=None, repr=False)
    renewed_at: float = 0.0
    # Two tabs of one session renew at the same moment: one asks the provider, the other
    # waits and takes its result (a refresh token used twice can revoke the whole grant).
    renewing: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock, repr=False)


def _digest(session_id: str) -> str:
    """Sessions are kept by their id's hash: the table holds nothing a cookie is made of."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Sessions in this process's memory: bounded (SESSIONS_MAX, the oldest dropped first),
    each ending at its expiry. `now` is the clock (tests move it)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self._sessions: dict[str, ConsoleSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: ConsoleSession) -> str:
        session_id = secrets.token_urlsafe(32)
        if len(self._sessions) >= SESSIONS_MAX:
            self._sweep()
        while len(self._sessions) >= SESSIONS_MAX:
            del self._sessions[next(iter(self._sessions))]  # the oldest
        self._sessions[_digest(session_id)] = session
        return session_id

    def get(self, session_id: str) -> ConsoleSession | None:
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is not None and not self.now() < session.expires_at:
            del self._sessions[key]
            return None
        return session

    def remove(self, session_id: str) -> ConsoleSession | None:
        return self._sessions.pop(_digest(session_id), None)

    def _sweep(self) -> None:
        now = self.now()
        for key in [k for k, s in self._sessions.items() if not now < s.expires_at]:
            del self._sessions[key]


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str) and item)
    return ()


class Refusal(Exception):
    """A sign-in that does not end in a session: the page the browser gets."""

    def __init__(
        self,
        key: str,
        status: int,
        params: Mapping[str, str] | None = None,
        principal: Principal | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(key)
        self.key, self.status, self.params = key, status, dict(params or {})
        self.principal, self.reason = principal, reason


class ConsoleSignIn:
    """The console's OIDC sign-in and its sessions, for one gateway instance."""

    def __init__(self, settings: OIDCSettings, account: Callable[[dict[str, Any]], object]) -> None:
        """`account`: queues an access record (the gateway's access log)."""
        self.settings = settings
        self.account = account
        self.discovery = Discovery(settings.issuer)
        self.sessions = SessionStore()
        self._pending: dict[str, PendingLogin] = {}
        self._verifier: Authenticator | None = None

    # --- the credential /graphql accepts --------------------------------------------

    @staticmethod
    def _cookie(request: Request, name: str) -> str | None:
        return request.cookies.get(f"__Host-{name}") or request.cookies.get(name)

    def principal(self, request: Request) -> Principal | None:
        """The session's principal when the request carries the session cookie (None
        without one). AuthError: the session ended or expired (401), the request lacks
        the session's CSRF token in X-CSRF-Token (403), or asks for another purpose."""
        current = self._current(request)
        if current is None:
            return None
        principal = current[1].principal
        purpose = request.headers.get("x-purpose")
        if purpose is None or purpose == principal.purpose:
            return principal
        return dataclasses.replace(principal, purpose=purpose)

    def _current(self, request: Request) -> tuple[str, ConsoleSession] | None:
        session_id = self._cookie(request, "c360-session")
        if session_id is None:
            return None
        session = self.sessions.get(session_id)
        if session is None:
            raise AuthError("The console session has ended or expired: sign in again.")
        sent = request.headers.get("x-csrf-token", "")
        if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise AuthError(
                "A request with the console's session cookie needs its X-CSRF-Token header.",
                status=403,
                reason="csrf",
            )
        purpose = request.headers.get("x-purpose")
        if purpose is not None and purpose not in PURPOSES:
            raise AuthError(
                f"The console session acts for {' or '.join(PURPOSES)} only.", 403, reason="purpose"
            )
        return session_id, session

    # --- the routes -------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/console/login", self.login, methods=["GET"]),
            Route("/console/callback", self.callback, methods=["GET"]),
            Route("/console/logout", self.logout, methods=["GET"]),
            Route("/console/session", self.session, methods=["GET", "POST"]),
        ]

    def _secure(self, request: Request) -> bool:
        """Cookies are `Secure` when the console is served over TLS (or, behind a proxy
        that ends TLS, when the configured redirect URI is https)."""
        configured = self.settings.redirect_uri
        return request.url.scheme == "https" or bool(configured and configured.startswith("https:"))

    def _origin(self, request: Request) -> str:
        if self.settings.redirect_uri:
            parts = urlsplit(self.settings.redirect_uri)
            return f"{parts.scheme}://{parts.netloc}"
        return f"{request.url.scheme}://{request.url.netloc}"

    async def login(self, request: Request) -> Response:
        try:
            provider = await self.discovery.get()
        except ProviderError as error:
            log.warning("OIDC provider unreachable", extra={"reason": str(error)})
            return self._page(request, Refusal("unreachable", 502))
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters, within PKCE's 43-128
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        redirect_uri = self.settings.redirect_uri or self._origin(request) + "/console/callback"
        now = time.time()
        self._pending = {k: p for k, p in self._pending.items() if now - p.started < PENDING_TTL_S}
        while len(self._pending) >= PENDING_MAX:
            del self._pending[next(iter(self._pending))]
        self._pending[state] = PendingLogin(nonce, verifier, redirect_uri, now)
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        }
        if request.query_params.get("prompt") == "login":  # "sign in again", after a refusal
            params["prompt"] = "login"
        endpoint = provider.authorization_endpoint
        url = endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)
        response = RedirectResponse(url, status_code=303, headers=NO_STORE)
        # Binds the sign-in to this browser: the callback must come back with the same
        # state in the cookie (Lax: the provider sends the browser back cross-site).
        secure = self._secure(request)
        response.set_cookie(
            "__Secure-c360-login" if secure else "c360-login",
            state,
            max_age=PENDING_TTL_S,
            path="/console/callback",
            secure=secure,
            httponly=True,
            samesite="lax",
        )
        return response

    async def callback(self, request: Request) -> Response:
        started = time.perf_counter()
        response: Response
        try:
            session_id, session = await self._sign_in(request)
        except Refusal as refusal:
            if refusal.principal is not None:
                self._record_refusal(request, refusal, time.perf_counter() - started)
            response = self._page(request, refusal)
        else:
            response = RedirectResponse("/console", status_code=303, headers=NO_STORE)
            self._set_session_cookies(request, response, session_id, session)
            log.info(
                "console sign-in",
                extra={"subject": session.principal.subject, "amr": sorted(session.principal.amr)},
            )
        secure = self._secure(request)
        response.delete_cookie(
            "__Secure-c360-login" if secure else "c360-login",
            path="/console/callback",
            secure=secure,
            httponly=True,
            samesite="lax",
        )
        return response

    async def _sign_in(self, request: Request) -> tuple[str, ConsoleSession]:
        params = request.query_params
        state = params.get("state", "")
        bound = request.cookies.get("__Secure-c360-login") or request.cookies.get("c360-login")
        pending = self._pending.pop(state, None) if state else None
        if (
            pending is None
            or bound is None
            or not hmac.compare_digest(bound.encode(), state.encode())
            or not time.time() - pending.started < PENDING_TTL_S
        ):
            log.warning("console sign-in refused: unknown, used or foreign state")
            raise Refusal("state", 400)
        # RFC 9207: a provider that names itself in the response must be this one.
        if "iss" in params and params["iss"] != self.settings.issuer:
            raise Refusal("state", 400)
        if "error" in params:
            error = params["error"]
            raise Refusal("provider", 403, {"error": error if ERROR_CODE.fullmatch(error) else "?"})
        code = params.get("code")
        if not code:
            raise Refusal("state", 400)
        try:
            provider = await self.discovery.get()
            status, tokens = await _post_form(
                provider.token_endpoint,
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": pending.redirect_uri,
                    "code_verifier": pending.verifier,
                },
                self.settings,
            )
        except ProviderError as error:
            log.warning("OIDC token endpoint unreachable", extra={"reason": str(error)})
            raise Refusal("unreachable", 502) from error
        id_token = tokens.get("id_token")
        if status != 200 or not isinstance(id_token, str):
            log.warning(
                "OIDC code exchange refused",
                extra={"status": status, "error": str(tokens.get("error"))[:64]},
            )
            raise Refusal("exchange", 502)
        try:
            claims = await self._id_token(id_token, provider, nonce=pending.nonce)
        except AuthError as error:
            log.warning("OIDC ID token refused", extra={"reason": str(error)})
            raise Refusal("id_token", 400) from error
        principal = self._admit(claims)
        now = self.sessions.now()
        session = ConsoleSession(
            principal=principal,
            csrf=secrets.token_urlsafe(32),
            started=now,
            expires_at=now,
            access_expires_at=None,
            renewed_at=now,
        )
        self._extend(session, tokens, now)
        return self.sessions.add(session), session

    async def _id_token(
        self, token: str, provider: ProviderMetadata, nonce: str | None
    ) -> Mapping[str, Any]:
        """The ID token's claims: signed by a key of the issuer's JWKS (the Authenticator's
        checks: the key fixes the algorithm; issuer, audience = client id, expiry), the
        nonce this sign-in sent, and `azp` when it names more than one audience."""
        settings = self.settings
        config = AuthConfig(settings.issuer, settings.client_id, jwks_url=provider.jwks_uri)
        if self._verifier is None:
            self._verifier = Authenticator(config)
        elif self._verifier.config.jwks_url != provider.jwks_uri:
            self._verifier.rotate(config)
        claims = await self._verifier.claims(token)
        if nonce is not None:
            sent = claims.get("nonce")
            if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
                raise AuthError("The ID token's nonce is not this sign-in's.")
        audience = claims.get("aud")
        several = isinstance(audience, list) and len(audience) > 1
        if several and claims.get("azp") != settings.client_id:
            raise AuthError("The ID token was issued to another party (azp).")
        return claims

    def _admit(self, claims: Mapping[str, Any], previous: Principal | None = None) -> Principal:
        """The principal of the ID token's claims, or Refusal: no role the console admits,
        or a sign-in without every `require_amr` method. A refreshed ID token without an
        amr keeps the sign-in's (the refresh continues that authentication)."""
        subject = claims["sub"]
        roles = frozenset(_names(_claim(claims, self.settings.roles_claim)))
        amr_claim = claims.get("amr")
        amr = frozenset(_names(amr_claim)) if amr_claim is not None or previous is None else None
        acr = claims.get("acr")
        department = claims.get("department")
        principal = Principal(
            subject=subject,
            roles=roles,
            purpose=PURPOSE,
            purposes=PURPOSES,
            department=department if isinstance(department, str) else None,
            amr=amr if amr is not None else (previous.amr if previous else frozenset()),
            acr=acr if isinstance(acr, str) else (previous.acr if previous else None),
        )
        required = self.settings.require_roles
        if not roles:
            params = {"subject": subject, "claim": self.settings.roles_claim}
            raise Refusal("norole", 403, params, principal, "role_required")
        if required and not roles & set(required):
            params = {
                "subject": subject,
                "required": ", ".join(required),
                "roles": ", ".join(sorted(roles)),
            }
            raise Refusal("role", 403, params, principal, "role_required")
        missing = [method for method in self.settings.require_amr if method not in principal.amr]
        if missing:
            raise Refusal(
                "amr",
                403,
                {
                    "subject": subject,
                    "required": ", ".join(self.settings.require_amr),
                    "used": ", ".join(sorted(principal.amr)) or "—",
                },
                principal,
                "amr_required",
            )
        return principal

    def _extend(self, session: ConsoleSession, tokens: Mapping[str, Any], now: float) -> None:
        """A session lasts session_ttl_s, no longer than the provider's access token (its
        `expires_in`) nor session_max_s from its sign-in."""
        expires_in = tokens.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            session.access_expires_at = now + float(expires_in)
        refresh_token = tokens.get("refresh_token")
        if isinstance(refresh_token, str) and refresh_token:
            session.refresh_token = refresh_token  # rotated when the provider sends a new one
        ends = [now + self.settings.session_ttl_s, session.started + self.settings.session_max_s]
        if session.access_expires_at is not None:
            ends.append(session.access_expires_at)
        session.expires_at = min(ends)

    def _set_session_cookies(
        self, request: Request, response: Response, session_id: str, session: ConsoleSession
    ) -> None:
        secure = self._secure(request)
        prefix = "__Host-" if secure else ""
        max_age = max(1, math.ceil(session.expires_at - self.sessions.now()))
        response.set_cookie(
            f"{prefix}c360-session",
            session_id,
            max_age=max_age,
            path="/",
            secure=secure,
            httponly=True,
            samesite="strict",
        )
        # The page reads this one and echoes it in X-CSRF-Token (a page elsewhere cannot
        # read it); the gateway compares the header with the session's own copy.
        response.set_cookie(
            f"{prefix}c360-csrf",
            session.csrf,
            max_age=max_age,
            path="/",
            secure=secure,
            httponly=False,
            samesite="strict",
        )

    def _clear_session_cookies(self, request: Request, response: Response) -> None:
        secure = self._secure(request)
        prefix = "__Host-" if secure else ""
        for name, httponly in (("c360-session", True), ("c360-csrf", False)):
            response.delete_cookie(
                f"{prefix}{name}", path="/", secure=secure, httponly=httponly, samesite="strict"
            )

    async def session(self, request: Request) -> Response:
        """GET: who is signed in, until when. POST: refresh the session with the provider's
        refresh token; 401 when it cannot be (no refresh token, refused): sign in again."""
        try:
            current = self._current(request)
        except AuthError as error:
            code = "UNAUTHENTICATED" if error.status == 401 else "FORBIDDEN"
            return _error(str(error), code, error.status)
        if current is None:
            return _error("No console session: sign in.", "UNAUTHENTICATED", 401)
        session_id, session = current
        if request.method == "POST":
            refused = await self._refresh(session)
            if refused is not None:
                self.sessions.remove(session_id)
                response = _error(refused, "UNAUTHENTICATED", 401)
                self._clear_session_cookies(request, response)
                return response
        response = _json(
            {
                "subject": session.principal.subject,
                "roles": sorted(session.principal.roles),
                "amr": sorted(session.principal.amr),
                "purpose": PURPOSE,
                "expiresAt": session.expires_at,
                "refreshable": session.refresh_token is not None,
            }
        )
        if request.method == "POST":
            self._set_session_cookies(request, response, session_id, session)
        return response

    async def _refresh(self, session: ConsoleSession) -> str | None:
        """The session refreshed at the provider (its refresh token; a new ID token's
        roles and amr checked again); None, or why it cannot be."""
        async with session.renewing:
            if self.sessions.now() - session.renewed_at < RENEWED_RECENTLY_S:
                return None
            return await self._renew(session)

    async def _renew(self, session: ConsoleSession) -> str | None:
        if session.refresh_token is None:
            return "The provider gave no refresh token: sign in again."
        now = self.sessions.now()
        if not now < session.started + self.settings.session_max_s:
            return "The console session reached its longest duration: sign in again."
        try:
            provider = await self.discovery.get()
            status, tokens = await _post_form(
                provider.token_endpoint,
                {"grant_type": "refresh_token", "refresh_token": session.refresh_token},
                self.settings,
            )
        except ProviderError as error:
            log.warning("OIDC refresh failed", extra={"reason": str(error)})
            return "The identity provider could not be reached: sign in again."
        if status != 200:
            return "The identity provider refused to refresh the session: sign in again."
        id_token = tokens.get("id_token")
        if isinstance(id_token, str):
            try:
                claims = await self._id_token(id_token, provider, nonce=None)
                if claims["sub"] != session.principal.subject:
                    return "The refreshed sign-in is another account's: sign in again."
                session.principal = self._admit(claims, previous=session.principal)
            except (AuthError, Refusal):
                return "The refreshed sign-in was refused: sign in again."
        self._extend(session, tokens, now)
        session.renewed_at = now
        return None

    async def logout(self, request: Request) -> Response:
        session_id = self._cookie(request, "c360-session")
        session = self.sessions.remove(session_id) if session_id else None
        target = "/console"
        try:
            provider: ProviderMetadata | None = await self.discovery.get()
        except ProviderError:
            provider = None
        if provider is not None and session is not None and session.refresh_token is not None:
            await self._revoke(provider, session.refresh_token)
        if provider is not None and provider.end_session_endpoint:
            endpoint = provider.end_session_endpoint
            query = urlencode(
                {
                    "client_id": self.settings.client_id,
                    "post_logout_redirect_uri": self._origin(request) + "/console",
                }
            )
            target = endpoint + ("&" if "?" in endpoint else "?") + query
        if session is not None:
            log.info("console sign-out", extra={"subject": session.principal.subject})
        response = RedirectResponse(target, status_code=303, headers=NO_STORE)
        self._clear_session_cookies(request, response)
        return response

    async def _revoke(self, provider: ProviderMetadata, refresh_token: str) -> None:
        """The refresh token revoked at the provider when it can (RFC 7009), best effort."""
        if provider.revocation_endpoint is None:
            return
        form = {"token": refresh_token, "token_type_hint": "refresh_token"}
        try:
            await _post_form(provider.revocation_endpoint, form, self.settings)
        except ProviderError as error:
            log.warning("OIDC revocation failed", extra={"reason": str(error)})

    # --- refusals -----------------------------------------------------------------------

    def _page(self, request: Request, refusal: Refusal) -> HTMLResponse:
        lang = language(request.headers.get("accept-language"))
        t = labels()[lang]
        text = t[f"refused.{refusal.key}"]
        for name, value in refusal.params.items():
            text = text.replace(f"{{{name}}}", value)
        html_text = (
            environment()
            .get_template("refused.html")
            .render(lang=lang, t=t, text=text, again=refusal.key in ("amr", "role", "norole"))
        )
        return HTMLResponse(html_text, status_code=refusal.status, headers=SECURITY_HEADERS)

    def _record_refusal(self, request: Request, refusal: Refusal, seconds: float) -> None:
        """The refused sign-in in the access log, as a rejected request of the subject the
        provider named: its roles, the console's purpose, no customers."""
        record = access_record(
            ts=now_iso(),
            trace_id=current_trace_id(),
            request_id=new_request_id(),
            principal=refusal.principal,
            client=client_name(CLIENT),
            status=refusal.status,
            outcome="rejected",
            duration_ms=seconds * 1000,
            reason=refusal.reason,
        )
        self.account(record)
        log.warning(
            "console sign-in refused",
            extra={"subject": record["subject"], "reason": refusal.reason},
        )


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=NO_STORE
    )


def _error(message: str, code: str, status: int) -> Response:
    return _json({"errors": [{"message": message, "extensions": {"code": code}}]}, status)
