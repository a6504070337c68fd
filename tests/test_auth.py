"""The authenticator's cache of verified tokens: a hit skips the signature check and
nothing else (time claims, the key's trust, the purpose are checked on every request)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import jwt
import pytest

from gateway import auth
from gateway.auth import AuthConfig, Authenticator, AuthError, mint_token

CONFIG = AuthConfig(issuer="c360-test", audience="c360", hs256={"k1": "s" * 32}, dev_key="k1")


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token whose signature PyJWT checked."""
    seen: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    return seen


async def test_a_token_is_verified_once_and_each_request_still_gets_its_own_purpose(
    decodes: list[str],
) -> None:
    authenticator = Authenticator(CONFIG)
    token = mint_token(CONFIG, "alice", ["sales"], ["sales", "service"])
    first = await authenticator.authenticate(f"Bearer {token}", None)
    again = await authenticator.authenticate(f"Bearer  {token} ", "service")
    assert (first.subject, first.roles, first.purpose) == ("alice", frozenset({"sales"}), "sales")
    assert again.purpose == "service"
    assert decodes == [token]
    with pytest.raises(AuthError) as refused:
        await authenticator.authenticate(f"Bearer {token}", "marketing")
    assert refused.value.status == 403


async def test_a_cached_token_expires_on_time(decodes: list[str]) -> None:
    strict = dataclasses.replace(CONFIG, leeway_s=0)
    authenticator = Authenticator(strict)
    latest_exp = int(time.time()) + 3  # mint_token: int(now) + ttl, a moment later
    token = mint_token(strict, "alice", ["sales"], ["sales"], ttl_s=2)
    await authenticator.authenticate(f"Bearer {token}", None)
    await authenticator.authenticate(f"Bearer {token}", None)
    await asyncio.sleep(latest_exp - time.time() + 0.05)
    with pytest.raises(AuthError, match="expired"):
        await authenticator.authenticate(f"Bearer {token}", None)
    assert decodes == [token, token]  # checked in full again, and refused


async def test_a_rotated_out_key_no_longer_admits_its_cached_tokens() -> None:
    authenticator = Authenticator(CONFIG)
    token = mint_token(CONFIG, "alice", ["sales"], ["sales"])
    await authenticator.authenticate(f"Bearer {token}", None)
    authenticator.rotate(AuthConfig(issuer="c360-test", audience="c360", hs256={"k2": "t" * 32}))
    with pytest.raises(AuthError, match="not signed with a key"):
        await authenticator.authenticate(f"Bearer {token}", None)
    # The same secret under the same kid after a reload: verified again, then admitted.
    authenticator.rotate(CONFIG)
    assert (await authenticator.authenticate(f"Bearer {token}", None)).subject == "alice"


async def test_the_cache_is_bounded(decodes: list[str]) -> None:
    authenticator = Authenticator(CONFIG)
    authenticator.VERIFIED_CACHE_SIZE = 2
    tokens = [mint_token(CONFIG, f"user-{n}", ["sales"], ["sales"]) for n in range(3)]
    for token in tokens:
        await authenticator.authenticate(f"Bearer {token}", None)
    await authenticator.authenticate(f"Bearer {tokens[0]}", None)  # evicted: checked again
    await authenticator.authenticate(f"Bearer {tokens[2]}", None)  # still cached
    assert decodes == [*tokens, tokens[0]]
    assert len(authenticator._verified) == 2
