"""The listening socket (accepted connections must not wait for delayed ACKs), the
response write, request ids, and the collector's settings for a served heap."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest

from gateway.http import state
from gateway.http.state import new_request_id
from gateway.serving import YOUNG_THRESHOLD, HeadersWithBody, bind, settle_heap


def test_accepted_connections_have_tcp_nodelay() -> None:
    """A response written as headers, then body, on a Nagle socket waits for the
    client's delayed ACK: 40 ms on every request (the first benchmark found it)."""
    listener = bind("127.0.0.1", 0)
    listener.setblocking(True)
    try:
        client = socket.create_connection(listener.getsockname()[:2], timeout=5)
        accepted, _ = listener.accept()
        try:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            accepted.close()
            client.close()
    finally:
        listener.close()


class _Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


async def test_a_response_leaves_in_one_write() -> None:
    raw = _Recording()
    transport = HeadersWithBody(raw)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert raw.writes == []  # held for the body
    transport.write(b"{}")
    assert raw.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert transport.get_extra_info("peername") == "extra:peername"


async def test_held_headers_leave_by_the_next_loop_iteration_or_on_close() -> None:
    raw = _Recording()
    transport = HeadersWithBody(raw)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    await asyncio.sleep(0)  # a streamed body's first part may come much later
    assert raw.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    transport.write(b"HTTP/1.1 404 Not Found\r\n\r\n")
    transport.close()
    assert raw.writes[-1] == b"HTTP/1.1 404 Not Found\r\n\r\n" and raw.closed
    transport.write(b"5\r\nhello\r\n")  # anything else goes straight through
    assert raw.writes[-1] == b"5\r\nhello\r\n"


def test_request_ids_are_unique_per_process_and_drawn_again_after_a_fork(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({i[:16] for i in ids}) == 1  # one prefix, then a counter
    monkeypatch.setattr(state.os, "getpid", lambda: -1)  # as in a forked worker
    child = new_request_id()
    assert child[:16] != ids[0][:16] and child not in ids


def test_the_settled_heap_is_frozen_and_young_passes_wait_for_more_than_a_page() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        # Room for a page of customers: building one does not start a young pass.
        gc.collect()
        passes = gc.get_stats()[0]["collections"]
        page = [{"id": str(i), "tickets": [{"n": n} for n in range(5)]} for i in range(1000)]
        assert gc.get_stats()[0]["collections"] == passes
        del page
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
