"""What the REST and GraphQL connectors share: one pooled aiohttp session per connector,
a per-connector timeout and TLS context, and one place that turns transport failures
(TLS ones included) into SourceUnavailable."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from connectors.base import Health, SourceUnavailable, WriteConflict, WriteRefused
from connectors.tls import tls_failure

# Extra headers per outgoing call (e.g. W3C traceparent); set by the gateway.
HeaderHook = Callable[[], Mapping[str, str]]
# Statuses that say "not now" rather than "no": the write was not done; ask again later.
TRY_LATER = frozenset({408, 429})
_DETAIL_CHARS = 300  # of a refusal's answer quoted in the reason (for the operator's log)


def answer_detail(raw: bytes) -> str:
    """What a system said when it refused, shortened: its `error` or `message`, or the
    first GraphQL error's message, when it answered JSON; the text otherwise."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    found: Any = None
    if isinstance(payload, dict):
        found = payload.get("error") or payload.get("message")
        errors = payload.get("errors")
        if not found and isinstance(errors, list) and errors and isinstance(errors[0], dict):
            found = errors[0].get("message")
    text = " ".join((str(found) if found else raw.decode("utf-8", "replace")).split())
    return text[:_DETAIL_CHARS] + ("…" if len(text) > _DETAIL_CHARS else "")


def write_failure(source: str, status: int, where: str, raw: bytes) -> Exception:
    """The error for a write answered with a status outside 2xx: 409 and 412 a conflict;
    any other 4xx but 408 and 429 a refusal (404: no such record); the rest (5xx, 3xx,
    408, 429) the system being unavailable."""
    if status in (409, 412):
        return WriteConflict(source, f"HTTP {status} from {where}: {answer_detail(raw)}")
    if 400 <= status < 500 and status not in TRY_LATER:
        return WriteRefused(source, f"HTTP {status} from {where}: {answer_detail(raw)}", status)
    return SourceUnavailable(source, f"HTTP {status} from {where}")


class HttpClient:
    def __init__(
        self,
        source: str,
        base_url: str,
        *,
        timeout_s: float,
        max_connections: int,
        headers: Mapping[str, str] | None = None,
        header_hook: HeaderHook | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.source = source
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._headers = dict(headers or {})
        self.header_hook = header_hook
        # One verifying context per connector (its CA, its client certificate); None is
        # aiohttp's default, which verifies against the system's trust store.
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ttl_dns_cache=300, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"accept": "application/json", **self._headers},
                json_serialize=lambda value: orjson.dumps(value).decode(),
            )
        return self._session

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        json: Any = None,
        missing_ok: bool = False,
    ) -> Any:
        """The decoded JSON body; None for a 404 when missing_ok. Anything else that is not
        a 2xx JSON answer raises SourceUnavailable."""
        headers = dict(self.header_hook()) if self.header_hook else None
        url = self.base_url + path
        try:
            async with self._get_session().request(
                method, url, params=params, json=json, headers=headers
            ) as response:
                if missing_ok and response.status == 404:
                    return None
                if response.status >= 400:
                    raise SourceUnavailable(self.source, f"HTTP {response.status} from {path}")
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise self._failure(error, path) from error
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise SourceUnavailable(self.source, f"answered with invalid JSON on {path}") from error

    def _failure(self, error: BaseException, path: str, doing: str = "") -> SourceUnavailable:
        if isinstance(error, TimeoutError):
            return SourceUnavailable(
                self.source, f"timed out after {self._timeout_s:.1f}s on {path}{doing}"
            )
        # A certificate the CA does not vouch for, a refused client certificate: the
        # reason goes to the log as "TLS: ...", and there is no retry without TLS.
        reason = tls_failure(error) or f"{type(error).__name__}: {error}"
        if isinstance(error, aiohttp.ServerDisconnectedError) and self.base_url.startswith(
            "https:"
        ):
            # Some TLS stacks (asyncio's among them) drop a client they refuse without
            # sending the alert, so this is all the client learns; say what it may mean.
            reason += " (over TLS: a missing or refused client certificate looks like this)"
        return SourceUnavailable(self.source, reason + doing)

    async def send(self, method: str, path: str, *, json: Any = None) -> tuple[int, bytes]:
        """One write: the status and the raw body, whatever the status (the caller
        decides what a 4xx means). Redirects are not followed (a write is never sent
        twice); transport failures and timeouts raise SourceUnavailable, saying the
        write's outcome is unknown when the request may have reached the system."""
        headers = dict(self.header_hook()) if self.header_hook else None
        try:
            async with self._get_session().request(
                method, self.base_url + path, json=json, headers=headers, allow_redirects=False
            ) as response:
                return response.status, await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            sent = not isinstance(error, aiohttp.ClientConnectorError)
            raise self._failure(
                error, path, " (the write may or may not have happened)" if sent else ""
            ) from error

    async def health(self, path: str) -> Health:
        try:
            await self.request_json("GET", path)
        except SourceUnavailable as error:
            return Health(False, error.reason)
        return Health(True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            # Let aiohttp finish closing the transports before the loop moves on.
            await asyncio.sleep(0)
