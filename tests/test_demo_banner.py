"""`c360 demo` prints one ready token per role of the shipped policy file, each valid
for the gateway it starts and naming only purposes that role has a use for."""

from __future__ import annotations

import jwt

from demo.banner import DEMO_PRINCIPALS, demo_tokens
from gateway.config import parse_config
from gateway.demo import demo_config
from policies import load_default_policy

ENDPOINTS = {
    "sales": {"dsn": "sqlite+aiosqlite:///unused.db"},
    "service": {"url": "http://127.0.0.1:1"},
    "marketing": {"url": "http://127.0.0.1:2"},
}


def test_every_role_of_the_shipped_policy_file_has_a_demo_token(tmp_path) -> None:  # type: ignore[no-untyped-def]
    policies = load_default_policy()
    assert {role for _, roles, _ in DEMO_PRINCIPALS for role in roles} == set(policies.roles)
    assert all(set(purposes) <= set(policies.purposes) for _, _, purposes in DEMO_PRINCIPALS)

    config = parse_config(demo_config(ENDPOINTS, port=0), base_dir=tmp_path)
    printed = demo_tokens(config).splitlines()
    tokens = [line.strip() for line in printed[2::2]]
    assert len(tokens) == len(DEMO_PRINCIPALS)
    for token, (subject, roles, purposes) in zip(tokens, DEMO_PRINCIPALS, strict=True):
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["sub"] == subject
        assert claims["roles"] == roles and claims["purpose"] == purposes
