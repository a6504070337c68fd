"""Bearer tokens to Principals.

HS256 with configured secrets (development), RS256/ES256 with configured public keys or a
JWKS URL (production). The algorithm is fixed by the *key*, never by the token: an HS256
token is only ever checked against an HS256 secret, so a public key can never be used as
an HMAC secret (algorithm confusion), and `alg: none` matches no key at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.errors import ConfigError
from policies.principal import Principal

log = logging.getLogger("c360.auth")

ASYMMETRIC = {"RS256", "ES256"}


class AuthError(Exception):
    """Credentials refused. `status` is 401 (who are you?) or 403 (not for this purpose).
    `reason`: what the access record says (default: `unauthenticated` or `purpose`)."""

    def __init__(self, message: str, status: int = 401, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str
    algorithm: str  # the only algorithm this key verifies
    key: Any


@dataclass(frozen=True)
class AuthConfig:
    issuer: str
    audience: str
    leeway_s: int = 30
    hs256: Mapping[str, str] = field(default_factory=dict)
    public_keys: Mapping[str, str] = field(default_factory=dict)
    jwks_url: str | None = None
    dev_key: str | None = None  # the kid `c360 token` signs with

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> AuthConfig:
        allowed = {"issuer", "audience", "leeway_s", "hs256", "public_keys", "jwks_url", "dev_key"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"auth.{unknown[0]}: unknown key")
        for key in ("issuer", "audience"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ConfigError(f"auth.{key}: required")
        hs256 = data.get("hs256", {})
        for kid, secret in hs256.items():
            if not isinstance(secret, str) or len(secret.encode()) < 32:
                raise ConfigError(f"auth.hs256.{kid}: a secret of at least 32 bytes")
        public_keys = data.get("public_keys", {})
        jwks_url = data.get("jwks_url")
        if not hs256 and not public_keys and not jwks_url:
            raise ConfigError("auth: configure hs256, public_keys or jwks_url")
        dev_key = data.get("dev_key")
        if dev_key is not None and dev_key not in hs256:
            raise ConfigError(f"auth.dev_key: no hs256 secret with id '{dev_key}'")
        leeway = data.get("leeway_s", 30)
        if not isinstance(leeway, int) or not 0 <= leeway <= 300:
            raise ConfigError("auth.leeway_s: an integer between 0 and 300")
        return cls(data["issuer"], data["audience"], leeway, hs256, public_keys, jwks_url, dev_key)


def _public_key(kid: str, pem: str) -> VerificationKey:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as error:
        raise ConfigError(f"auth.public_keys.{kid}: not a PEM public key") from error
    if isinstance(key, rsa.RSAPublicKey):
        return VerificationKey(kid, "RS256", key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return VerificationKey(kid, "ES256", key)
    raise ConfigError(f"auth.public_keys.{kid}: only RSA and EC keys are supported")


def _jwk_key(jwk: Mapping[str, Any]) -> VerificationKey | None:
    kid, kty = jwk.get("kid"), jwk.get("kty")
    if not isinstance(kid, str):
        return None
    try:
        if kty == "RSA":
            return VerificationKey(kid, "RS256", RSAAlgorithm.from_jwk(dict(jwk)))
        if kty == "EC":
            return VerificationKey(kid, "ES256", ECAlgorithm.from_jwk(dict(jwk)))
    except (jwt.InvalidKeyError, ValueError, KeyError):
        log.warning("ignoring an unusable key in the JWKS", extra={"kid": kid})
    return None


def _static_keys(config: AuthConfig) -> dict[str, VerificationKey]:
    keys = [VerificationKey(kid, "HS256", secret.encode()) for kid, secret in config.hs256.items()]
    keys += [_public_key(kid, pem) for kid, pem in config.public_keys.items()]
    return {key.kid: key for key in keys}


def _string_list(claims: Mapping[str, Any], *names: str) -> tuple[str, ...]:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
    return ()


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token whose signature and claims were checked, and with which key."""

    kid: str | None
    key: VerificationKey
    claims: Mapping[str, Any]


class Authenticator:
    JWKS_MIN_REFRESH_S = 30.0
    # Tokens verified recently, by their text: a client sends the same token with every
    # request, and checking it again (PyJWT decodes and validates the base64 in Python)
    # would sit in every request's latency (bench (a) overhead, `python -m bench.variants`).
    # A hit re-checks the time claims and that its key is still the one trusted for its
    # kid (a rotation or JWKS refresh drops it; tests/test_auth.py).
    VERIFIED_CACHE_SIZE = 1024

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._static = _static_keys(config)
        self._jwks: dict[str, VerificationKey] = {}
        self._jwks_fetched_at = 0.0
        self._jwks_lock = asyncio.Lock()
        self._verified: dict[str, _Verified] = {}

    def rotate(self, config: AuthConfig) -> None:
        """Use a new set of keys from now on; a token being checked keeps the set it
        started with. The JWKS cache stays (a changed URL is fetched on the next kid)."""
        static = _static_keys(config)
        if config.jwks_url != self.config.jwks_url:
            self._jwks = {}
            self._jwks_fetched_at = 0.0
        self.config, self._static = config, static

    async def _refresh_jwks(self) -> None:
        """Fetch the JWKS, at most once per JWKS_MIN_REFRESH_S (unknown kids cannot force
        a fetch per request)."""
        if self.config.jwks_url is None:
            return
        async with self._jwks_lock:
            if time.monotonic() - self._jwks_fetched_at < self.JWKS_MIN_REFRESH_S:
                return
            self._jwks_fetched_at = time.monotonic()
            try:
                timeout = aiohttp.ClientTimeout(total=5)
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.get(self.config.jwks_url) as response,
                ):
                    response.raise_for_status()
                    document = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                log.warning("JWKS fetch failed", extra={"reason": str(error)})
                return
            found = [_jwk_key(jwk) for jwk in document.get("keys", []) if isinstance(jwk, dict)]
            self._jwks = {key.kid: key for key in found if key is not None}

    async def _key_for(self, kid: str | None) -> VerificationKey | None:
        if kid is None:
            # Without a kid, only an unambiguous configuration (exactly one key) is usable.
            keys = list(self._static.values()) + list(self._jwks.values())
            return keys[0] if len(keys) == 1 and self.config.jwks_url is None else None
        key = self._static.get(kid) or self._jwks.get(kid)
        if key is None and self.config.jwks_url is not None:
            await self._refresh_jwks()
            key = self._jwks.get(kid)
        return key

    async def authenticate(self, authorization: str | None, purpose: str | None) -> Principal:
        if not authorization:
            raise AuthError("Authentication required: send Authorization: Bearer <token>.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("Authorization must be a Bearer token.")
        verified = self._verified.get(token)
        if verified is None or not await self._still_valid(verified):
            verified = await self._verify(token)
            if len(self._verified) >= self.VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = verified
        claims = verified.claims
        roles = frozenset(_string_list(claims, "roles", "role"))
        purposes = _string_list(claims, "purpose", "purposes")
        if not isinstance(claims["sub"], str) or not claims["sub"] or not roles:
            raise AuthError("The token names no subject or no role.")
        if purpose is not None and purpose not in purposes:
            raise AuthError(f"The token does not allow the purpose '{purpose}'.", status=403)
        department = claims.get("department")
        acr = claims.get("acr")
        return Principal(
            subject=claims["sub"],
            roles=roles,
            purpose=purpose if purpose is not None else (purposes[0] if purposes else None),
            purposes=purposes,
            department=department if isinstance(department, str) else None,
            # RFC 8176 methods (pwd, otp, mfa, hwk…), as the identity provider stated them
            amr=frozenset(_string_list(claims, "amr", "amr")),
            acr=acr if isinstance(acr, str) else None,
        )

    async def claims(self, token: str) -> Mapping[str, Any]:
        """The claims of a token whose signature (by a key trusted here, the JWKS's too),
        issuer, audience and times check; AuthError otherwise. The console's sign-in
        verifies the provider's ID tokens with it (gateway/console/oidc.py)."""
        return (await self._verify(token)).claims

    async def _still_valid(self, verified: _Verified) -> bool:
        """The checks that can change after a token was verified: time and the key."""
        now, leeway = time.time(), self.config.leeway_s
        claims = verified.claims
        if not now < claims["exp"] + leeway:
            return False
        if "nbf" in claims and not now >= claims["nbf"] - leeway:
            return False
        return await self._key_for(verified.kid) is verified.key

    async def _verify(self, token: str) -> _Verified:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise AuthError("The token is malformed.") from error
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        key = await self._key_for(kid)
        if key is None or header.get("alg") != key.algorithm:
            raise AuthError("The token is not signed with a key this gateway trusts.")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthError("The token has expired.") from error
        except jwt.ImmatureSignatureError as error:
            raise AuthError("The token is not valid yet.") from error
        except jwt.PyJWTError as error:
            raise AuthError("The token was refused.") from error
        return _Verified(kid, key, claims)


def mint_token(
    config: AuthConfig,
    subject: str,
    roles: list[str],
    purposes: list[str],
    ttl_s: int = 3600,
    department: str | None = None,
    amr: list[str] | None = None,
) -> str:
    """A development token signed with the configured development key."""
    if config.dev_key is None:
        raise ConfigError("auth.dev_key: no development signing key is configured")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "roles": roles,
        "purpose": purposes,
        "iss": config.issuer,
        "aud": config.audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
    }
    if department:
        claims["department"] = department
    if amr:
        claims["amr"] = amr
    return jwt.encode(
        claims, config.hs256[config.dev_key], algorithm="HS256", headers={"kid": config.dev_key}
    )
