"""Runs the three demo department systems: seeds the sales DB, serves helpdesk and marketing.

In process: `async with DemoSystems(data_dir) as systems: systems.endpoints`.
As a process: `python -m demo.systems --data-dir D` prints the endpoints as one JSON line.
With a TLS directory (`--tls-dir`, made by gateway/tls.py's DemoCA: `ca.pem`, and
`<system>.pem` + `<system>-key.pem`), the HTTP systems serve HTTPS, and the helpdesk
accepts only clients with a certificate that CA signed (mTLS).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

from aiohttp import web

from demo.helpdesk import helpdesk_app
from demo.marketing import marketing_app
from demo.people import DemoWorld, generate
from demo.sales_db import seed_sales_db, sqlite_dsn

__all__ = ["SYSTEMS", "DemoSystems", "main"]

SYSTEMS = ("sales", "service", "marketing")
HOST = "127.0.0.1"
# Systems that refuse a TLS client without a certificate from the demo CA.
MTLS_SYSTEMS = frozenset({"service"})
# Long enough for an answer in flight, short enough that a "hang" fault never delays shutdown.
SHUTDOWN_TIMEOUT = 1.0


def tls_server_context(tls_dir: Path, name: str, *, require_client_cert: bool) -> ssl.SSLContext:
    """A system's HTTPS context from the TLS directory: TLS 1.2 at least and, for mTLS,
    a client certificate signed by the directory's CA is required to complete the
    handshake."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls_dir / f"{name}.pem", tls_dir / f"{name}-key.pem")
    if require_client_cert:
        context.load_verify_locations(cafile=tls_dir / "ca.pem")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def unused_port() -> int:
    """A port nothing listens on right now (the OS picks it; we close it again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class DemoSystems:
    """The sales database, the helpdesk and the marketing API for one demo world."""

    def __init__(
        self,
        data_dir: Path,
        *,
        seed: int = 42,
        customers: int = 1000,
        latency_ms: int = 0,
        system_latency: Mapping[str, int] | None = None,
        down: Collection[str] = (),
        sales_dsn: str | None = None,
        tls_dir: Path | None = None,
        mtls: Collection[str] = MTLS_SYSTEMS,
    ) -> None:
        latencies = {name: latency_ms for name in SYSTEMS} | dict(system_latency or {})
        unknown = (set(latencies) | set(down)) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"unknown system(s): {', '.join(sorted(unknown))}")
        if any(ms < 0 for ms in latencies.values()):
            raise ValueError("latency must not be negative")
        if customers < 1:
            raise ValueError("customers must be at least 1")
        self.data_dir = Path(data_dir)
        self.seed = seed
        self.customers = customers
        self.latency_ms: dict[str, int] = latencies
        self.down = frozenset(down)
        self.sales_dsn = sales_dsn
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.mtls = frozenset(mtls)
        self.endpoints: dict[str, dict[str, str]] = {}
        self._world: DemoWorld | None = None
        self._runners: list[web.AppRunner] = []

    @property
    def world(self) -> DemoWorld:
        if self._world is None:
            raise RuntimeError("DemoSystems is not started")
        return self._world

    def admin_url(self, system: str) -> str:
        """Base URL of an HTTP system's `/_admin/*` hooks ("service" or "marketing")."""
        url = self.endpoints[system]["url"]
        return url.removesuffix("/graphql")

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # CPU-bound; a thread keeps a running event loop answering meanwhile.
        self._world = await asyncio.to_thread(generate, self.seed, self.customers)
        try:
            self.endpoints["sales"] = {"dsn": await self._start_sales()}
            service = await self._serve("service", helpdesk_app)
            self.endpoints["service"] = {"url": service}
            marketing = await self._serve("marketing", marketing_app)
            self.endpoints["marketing"] = {"url": f"{marketing}/graphql"}
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _start_sales(self) -> str:
        if "sales" in self.down:
            # SQLite cannot create a file in a missing directory, so every connect fails.
            return sqlite_dsn(self.data_dir / "sales-is-down" / "no-such-dir")
        dsn = self.sales_dsn or sqlite_dsn(self.data_dir)
        await seed_sales_db(dsn, self.world)
        return dsn

    async def _serve(self, name: str, make_app: Callable[..., web.Application]) -> str:
        scheme = "http" if self.tls_dir is None else "https"
        if name in self.down:
            return f"{scheme}://{HOST}:{unused_port()}"
        context = None
        if self.tls_dir is not None:
            context = tls_server_context(self.tls_dir, name, require_client_cert=name in self.mtls)
        app = make_app(self.world, latency_ms=self.latency_ms[name])
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, HOST, 0, ssl_context=context).start()
        port = runner.addresses[0][1]
        return f"{scheme}://{HOST}:{port}"


# --- command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not usage + message: scripts read the last line of stderr.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _system_latency(text: str) -> tuple[str, int]:
    name, sep, ms = text.partition("=")
    if not sep or name not in SYSTEMS or not ms.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected NAME=MS with NAME one of {', '.join(SYSTEMS)}, got {text!r}"
        )
    return name, int(ms)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m demo.systems",
        description="Run the demo department systems (sales DB, helpdesk REST, marketing "
        "GraphQL) and print their endpoints as one JSON line.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="where sales.db goes")
    parser.add_argument("--seed", type=int, default=42, help="data seed (default 42)")
    parser.add_argument("--customers", type=_positive, default=1000, help="default 1000")
    parser.add_argument(
        "--latency-ms", type=_non_negative, default=0, help="added to every HTTP answer"
    )
    parser.add_argument(
        "--system-latency",
        type=_system_latency,
        action="append",
        default=[],
        metavar="NAME=MS",
        help="latency for one system, overriding --latency-ms (repeatable)",
    )
    parser.add_argument(
        "--down",
        choices=SYSTEMS,
        action="append",
        default=[],
        help="leave a system out; its endpoint points at nothing (repeatable)",
    )
    parser.add_argument("--sales-dsn", help="seed this database instead of a SQLite file")
    parser.add_argument(
        "--tls-dir",
        type=Path,
        help="serve HTTPS with the certificates in DIR (ca.pem, <system>.pem, "
        "<system>-key.pem); the helpdesk then requires a client certificate",
    )
    return parser


async def _serve_until_signalled(systems: DemoSystems) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with systems:
        # The seeded world (every person, ticket and contact) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it, which stalled
        # every answer every few seconds under load (the bench's lower bound's tail).
        gc.collect()
        gc.freeze()
        sys.stdout.write(json.dumps(systems.endpoints) + "\n")
        sys.stdout.flush()
        await stop.wait()


def _runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        systems = DemoSystems(
            args.data_dir,
            seed=args.seed,
            customers=args.customers,
            latency_ms=args.latency_ms,
            system_latency=dict(args.system_latency),
            down=set(args.down),
            sales_dsn=args.sales_dsn,
            tls_dir=args.tls_dir,
        )
        _runner()(_serve_until_signalled(systems))
    except Exception as exc:  # a clear line for the operator, not a traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"demo.systems: error: {message}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
