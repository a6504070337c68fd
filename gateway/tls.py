"""TLS for the gateway: the server context `c360 serve` terminates TLS with (optionally
requiring client certificates), HSTS on every response served over TLS, and a throwaway
local certificate authority for the demo and the tests.

Client contexts (the gateway towards department systems) live in `connectors.tls`, since
connectors may not import the gateway; `client_context` is re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import ssl
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.tls import client_context, harden
from gateway.errors import ConfigError

__all__ = [
    "HSTS",
    "SERVER_TLS_KEYS",
    "DemoCA",
    "DemoCertificates",
    "HSTSMiddleware",
    "IssuedCertificate",
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


# --- a throwaway certificate authority -------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    name: str
    cert_file: Path
    key_file: Path


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start (no window in which the key is world-readable); an
    # older file of the same name is replaced, then narrowed in case it was wider.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)


def _san(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


class DemoCA:
    """A local CA for the demo and the tests: ECDSA P-256 keys, certificates valid for
    `days`. Files in `directory`: `ca.pem` (+ `ca-key.pem`), and `<name>.pem` +
    `<name>-key.pem` per issued certificate; private keys are 0600, the directory 0700.
    It is trusted by nothing but what is told to trust `ca_file`."""

    def __init__(
        self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> None:
        self.directory = directory
        self._key = key
        self._cert = cert

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @classmethod
    def create(cls, directory: Path, *, name: str = "c360 demo CA", days: int = 30) -> Self:
        """A new CA in `directory` (replacing one that was there)."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(directory / "ca-key.pem", _pem_key(key))
        (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, key, cert)

    def paths(self, name: str) -> IssuedCertificate:
        """Where the certificate `name` is (or would be) in the directory."""
        return IssuedCertificate(
            name, self.directory / f"{name}.pem", self.directory / f"{name}-key.pem"
        )

    def issue(
        self,
        name: str,
        hosts: Iterable[str] = ("127.0.0.1", "localhost"),
        *,
        client: bool = False,
        days: int = 30,
    ) -> IssuedCertificate:
        """A server certificate for `hosts` (subject alternative names), or with
        `client=True` a client certificate whose common name is `name`."""
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"certificate name {name!r}: letters, digits, - and _ only")
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        issuer_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
                critical=False,
            )
        )
        names = _san(hosts)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = self.paths(name)
        _write_private(issued.key_file, _pem_key(key))
        issued.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return issued


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- the demo's certificates -------------------------------------------------------------

DEMO_SYSTEMS = ("sales", "service", "marketing")


@dataclass(frozen=True, slots=True)
class DemoCertificates:
    """What `c360 demo --tls` issues from a fresh CA: the gateway's server certificate,
    its client certificate (presented to systems that require mTLS), and one server
    certificate per demo system (named after it, as demo/systems.py expects)."""

    ca: DemoCA
    gateway: IssuedCertificate
    gateway_client: IssuedCertificate
    systems: Mapping[str, IssuedCertificate]

    @classmethod
    def create(cls, directory: Path) -> Self:
        ca = DemoCA.create(directory)
        return cls(
            ca,
            gateway=ca.issue("gateway"),
            gateway_client=ca.issue("gateway-client", client=True),
            systems={name: ca.issue(name) for name in DEMO_SYSTEMS},
        )

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_file

    def server(self) -> ServerTLS:
        return ServerTLS(self.gateway.cert_file, self.gateway.key_file)

    def server_overrides(self) -> dict[str, str]:
        return {
            "server.tls_cert": str(self.gateway.cert_file),
            "server.tls_key": str(self.gateway.key_file),
        }

    def source_overrides(self) -> dict[str, dict[str, str]]:
        """`tls` tables for the HTTP systems: the demo CA, and the gateway's client
        certificate for whichever of them asks for one."""
        table = {
            "ca_file": str(self.ca_file),
            "client_cert": str(self.gateway_client.cert_file),
            "client_key": str(self.gateway_client.key_file),
        }
        return {"sources.service.tls": dict(table), "sources.marketing.tls": dict(table)}


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
