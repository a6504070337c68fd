"""Running an app under uvicorn on a socket we bind ourselves, so a busy port is one clear
error before anything starts, and tests can serve on an ephemeral port. Given a ServerTLS,
the socket speaks TLS (our context, not uvicorn's) and every response carries HSTS."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import ConfigError
from gateway.tls import HSTSMiddleware, ServerTLS, uvicorn_ssl_context

log = logging.getLogger("c360.serving")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# Net new container objects (allocations minus frees) before the collector's young pass.
# CPython's default, 700, is reached while a page of customers is being built: each page's
# objects, alive until it is answered, were walked by young passes, promoted, and walked
# again by full passes, then freed by reference counting anyway. With room for a few
# pages, the collector mostly finds what it is there for, cycles (bench (b) CPU per
# page). Not much more: a young pass over that many live objects stalls the request it
# lands in (bench (c), (a)'s p99 on a warm cache). Figures in bench/HISTORY.md.
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Move everything alive once the gateway has started (modules, schema, policies,
    the identity index) out of the cyclic collector's sight, and let the young pass wait
    for more than one page's worth of objects (YOUNG_THRESHOLD). Full passes walk every
    tracked object: over the whole heap, each is a stall for every request in flight,
    every few seconds under load (bench (b)'s tail at c=1; tests/test_serving.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it, a response written in two parts
    # (headers, then body) waits for the client's delayed ACK (40 ms on Linux) on every
    # request (tests/test_serving.py).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HeadersWithBody:
    """A transport that holds a response's status line and headers until its body is
    written, so that a response leaves in one write and one TCP segment instead of two.

    uvicorn writes each ASGI message as it comes, and with TCP_NODELAY each write is its
    own send, a system call and a segment more on every request (bench (a) overhead;
    tests/test_serving.py). Held headers leave with the next write, or at the end of the
    event loop's current iteration at the latest (a streamed body whose first part comes
    later is not held back)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n"):
            self._held = data
            asyncio.get_running_loop().call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each response's headers with its body."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(HeadersWithBody(transport))  # type: ignore[arg-type]


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
    tls: ServerTLS | None = None

    def reload_tls(self) -> bool:
        """Serve the certificate and key now in the files (replaced in place) to every
        new connection, without a restart; connections already open keep theirs. The
        files are checked on a scratch context first, so a bad pair leaves the served
        certificate as it was."""
        live = self.server.config.ssl
        if self.tls is None or live is None:
            return True
        try:
            self.tls.context()  # whole and matching, or a ConfigError
            live.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            if self.tls.client_ca is not None:
                live.load_verify_locations(cafile=str(self.tls.client_ca))
        except (ConfigError, ssl.SSLError, OSError) as error:
            log.error(
                "TLS certificate not reloaded; serving the previous one",
                extra={"reason": str(error)},
            )
            return False
        log.warning("TLS certificate reloaded", extra={"cert": str(self.tls.cert_file)})
        return True

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


def uvicorn_tls_options(tls: ServerTLS | None) -> dict[str, Any]:
    """uvicorn's keyword arguments for serving TLS (none for plain HTTP)."""
    if tls is None:
        return {}
    tls.context()  # a bad file is one ConfigError naming the key, before anything starts
    return {
        "ssl_certfile": str(tls.cert_file),
        "ssl_keyfile": str(tls.key_file),
        "ssl_ca_certs": str(tls.client_ca) if tls.client_ca else None,
        "ssl_context_factory": uvicorn_ssl_context,
    }


def create_hsts_app() -> ASGIApp:
    """`uvicorn --factory` target for `c360 serve --workers N` over TLS: the gateway's app
    with HSTS, built in each worker from the file that C360_CONFIG names."""
    from gateway.asgi import create_app

    return HSTSMiddleware(create_app())


async def start_server(
    app: ASGIApp, sock: socket.socket, tls: ServerTLS | None = None
) -> RunningServer:
    """Serve `app` on `sock` (over TLS when given `tls`); returns once the app's lifespan
    startup has completed."""
    host, port = sock.getsockname()[:2]
    if tls is not None:
        app = HSTSMiddleware(app)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,  # the access log is c360's own; uvicorn's line was silenced anyway
        lifespan="on",
        http=GatewayHttpProtocol,
        **uvicorn_tls_options(tls),
    )
    server = GatewayServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    # uvicorn offers no awaitable for "started"; poll its flag, and fail if it gave up.
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("the server stopped during start-up")
        await asyncio.sleep(0.01)
    scheme = "https" if tls is not None else "http"
    return RunningServer(server, task, f"{scheme}://{host}:{port}", tls)
