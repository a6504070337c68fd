"""TLS for the gateway: the server context `c360 serve` terminates TLS with (optionally
requiring client certificates), HSTS on every response served over TLS, and pinning a
PostgreSQL server's certificate. The demo's throwaway CA lives in `demo/ca.py`.

Client contexts (the gateway towards department systems) live in `connectors.tls`, since
connectors may not import the gateway; `client_context` is re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.tls import client_context, harden
from gateway.errors import ConfigError

__all__ = [
    "HSTS",
    "SERVER_TLS_KEYS",
    "HSTSMiddleware",
    "ServerTLS",
    "client_context",
    "pin_postgres",
    "server_context",
    "uvicorn_ssl_context",
]

# One year; no includeSubDomains, because the gateway cannot speak for the other hosts
# under its domain.
HSTS = "max-age=31536000"
# The `[server]` keys this module reads (gateway/config.py lets them through).
SERVER_TLS_KEYS = frozenset({"tls_cert", "tls_key", "tls_client_ca"})


def server_context(
    cert_file: str | Path, key_file: str | Path, client_ca: str | Path | None = None
) -> ssl.SSLContext:
    """TLS 1.2+ with forward-secret AEAD suites. With `client_ca`, a client must present a
    certificate that CA signed (mTLS); without, none is asked for, which is what
    `verify_mode == CERT_NONE` means on a server socket."""
    context = harden(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    context.load_cert_chain(str(cert_file), str(key_file))
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """The certificate, key and optional client CA `c360 serve` terminates TLS with."""

    cert_file: Path
    key_file: Path
    client_ca: Path | None = None
    from_flags: bool = False  # name --tls-cert/--tls-key in errors rather than server.*

    @classmethod
    def from_server_table(cls, table: Mapping[str, Any], base_dir: Path | None) -> Self | None:
        """From `[server]`'s `tls_cert`, `tls_key`, `tls_client_ca` (relative paths are
        relative to the config file, like every other path in it); None for plain HTTP."""
        values: dict[str, Path] = {}
        for key in sorted(SERVER_TLS_KEYS):
            value = table.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"server.{key}: expected a file path")
            path = Path(value).expanduser()
            values[key] = path if path.is_absolute() or base_dir is None else base_dir / path
        if not values:
            return None
        if "tls_cert" not in values or "tls_key" not in values:
            missing = "tls_key" if "tls_cert" in values else "tls_cert"
            raise ConfigError(f"server.{missing}: required to serve TLS (tls_cert and tls_key)")
        return cls(values["tls_cert"], values["tls_key"], values.get("tls_client_ca"))

    @classmethod
    def resolve(
        cls,
        cert_flag: str | None,
        key_flag: str | None,
        table: Mapping[str, Any],
        base_dir: Path | None,
    ) -> Self | None:
        """`c360 serve`: `--tls-cert/--tls-key` over the config's; the client CA (mTLS)
        always from the config. Checked here, so a bad file stops start-up in one line."""
        configured = cls.from_server_table(table, base_dir)
        chosen: Self | None = configured
        if cert_flag or key_flag:
            if not (cert_flag and key_flag):
                missing = "--tls-key" if cert_flag else "--tls-cert"
                raise ConfigError(f"{missing}: required with the other of --tls-cert/--tls-key")
            client_ca = configured.client_ca if configured else None
            chosen = cls(Path(cert_flag), Path(key_flag), client_ca, from_flags=True)
        if chosen is not None:
            chosen.context()
        return chosen

    def _label(self, key: str) -> str:
        if self.from_flags and key != "tls_client_ca":
            return "--" + key.replace("_", "-")
        return f"server.{key}"

    def context(self) -> ssl.SSLContext:
        """The server context, or a ConfigError naming the key whose file is unusable
        (with OpenSSL's reason, never the file's content)."""
        files = (
            ("tls_cert", self.cert_file),
            ("tls_key", self.key_file),
            ("tls_client_ca", self.client_ca),
        )
        for key, file in files:
            if file is not None and not file.is_file():
                raise ConfigError(f"{self._label(key)}: no file at {file}")
        try:
            context = server_context(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(
                f"{self._label('tls_cert')}: cannot load it with {self._label('tls_key')} "
                f"({_reason(error)})"
            ) from error
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=str(self.client_ca))
            except (ssl.SSLError, OSError) as error:
                raise ConfigError(
                    f"server.tls_client_ca: not a PEM certificate bundle ({_reason(error)})"
                ) from error
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def _reason(error: ssl.SSLError | OSError) -> str:
    reason = getattr(error, "reason", None) or error.strerror or type(error).__name__
    return str(reason).lower().replace("_", " ")


def uvicorn_ssl_context(config: Any, default: Any) -> ssl.SSLContext:
    """uvicorn's `ssl_context_factory`: our context instead of uvicorn's, from the files
    uvicorn was given. Module-level so that `--workers N` can pickle it to each worker."""
    client_ca = Path(config.ssl_ca_certs) if config.ssl_ca_certs else None
    return ServerTLS(Path(config.ssl_certfile), Path(config.ssl_keyfile), client_ca).context()


class HSTSMiddleware:
    """Adds `Strict-Transport-Security` to every HTTP response, errors and 404s included:
    a browser that once reached the gateway over TLS never tries plain HTTP again."""

    def __init__(self, app: ASGIApp, value: str = HSTS) -> None:
        self.app = app
        self.header = (b"strict-transport-security", value.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != self.header[0]
                ]
                message = {**message, "headers": [*headers, self.header]}
            await send(message)

        await self.app(scope, receive, send_with_hsts)


# PostgreSQL's SSLRequest: length 8, then the magic request code 1234.5679.
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


async def postgres_certificate(host: str, port: int, timeout_s: float = 5.0) -> bytes | None:
    """The certificate (DER) a PostgreSQL server presents, or None when it does not offer
    TLS. Only to pin it: this handshake does not verify (there is nothing yet to verify
    against) and nothing but the certificate is read over it."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(_SSL_REQUEST)
            await writer.drain()
            if await reader.readexactly(1) != b"S":
                return None
            reading = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            reading.check_hostname = False
            reading.verify_mode = ssl.CERT_NONE  # trust on first use: read, pin, then verify
            await writer.start_tls(reading)
            ssl_object = writer.get_extra_info("ssl_object")
            der: bytes | None = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            return der
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


async def pin_postgres(host: str, port: int, directory: Path) -> tuple[dict[str, str] | None, str]:
    """For `c360 demo --tls --sales-dsn`: when the server offers TLS, pin the certificate
    it presents now (written to `sales-db-pinned.pem`) and verify every later connection
    against it (`verify-ca`: the pin is the identity; local certificates rarely name
    127.0.0.1). Returns the source's `tls` table, or None, and a line saying which."""
    der = await postgres_certificate(host, port)
    if der is None:
        return None, (
            f"sales DB: PostgreSQL at {host}:{port} does not offer TLS (ssl = off); "
            "this hop stays plain, which the gateway allows on loopback only"
        )
    pinned = directory / "sales-db-pinned.pem"
    pinned.write_text(ssl.DER_cert_to_PEM_cert(der), encoding="ascii")
    fingerprint = x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex(":")
    note = (
        f"sales DB: PostgreSQL at {host}:{port} over TLS, its certificate pinned "
        f"(sha256 {fingerprint.upper()}) in {pinned}"
    )
    return {"ca_file": str(pinned), "mode": "verify-ca"}, note
