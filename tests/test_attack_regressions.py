"""Issue 20, "Holes found under attack": each hole the attack found stays closed.

2. a searched subject reaches the access log only as a keyed pseudonym, and X-Client-Name
   only when it is a plain name;
3. a chunked body is counted as it streams and refused (413) at the limit;
4. a body is read, within `server.body_timeout_s` (408 past it), before its request takes
   an admission place: stalled bodies do not hold the places;
5. the cost of `first: $n` is the coerced value's (`100.0` is the Int 100), cached by it;
6. every answer has an access record with its true status: 405 for a method /graphql does
   not serve, 503 when fail_closed could not make the record durable;
7. a line of the JSONL log that is JSON but not an object is named by `c360 audit verify`
   (exit 1, no traceback), and the gateway starts on that log and continues the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from demo.people import DemoWorld
from demo.systems import DemoSystems
from gateway.audit.sinks import JsonlSink
from gateway.demo import to_toml
from harness import RunningGateway, running_gateway

PAGE = "query Page($n: Int) { customers(first: $n) { edges { node { id name } } } }"


async def records(gateway: RunningGateway) -> list[dict[str, Any]]:
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    return [record for _, record in sink.lines() if record is not None]


def log_text(gateway: RunningGateway) -> str:
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    return "\n".join(path.read_text(encoding="utf-8") for path in sink.files())


def record_of(written: list[dict[str, Any]], reply: Any) -> dict[str, Any]:
    [record] = [r for r in written if r["request_id"] == reply.headers["x-request-id"]]
    return record


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (state of another task, no event to wait on)
            await asyncio.sleep(0.01)


# --- 2. searched subjects and client names ----------------------------------------------


async def test_a_searched_subject_is_recorded_as_a_keyed_pseudonym_never_verbatim(
    demo_systems: DemoSystems, tmp_path: Path, demo_world: DemoWorld
) -> None:
    email = next(p for p in demo_world.persons if p.sales_ids).email
    searches = {
        "accessLog": "query($s: String) { accessLog(subject: $s) { edges { cursor } } }",
        "accessFootprint": "query($s: String!) { accessFootprint(subject: $s) { requests } }",
        "accessAlerts": "query($s: String) { accessAlerts(subject: $s) { edges { cursor } } }",
        "recordConsoleExport": """mutation($s: String) { recordConsoleExport(
            view: FOOTPRINT, table: FOOTPRINT_DECISIONS, rows: 3, filters: {subject: $s}
          ) { requestId } }""",
    }
    async with running_gateway(demo_systems, tmp_path) as gateway:
        security = gateway.as_role("security", subject="sam")
        replies = {
            name: await gateway.query(query, {"s": email}, security)
            for name, query in searches.items()
        }
        pseudonym = gateway.gateway.masks["hash"](email)
        written = await records(gateway)
        text = log_text(gateway)
    for name, reply in replies.items():
        assert (reply.status, reply.errors) == (200, []), name
    looked = {name: record_of(written, reply)["audit_query"] for name, reply in replies.items()}
    assert pseudonym.startswith("h1:k1:")
    assert looked["accessLog"] == {"subject": pseudonym}
    assert looked["accessFootprint"]["subject"] == pseudonym
    assert looked["accessAlerts"] == {"view": "alerts", "subject": pseudonym}
    assert looked["recordConsoleExport"] == {
        "view": "export",
        "export": "footprint",
        "table": "footprint_decisions",
        "rows": 3,
        "subject": pseudonym,
    }
    assert email not in text


async def test_x_client_name_is_recorded_only_when_it_is_a_plain_name(
    demo_systems: DemoSystems, tmp_path: Path, demo_world: DemoWorld
) -> None:
    person = next(p for p in demo_world.persons if p.sales_ids)
    sent = {
        "web-crm_2.1": "web-crm_2.1",
        "A" + "b" * 63: "A" + "b" * 63,  # 64 characters: the longest plain name
        person.email: "invalid",
        f"{person.email.split('@')[0]} laptop": "invalid",
        "-starts-with-a-dash": "invalid",
        "A" + "b" * 64: "invalid",
        "a/b": "invalid",
    }
    async with running_gateway(demo_systems, tmp_path) as gateway:
        replies = {
            header: await gateway.query(PAGE, {"n": 1}, {"x-client-name": header})
            for header in sent
        }
        anonymous = await gateway.query(PAGE, {"n": 1})
        written = await records(gateway)
        text = log_text(gateway)
    assert all(reply.status == 200 for reply in replies.values())  # recorded, not refused
    assert {header: record_of(written, reply)["client"] for header, reply in replies.items()} == (
        sent
    )
    assert record_of(written, anonymous)["client"] is None
    assert person.email not in text


# --- 3. chunked bodies ------------------------------------------------------------------

CHUNK = 64 * 1024


def counting_body_bytes(received: list[int]) -> Callable[[ASGIApp], ASGIApp]:
    """Wraps the app: `received[0]` is how many body bytes /graphql took from the server."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            async def receiving() -> Message:
                message = await receive()
                if scope.get("path") == "/graphql":
                    received[0] += len(message.get("body", b""))
                return message

            await app(scope, receiving, send)

        return counted

    return wrap


async def test_a_chunked_body_is_counted_as_it_streams_and_refused_at_the_limit(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    limit = 100_000
    total = 32 * 1024 * 1024
    received = [0]

    async def body() -> AsyncIterator[bytes]:
        yield b'{"query": "{ __typename }", "pad": "'
        for _ in range(total // CHUNK):
            yield b"x" * CHUNK

    overrides = {"server.max_body_bytes": limit}
    async with running_gateway(
        demo_systems, tmp_path, overrides, around=counting_body_bytes(received)
    ) as gateway:
        headers = {"content-type": "application/json", **gateway.as_role("sales")}
        async with gateway.http.post(gateway.url + "/graphql", data=body(), headers=headers) as r:
            assert r.request_info.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in r.request_info.headers
            status, reply = r.status, orjson.loads(await r.read())
            request_id = r.headers["x-request-id"]
        after = await gateway.query("{ __typename }")  # the gateway serves on
        written = await records(gateway)
    assert status == 413
    assert [e["extensions"]["code"] for e in reply["errors"]] == ["BAD_REQUEST"]
    assert "data" not in reply
    # Refused at the limit: what the gateway took of the body is the limit and at most
    # what the server had buffered when it was passed, not the 32 MB sent.
    assert limit < received[0] < limit + 1024 * 1024
    [record] = [r for r in written if r["request_id"] == request_id]
    assert (record["status"], record["outcome"], record["reason"]) == (
        413,
        "rejected",
        "body_too_large",
    )
    assert after.status == 200


# --- 4. slow bodies and admission -------------------------------------------------------


@contextlib.asynccontextmanager
async def stalled_bodies(
    gateway: RunningGateway, count: int
) -> AsyncIterator[list[asyncio.StreamReader]]:
    """`count` connections that send a POST's headers and 18 bytes of its 100-byte body,
    then stall; closed on exit."""
    host, port = gateway.url.removeprefix("http://").split(":")
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection(host, int(port))
            opened.append((reader, writer))
            writer.write(
                b"POST /graphql HTTP/1.1\r\nhost: c360\r\ncontent-type: application/json\r\n"
                + f"authorization: Bearer {gateway.token()}\r\n".encode()
                + b"content-length: 100\r\n\r\n"
                + b'{"query": "{ __typ'  # 18 bytes
            )
            await writer.drain()
        yield [reader for reader, _ in opened]
    finally:
        for _, writer in opened:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def counting_waits_for_body(waiting: list[int]) -> Callable[[ASGIApp], ASGIApp]:
    """Wraps the app: `waiting[0]` is how many /graphql requests wait for body bytes."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            async def receiving() -> Message:
                if scope.get("path") != "/graphql":
                    return await receive()
                waiting[0] += 1
                try:
                    return await receive()
                finally:
                    waiting[0] -= 1

            await app(scope, receiving, send)

        return counted

    return wrap


async def test_stalled_bodies_do_not_hold_admission_places(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    waiting = [0]
    overrides = {"server.max_in_flight": 2, "server.queue_timeout_s": 0.5}
    async with running_gateway(
        demo_systems, tmp_path, overrides, around=counting_waits_for_body(waiting)
    ) as gateway:
        gate = gateway.gateway.admission
        async with stalled_bodies(gateway, 4):
            # Every stalled request has reached the gateway: waiting for the rest of its
            # body, or (were bodies read inside the gate) queued for a place.
            await until(lambda: waiting[0] + gate.queued == 4)
            executing = gate.executing
            reply = await gateway.query(PAGE, {"n": 2})
    assert reply.status == 200, reply.body
    assert len(reply.data["customers"]["edges"]) == 2
    assert executing == 0  # a request without its body holds no place


async def test_a_body_that_does_not_arrive_in_time_is_answered_408(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path, {"server.body_timeout_s": 0.3}) as gateway:
        async with stalled_bodies(gateway, 1) as [reader]:
            async with asyncio.timeout(10):
                raw = await reader.read()  # the gateway answers and closes the connection
        written = await records(gateway)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"content-type: application/json" in head.lower()
    reply = orjson.loads(body)
    assert [e["extensions"]["code"] for e in reply["errors"]] == ["BAD_REQUEST"]
    assert "0.3 s" in reply["errors"][0]["message"]
    assert b"Traceback" not in raw
    [record] = written
    assert (record["status"], record["outcome"], record["reason"]) == (
        408,
        "rejected",
        "body_timeout",
    )


# --- 5. cost from coerced variables -----------------------------------------------------

COSTLY = """query C($n: Int) { customers(first: $n) { edges { node {
  name email orders(first: 10) { id } } } } }"""


@pytest.mark.parametrize("order", [(100.0, 100), (100, 100.0)], ids=["float-first", "int-first"])
async def test_a_float_page_size_is_costed_as_the_int_it_coerces_to(
    demo_systems: DemoSystems, tmp_path: Path, order: tuple[float, ...]
) -> None:
    async with running_gateway(demo_systems, tmp_path, {"limits.max_cost": 400}) as gateway:
        small = await gateway.query(COSTLY, {"n": 1.0})
        replies = [await gateway.query(COSTLY, {"n": n}) for n in order]
    assert small.status == 200 and small.data["customers"]["edges"]  # 1.0 is the Int 1
    for n, reply in zip(order, replies, strict=True):
        assert reply.codes() == ["QUERY_TOO_COMPLEX"], n
        assert reply.errors[0]["extensions"]["limit"] == "cost"
        assert "data" not in reply.body


# --- 6. a record for every answer -------------------------------------------------------


async def test_a_method_graphql_does_not_serve_gets_405_and_a_record(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        answers = {}
        for method in ("PUT", "DELETE", "PATCH"):
            async with gateway.http.request(
                method,
                gateway.url + "/graphql",
                data=orjson.dumps({"query": "{ __typename }"}),
                headers={"content-type": "application/json", **gateway.as_role("sales")},
            ) as response:
                answers[method] = (
                    response.status,
                    response.headers.get("allow"),
                    response.headers.get("x-request-id"),
                    orjson.loads(await response.read()),
                )
        written = await records(gateway)
    for method, (status, allow, request_id, body) in answers.items():
        assert (status, allow) == (405, "GET, POST"), method
        assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_REQUEST"]
        [record] = [r for r in written if r["request_id"] == request_id]
        assert (record["status"], record["outcome"], record["reason"]) == (
            405,
            "rejected",
            "method_not_allowed",
        )
    assert len(written) == 3


async def test_a_fail_closed_refusal_is_recorded_as_the_503_it_was(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path, {"audit.fail_closed": True}) as gateway:
        access_log = gateway.gateway.access_log
        access_log.settings = dataclasses.replace(access_log.settings, durable_timeout_s=0.2)
        sink = access_log.sink
        real_write = sink.write
        back = asyncio.Event()

        async def stalled(batch: Any) -> None:
            await back.wait()  # the sink hangs until the refusal was answered
            await real_write(batch)

        sink.write = stalled  # type: ignore[method-assign]
        refused = await gateway.query(PAGE, {"n": 1})
        back.set()
        written = await records(gateway)
    assert refused.status == 503
    assert refused.codes() == ["AUDIT_UNAVAILABLE"]
    mine = [r for r in written if r["request_id"] == refused.headers["x-request-id"]]
    # The record made before the answer (which could not be made durable in time) says
    # what the answer would have been; the record after it says what it was.
    *superseded, last = mine
    assert (last["status"], last["outcome"], last["reason"]) == (
        503,
        "rejected",
        "audit_unavailable",
    )
    assert last["customers"] == [] and last["fields"] == {}  # the client saw nothing
    assert [f"{r['chain']}:{r['seq']}" for r in superseded] == (
        [last["supersedes"]] if superseded else []
    )


# --- 7. a log line that is JSON but not an object ---------------------------------------


def audit_only_config(tmp_path: Path, sink: JsonlSink, chain: str) -> Path:
    """A config file naming the access log `sink` writes, for `c360 audit verify`."""
    data = {
        "identity": {"key": "x" * 32},
        "auth": {"issuer": "i", "audience": "a", "hs256": {"k": "s" * 32}},
        "policies": {"hash_key": "h" * 16},
        "sources": {"s": {"kind": "rest", "base_url": "http://127.0.0.1:1", "entities": {}}},
        "audit": {"path": str(sink.path), "chain": chain},
    }
    path = tmp_path / "audit-only.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


async def verify(config: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "audit",
        "verify",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_a_log_line_that_is_json_but_not_an_object_is_named_and_the_gateway_starts(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        await gateway.query(PAGE, {"n": 1})
        await records(gateway)
        sink = gateway.gateway.config.audit_sink
        chain = gateway.gateway.config.audit.chain
    assert isinstance(sink, JsonlSink)
    with sink.path.open("ab") as log:
        log.write(b"123\n[]\n")
    config = audit_only_config(tmp_path, sink, chain)
    code, out, err = await verify(config)
    assert code == 1
    assert "Traceback" not in out + err
    assert "access.jsonl:2" in err and "access.jsonl:3" in err
    # The gateway starts on that log, and its chain continues after the bad lines.
    async with running_gateway(demo_systems, tmp_path) as gateway:
        reply = await gateway.query(PAGE, {"n": 1})
        written = await records(gateway)
    assert reply.status == 200
    assert [(r["chain"], r["seq"]) for r in written] == [(chain, 1), (chain, 2)]
    assert written[1]["prev_hash"] == written[0]["hash"]
    lines = sink.path.read_bytes().splitlines()
    assert lines[1:3] == [b"123", b"[]"] and orjson.loads(lines[3])["seq"] == 2
    code, out, err = await verify(config)
    assert code == 1  # the bad lines are still there, and named
    assert "Traceback" not in out + err
    assert "access.jsonl:2" in err and "access.jsonl:3" in err
    assert "access.jsonl:4" not in err  # the chain itself is intact across them
