"""The demo's and the tests' throwaway certificate authority: a CA, the certificates of the
gateway and of each demo system, and the gateway's client certificate, written under a
directory (`c360 demo --tls`). Not for production: a real deployment brings its own
certificates (`c360 serve --tls-cert/--tls-key`, `[sources.X.tls]`)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


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
