"""TLS towards department systems: one verifying client context per connector, the rule that
plain transport to a remote host is a deliberate, logged opt-out, and the one place that
turns a failed handshake into a `TLS: <reason>` for the gateway's log.

A connector's `tls` table: `ca_file` (default: the system's trust store), `client_cert` and
`client_key` (both or neither; for systems that require mTLS), and for PostgreSQL `mode`
(`verify-full`, the default, or `verify-ca`). Verification is never switched off.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from connectors.base import ConnectorConfigError
from connectors.settings import Settings

log = logging.getLogger("c360.connectors.tls")

# TLS 1.2 suites with forward secrecy and AEAD only (no CBC, RC4, 3DES, SHA-1 MACs, no
# anonymous or export suites); every TLS 1.3 suite already is all of that.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
SQL_TLS_MODES = ("verify-full", "verify-ca")


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """The modern floor shared by every context c360 makes, client or server."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def client_context(
    ca_file: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A context that always verifies the peer's chain: against `ca_file`, or the system's
    trust store when there is none. `check_hostname=False` is PostgreSQL's verify-ca (the
    chain is still verified; only the name is not)."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    if ca_file:
        # A CA file may hold an intermediate or a pinned server certificate rather than a
        # root; trust it as the anchor it was configured to be (Python 3.13's default).
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if client_cert:
        context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return harden(context)


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """A connector's `tls` table, checked; `context()` reads the files."""

    path: str  # e.g. "sources.service.tls", for errors
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    mode: str = "verify-full"

    @classmethod
    def parse(cls, settings: Settings, *, modes: bool = False) -> ClientTLS | None:
        """The `tls` table of a source, or None when it has none. `modes` allows `mode`
        (PostgreSQL's verify-full / verify-ca); HTTP connectors always check the name."""
        table = settings.opt_table("tls")
        if table is None:
            return None
        allowed = {"ca_file", "client_cert", "client_key"} | ({"mode"} if modes else set())
        table.reject_unknown(allowed)
        cert, key = table.opt_string("client_cert"), table.opt_string("client_key")
        if (cert is None) != (key is None):
            missing = "client_key" if key is None else "client_cert"
            raise table.error(missing, "required when the other of client_cert/client_key is set")
        ca_file = table.opt_string("ca_file")
        return cls(
            path=table.path,
            ca_file=Path(ca_file) if ca_file else None,
            client_cert=Path(cert) if cert else None,
            client_key=Path(key) if key else None,
            mode=table.choice("mode", SQL_TLS_MODES, "verify-full") if modes else "verify-full",
        )

    def context(self) -> ssl.SSLContext:
        """The SSLContext, or a ConnectorConfigError naming the key whose file is unusable.
        Messages carry the path and OpenSSL's reason, never the file's content."""
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ConnectorConfigError(f"{self.path}.ca_file: no file at {self.ca_file}")
        for key, file in (("client_cert", self.client_cert), ("client_key", self.client_key)):
            if file is not None and not file.is_file():
                raise ConnectorConfigError(f"{self.path}.{key}: no file at {file}")
        try:
            verifying = client_context(self.ca_file, check_hostname=self.mode == "verify-full")
        except (ssl.SSLError, OSError) as error:
            raise ConnectorConfigError(
                f"{self.path}.ca_file: not a PEM certificate bundle ({_ssl_reason(error)})"
            ) from error
        if self.client_cert is not None:
            try:
                verifying.load_cert_chain(str(self.client_cert), str(self.client_key))
            except (ssl.SSLError, OSError) as error:
                raise ConnectorConfigError(
                    f"{self.path}.client_cert: cannot load the certificate with client_key "
                    f"({_ssl_reason(error)})"
                ) from error
        return verifying


def is_loopback(host: str | None) -> bool:
    """Whether traffic to `host` stays on this machine. No DNS lookup: the decision is
    made from the configuration alone, so it cannot change with a resolver."""
    if not host or host.startswith("/"):
        return True  # no host, or a Unix socket directory: the driver's local default
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def insecure_flag(settings: Settings) -> bool:
    return settings.flag("allow_insecure", False)


def refuse_or_warn(settings: Settings, key: str, host: str | None, what: str) -> None:
    """Plain transport to a remote host: refused, unless the source says
    `allow_insecure = true`, which is logged every time the gateway starts with it."""
    if is_loopback(host):
        return
    if not insecure_flag(settings):
        raise settings.error(
            key,
            f"{what} to the non-loopback host '{host}' is refused; use TLS, or set "
            f"{settings.path}.allow_insecure = true to accept it deliberately",
        )
    log.warning(
        "insecure transport to a department system (allow_insecure = true)",
        extra={"source_config": settings.path, "host": host, "transport": what},
    )


def http_transport(settings: Settings, key: str) -> tuple[str, ssl.SSLContext | None]:
    """Check an HTTP connector's URL (`base_url` / `url`) against its `tls` table and
    the loopback rule; the URL and, for https, the verifying context to connect with."""
    url = settings.string(key)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise settings.error(key, "must be an http:// or https:// URL with a host")
    tls = ClientTLS.parse(settings)
    insecure_flag(settings)  # a malformed allow_insecure is an error even when unused
    if parts.scheme == "https":
        return url, (tls or ClientTLS(f"{settings.path}.tls")).context()
    if tls is not None:
        # Certificates configured for a plain-HTTP URL would be silently unused.
        raise settings.error("tls", f"is set, but {key} is http://; use https://")
    refuse_or_warn(settings, key, parts.hostname, "plain http://")
    return url, None


def _ssl_reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason).lower().replace("_", " ")
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def tls_failure(error: BaseException) -> str | None:
    """`TLS: <reason>` when a TLS handshake or the TLS layer is why a call failed (found
    anywhere in the error's chain: aiohttp and SQLAlchemy wrap the ssl error), else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        wrapped = getattr(current, "certificate_error", None)
        if isinstance(wrapped, BaseException):
            # aiohttp's wrapper is itself a CertificateError; the reason is in what it wraps.
            todo.append(wrapped)
            continue
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return f"TLS: {_ssl_reason(current)}"
        if isinstance(current, ConnectionError) and "rejected SSL upgrade" in str(current):
            # asyncpg's words for a PostgreSQL server that answered "N" to SSLRequest.
            return "TLS: the server does not offer TLS"
        for attribute in ("os_error", "orig"):
            nested = getattr(current, attribute, None)
            if isinstance(nested, BaseException):
                todo.append(nested)
        todo += [current.__cause__, current.__context__]
    return None
