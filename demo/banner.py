"""What `c360 demo` prints once it runs: where everything is, a first query, and one ready
token per demo role (signed with the demo's development key)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.auth import mint_token
from gateway.config import Config

DEMO_PRINCIPALS = (
    ("alice", ["sales"], ["sales"]),
    ("rep-01", ["sales"], ["sales"]),
    ("maria", ["sales_manager"], ["sales"]),
    ("bob", ["service"], ["service"]),
    ("carol", ["marketing"], ["marketing", "sales"]),
    ("sam", ["security"], ["audit"]),
    ("priya", ["privacy"], ["rights"]),
    ("stella", ["steward"], ["audit"]),
)


def demo_tokens(config: Config) -> str:
    lines = ["Tokens (valid 12 h; send as Authorization: Bearer <token>):"]
    for subject, roles, purposes in DEMO_PRINCIPALS:
        token = mint_token(config.auth, subject, roles, purposes, ttl_s=12 * 3600)
        lines.append(f"  {'/'.join(roles):<14} {subject:<7} purposes={','.join(purposes)}")
        lines.append(f"    {token}")
    return "\n".join(lines)


def demo_banner(
    base: str, customers: int, endpoints: dict[str, dict[str, str]], down: Sequence[str]
) -> str:
    systems = [
        f"  {name:<10} {next(iter(ep.values()))}" + ("  (down)" if name in down else "")
        for name, ep in endpoints.items()
    ]
    query = "{ customers(first: 2) { edges { node { id name segment tickets { subject } } } } }"
    auth = '-H "authorization: Bearer $TOKEN"'
    return "\n".join(
        [
            "",
            f"c360 demo is running ({customers} customers)",
            f"  GraphiQL:  {base}/graphql",
            f"  health:    {base}/readyz   metrics: {base}/metrics",
            f"  console:   {base}/console   (sign in with the security token below)",
            *systems,
            "",
            "Try:",
            "  TOKEN=<a token from below>",
            f"  curl -s {base}/graphql -H 'content-type: application/json' {auth} \\",
            f'    -d \'{{"query": "{query}"}}\'',
            "",
            "Ctrl-C stops everything.",
        ]
    )
