"""Running an app under uvicorn on a socket we bind ourselves, so a busy port is one clear
error before anything starts, and tests can serve on an ephemeral port."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class GatewayServer(uvicorn.Server):
    """uvicorn's server, except that a graceful stop on SIGINT/SIGTERM returns normally
    (uvicorn re-raises the signal afterwards, which kills the process before the demo
    systems and connection pools are closed, and exits non-zero)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@dataclass
class RunningServer:
    server: GatewayServer
    task: asyncio.Task[None]
    url: str

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def start_server(app: ASGIApp, sock: socket.socket) -> RunningServer:
    """Serve `app` on `sock`; returns once the app's lifespan startup has completed."""
    host, port = sock.getsockname()[:2]
    server = GatewayServer(uvicorn.Config(app, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    # uvicorn offers no awaitable for "started"; poll its flag, and fail if it gave up.
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("the server stopped during start-up")
        await asyncio.sleep(0.01)
    return RunningServer(server, task, f"http://{host}:{port}")
