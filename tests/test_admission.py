"""The admission gate: at most `max_in_flight` GraphQL requests execute at once, the rest
wait in arrival order (no newcomer overtakes a waiter), and a request that cannot get a
place within the queue's bounds is refused with 503 OVERLOADED and still logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from demo.systems import DemoSystems
from gateway.admission import Admission, AdmissionSettings, Overloaded
from gateway.audit.sinks import JsonlSink
from gateway.config import ConfigError, parse_config
from harness import SourceAdmin, gateway_config, running_gateway


async def test_places_go_to_waiters_in_arrival_order_and_never_to_newcomers() -> None:
    gate = Admission(AdmissionSettings(limit=1))
    entered: list[str] = []
    release = {name: asyncio.Event() for name in "ABCDE"}

    async def request(name: str) -> None:
        async with gate.place():
            entered.append(name)
            await release[name].wait()

    first = asyncio.create_task(request("A"))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(request(name)) for name in "BCD"]
    await asyncio.sleep(0)
    assert (entered, gate.executing, gate.queued) == (["A"], 1, 3)
    release["A"].set()
    await first
    # E arrives after A left but before B has run: the place is B's already.
    late = asyncio.create_task(request("E"))
    for name in "BCDE":
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        release[name].set()
    await asyncio.gather(*waiters, late)
    assert entered == ["A", "B", "C", "D", "E"]
    assert (gate.executing, gate.queued) == (0, 0)


async def test_a_full_queue_refuses_at_once() -> None:
    gate = Admission(AdmissionSettings(limit=1, max_queued=1))
    hold = asyncio.Event()

    async def request() -> None:
        async with gate.place():
            await hold.wait()

    running = [asyncio.create_task(request()), asyncio.create_task(request())]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="already waiting"):
        async with gate.place():
            pass
    hold.set()
    await asyncio.gather(*running)
    assert (gate.executing, gate.queued) == (0, 0)


async def test_waiting_past_the_timeout_or_giving_up_leaks_no_place() -> None:
    gate = Admission(AdmissionSettings(limit=1, queue_timeout_s=0.05))
    hold = asyncio.Event()

    async def holder() -> None:
        async with gate.place():
            await hold.wait()

    holding = asyncio.create_task(holder())
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match=r"within 0\.05 s"):
        async with gate.place():
            pass
    assert gate.queued == 0
    abandoned = asyncio.create_task(holder())  # a client that goes away while waiting
    await asyncio.sleep(0)
    assert gate.queued == 1
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert (gate.executing, gate.queued) == (1, 0)
    hold.set()
    await holding
    assert gate.executing == 0
    async with gate.place():  # the one place is free again
        assert gate.executing == 1


async def test_a_waiter_cancelled_as_its_turn_comes_passes_the_place_on() -> None:
    gate = Admission(AdmissionSettings(limit=1))
    hold = asyncio.Event()
    entered: list[str] = []

    async def request(name: str) -> None:
        async with gate.place():
            entered.append(name)
            await hold.wait()

    async def first_then_cancel_the_next() -> None:
        await request("A")
        # Still in the step that handed A's place to B, before B's task could run.
        assert gate.executing == 1 and gate.queued == 1
        second.cancel()

    first = asyncio.create_task(first_then_cancel_the_next())
    await asyncio.sleep(0)
    second = asyncio.create_task(request("B"))
    third = asyncio.create_task(request("C"))
    await asyncio.sleep(0)
    hold.set()
    await asyncio.gather(first, second, third, return_exceptions=True)
    assert second.cancelled()
    assert entered == ["A", "C"]
    assert (gate.executing, gate.queued) == (0, 0)


async def test_settings_from_the_server_table(demo_systems: DemoSystems, tmp_path: Path) -> None:
    data = gateway_config(demo_systems, tmp_path, {})
    assert parse_config(data).server.admission == AdmissionSettings()
    assert AdmissionSettings().limit == 32  # a gate unless the operator turns it off
    data["server"]["max_in_flight"] = 0
    assert parse_config(data).server.admission.limit == 0
    data["server"].update(max_in_flight=4, max_queued=10, queue_timeout_s=2)
    assert parse_config(data).server.admission == AdmissionSettings(4, 10, 2.0)
    data["server"]["queue_timeout_s"] = 0
    with pytest.raises(ConfigError, match="queue_timeout_s"):
        parse_config(data)


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (state of another task, no event to wait on)
            await asyncio.sleep(0.01)


TICKETS = "{ customers(first: 2) { edges { node { id tickets { id } } } } }"


async def test_over_http_a_request_without_a_place_gets_503_overloaded_and_a_record(
    demo_systems: DemoSystems, tmp_path: Path, sources: SourceAdmin
) -> None:
    overrides = {
        "server.max_in_flight": 1,
        "server.queue_timeout_s": 0.2,
        "sources.service.timeout_ms": 2000,
    }
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        await sources.fault("service", "hang")
        try:
            slow = asyncio.create_task(gateway.query(TICKETS))
            await until(lambda: gateway.gateway.admission.executing == 1)
            _, metrics = await gateway.get("/metrics")
            refused = await gateway.query("{ customers(first: 1) { edges { cursor } } }")
        finally:
            await sources.fault("service", "ok")
        answered = await slow
        await gateway.gateway.access_log.flush()
        sink = gateway.gateway.config.audit_sink
        assert isinstance(sink, JsonlSink)
        records = [r for _, r in sink.lines() if r is not None and r.get("kind") == "access"]
    assert "c360_requests_in_flight 1.0" in metrics
    assert refused.status == 503
    assert refused.codes() == ["OVERLOADED"]
    assert "data" not in refused.body
    assert refused.headers["retry-after"] == "1"
    assert answered.status == 200  # it kept its place until its system answered
    rejected = [r for r in records if r["reason"] == "overloaded"]
    assert len(rejected) == 1 and rejected[0]["outcome"] == "rejected"
    assert rejected[0]["status"] == 503
    assert orjson.dumps(refused.body).find(b"Traceback") == -1


async def test_a_client_gone_while_it_waited_is_recorded_not_an_error(
    demo_systems: DemoSystems,
    tmp_path: Path,
    sources: SourceAdmin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # wrk, stopping, drops the connections of requests still queued behind the gate; when
    # such a request gets its place its body is gone: no traceback, a 499 in the record.
    overrides = {"server.max_in_flight": 1, "sources.service.timeout_ms": 5000}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        await sources.fault("service", "hang")
        try:
            slow = asyncio.create_task(gateway.query(TICKETS))
            await until(lambda: gateway.gateway.admission.executing == 1)
            body = orjson.dumps({"query": "{ customers(first: 1) { edges { cursor } } }"})
            host, port = gateway.url.removeprefix("http://").split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /graphql HTTP/1.1\r\nhost: c360\r\ncontent-type: application/json\r\n"
                + f"authorization: Bearer {gateway.token()}\r\n".encode()
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            await until(lambda: gateway.gateway.admission.queued == 1)
            writer.close()
            await writer.wait_closed()
        finally:
            await sources.fault("service", "ok")
        answered = await slow
        await until(lambda: gateway.gateway.admission.executing == 0)
        await gateway.gateway.access_log.flush()
        sink = gateway.gateway.config.audit_sink
        assert isinstance(sink, JsonlSink)
        records = [r for _, r in sink.lines() if r is not None and r.get("kind") == "access"]
    assert answered.status == 200
    gone = [r for r in records if r["reason"] == "client_disconnected"]
    assert len(gone) == 1
    assert (gone[0]["outcome"], gone[0]["status"]) == ("rejected", 499)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
