"""The listening socket: accepted connections must not wait for delayed ACKs."""

from __future__ import annotations

import socket

from gateway.serving import bind


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
