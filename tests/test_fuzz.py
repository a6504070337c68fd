"""A fuzz run against a real `c360 demo`: whatever arrives (broken JSON, odd documents,
odd variables, bad tokens, huge numbers), the gateway answers with a 4xx or a GraphQL
body, never a 500, never a traceback."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIELDS = [
    "id",
    "name",
    "email",
    "phone",
    "nationalId",
    "address",
    "lifetimeValue",
    "segment",
    "satisfaction",
    "consents",
    "orders",
    "tickets",
    "opportunities",
    "shoeSize",
    "__typename",
]
NESTED = ["channel", "granted", "id", "total", "status", "subject", "stage", "cursor", "x"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, list[str]]]:
    """`c360 demo` in its own process; its printed tokens, one per demo role."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path_factory.mktemp("fuzz")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    tokens: list[str] = []
    for line in process.stdout:
        if line.startswith("    ey"):
            tokens.append(line.strip())
        if len(tokens) == 6:
            break
    assert len(tokens) == 6, "the demo did not print its tokens"
    yield port, tokens
    process.terminate()
    process.wait(timeout=30)


names = st.sampled_from(FIELDS) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(max_size=30).map(json.dumps),
    st.sampled_from(["null", "true", "[1,2]", "{a: 1}", '"cus_aaaaaaaaaaaaaaaa"', "$v", "OPEN"]),
)
arguments = st.lists(
    st.tuples(st.sampled_from(["first", "after", "id", "status", "email", "segment", "x"]), values),
    max_size=3,
).map(lambda args: "(" + ", ".join(f"{k}: {v}" for k, v in args) + ")" if args else "")


def selection(depth: int) -> st.SearchStrategy[str]:
    leaf = st.tuples(names, arguments).map(lambda t: t[0] + t[1])
    if depth == 0:
        return leaf
    child = st.lists(selection(depth - 1) | st.sampled_from(NESTED), min_size=1, max_size=4)
    branch = st.tuples(names, arguments, child).map(
        lambda t: f"{t[0]}{t[1]} {{ {' '.join(t[2])} }}"
    )
    return leaf | branch


roots = st.sampled_from(["customers", "customer", "customerByEmail", "accessLog", "__schema"])
documents = st.one_of(
    st.tuples(roots, arguments, st.lists(selection(2), min_size=1, max_size=3)).map(
        lambda t: (
            f"query Q($v: Int) {{ {t[0]}{t[1]} {{ edges {{ node {{ {' '.join(t[2])} }} }} }} }}"
        )
    ),
    st.tuples(roots, arguments, st.lists(selection(2), min_size=1, max_size=3)).map(
        lambda t: f"{{ {t[0]}{t[1]} {{ {' '.join(t[2])} }} }}"
    ),
    st.text(max_size=200),
    st.sampled_from(["", "{", "mutation { x }", "subscription { y }", "{ a " * 50]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
bodies = st.one_of(
    st.tuples(documents, st.dictionaries(st.text(max_size=5), json_values, max_size=3)).map(
        lambda t: json.dumps({"query": t[0], "variables": t[1]}).encode()
    ),
    st.tuples(documents, json_values).map(
        lambda t: json.dumps({"query": t[0], "variables": t[1], "operationName": "Q"}).encode()
    ),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=bodies,
    token_index=st.integers(min_value=-1, max_value=5),
    purpose=st.sampled_from([None, "sales", "marketing", "audit", "🙂", ""]),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "application/graphql-response+json"]
    ),
)
def test_no_input_makes_a_500(
    demo: tuple[int, list[str]],
    body: bytes,
    token_index: int,
    purpose: str | None,
    content_type: str,
) -> None:
    port, tokens = demo
    headers = {"content-type": content_type}
    headers["authorization"] = "Bearer " + (tokens[token_index] if token_index >= 0 else "x.y.z")
    if purpose is not None:
        headers["x-purpose"] = purpose.encode("utf-8").decode("latin-1")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/graphql", body=body, headers=headers)
        response = connection.getresponse()
        payload: Any = response.read()
    finally:
        connection.close()
    assert response.status < 500, (response.status, body[:200], payload[:300])
    assert b"Traceback" not in payload
    decoded = json.loads(payload)
    assert "data" in decoded or "errors" in decoded
