"""Start and stop the two extra department systems for a demo world, and the
configuration a user would write for them.

    node = await loyalty_node()            # npm install once; skip without node (CI: fail)
    async with loyalty_system(world, tmp_path, node) as loyalty, stores_system(world) as stores:
        loyalty.url, await loyalty.calls("field _entities")
        stores.url, stores.calls("/v3/visits")
        await stores.stop(); await stores.start()        # down, then up on the same port
        config = tomllib.loads(sources_toml(loyalty.url, stores.url))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp

from demo.people import DemoWorld
from harness import node_and_npm
from tests.systems.data import LoyaltyMember, loyalty_members, store_shoppers
from tests.systems.stores import StoresSystem

__all__ = [
    "LOYALTY_DIR",
    "LoyaltySystem",
    "StoresSystem",
    "loyalty_node",
    "loyalty_system",
    "member_json",
    "sources_toml",
    "stores_system",
]

LOYALTY_DIR = Path(__file__).with_name("loyalty")
START_TIMEOUT_S = 20.0


async def _run(*command: str, limit_s: float) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=LOYALTY_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), limit_s)
    return process.returncode or 0, output.decode(errors="replace")


async def loyalty_node() -> str:
    """The node executable, with the loyalty system's packages installed (once, by npm).
    Without node or npm the test is skipped, or failed when CI=true."""
    node, npm = node_and_npm()
    if not (LOYALTY_DIR / "node_modules" / "@apollo" / "subgraph").exists():
        code, output = await _run(npm, "install", "--no-audit", "--no-fund", limit_s=300)
        assert code == 0, output
    return node


def member_json(member: LoyaltyMember) -> dict[str, Any]:
    """A member as the loyalty system stores it (its data file, `/_admin/members`)."""
    return {
        "id": member.id,
        "email": member.email,
        "phone": member.phone,
        "points": member.points,
        "tier": member.tier,
        "joinedAt": member.joined_at,
        "redemptions": [
            {
                "id": r.id,
                "reward": r.reward,
                "points": r.points,
                "redeemedAt": r.redeemed_at,
            }
            for r in member.redemptions
        ],
    }


class LoyaltySystem:
    """The loyalty subgraph as a Node process on 127.0.0.1. `start()` takes a free port the
    first time and the same one after `stop()`; counts live in the process (`calls`)."""

    def __init__(self, node: str, data_file: Path, log_file: Path) -> None:
        self.node = node
        self.data_file = data_file
        self.log_file = log_file
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """The base URL; the GraphQL endpoint is `url + "/graphql"`."""
        if not self.port:
            raise RuntimeError("the loyalty system was never started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None

    async def start(self) -> None:
        if self._process is not None:
            return
        with self.log_file.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                self.node,
                "server.mjs",
                "--port",
                str(self.port),
                "--data",
                str(self.data_file),
                cwd=LOYALTY_DIR,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        assert process.stdout is not None
        try:
            self.port = await asyncio.wait_for(self._announced_port(process), START_TIMEOUT_S)
        except (TimeoutError, EOFError) as error:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            log_tail = self.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the loyalty system did not start: {log_tail}") from error
        self._process = process
        self._drain = asyncio.create_task(self._discard(process))

    @staticmethod
    async def _announced_port(process: asyncio.subprocess.Process) -> int:
        """The port from the process's `{"port": N}` line (other lines are logs)."""
        assert process.stdout is not None
        while line := await process.stdout.readline():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                return int(json.loads(line)["port"])
        raise EOFError("the process ended before it listened")

    @staticmethod
    async def _discard(process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while await process.stdout.read(65536):
            pass

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._drain is not None:
            await self._drain
            self._drain = None

    async def close(self) -> None:
        await self.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _admin(self, method: str, path: str, body: Any = None) -> Any:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        async with self._http.request(method, self.url + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def requests(self) -> dict[str, int]:
        """Counts since the last reset: per "METHOD /path" and per root field ("field
        _entities", "field memberPage", ...)."""
        stats = await self._admin("GET", "/_admin/stats")
        return dict(stats["requests"])

    async def calls(self, key: str | None = None) -> int:
        """HTTP requests in all (admin ones aside), or the count of one key of `requests`."""
        stats = await self._admin("GET", "/_admin/stats")
        return int(stats["total"] if key is None else stats["requests"].get(key, 0))

    async def reset(self) -> None:
        await self._admin("POST", "/_admin/reset")

    async def add(self, members: Iterable[LoyaltyMember]) -> None:
        """New members signing up while the system runs."""
        await self._admin("POST", "/_admin/members", [member_json(m) for m in members])


def _write_members(work_dir: Path, members: Iterable[LoyaltyMember]) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    data_file = work_dir / "loyalty-members.json"
    data_file.write_text(json.dumps([member_json(m) for m in members], ensure_ascii=False))
    return data_file


@contextlib.asynccontextmanager
async def loyalty_system(
    world: DemoWorld,
    work_dir: Path,
    node: str,
    members: Iterable[LoyaltyMember] | None = None,
) -> AsyncIterator[LoyaltySystem]:
    """The loyalty subgraph over `members` (default: the world's, `loyalty_members`)."""
    chosen = loyalty_members(world) if members is None else members
    data_file = await asyncio.to_thread(_write_members, work_dir, chosen)
    system = LoyaltySystem(node, data_file, work_dir / "loyalty.log")
    try:
        await system.start()
        yield system
    finally:
        await system.close()


@contextlib.asynccontextmanager
async def stores_system(world: DemoWorld) -> AsyncIterator[StoresSystem]:
    """The stores API over the world's shoppers (`store_shoppers`), in this event loop."""
    system = StoresSystem(store_shoppers(world))
    try:
        await system.start()
        yield system
    finally:
        await system.stop()


def sources_toml(loyalty_url: str, stores_url: str) -> str:
    """The `[sources.*]` tables a user writes to add the two departments to the gateway."""
    return f'''
# --- loyalty: the membership programme's GraphQL API (an Apollo Federation 2 subgraph) ---
[sources.loyalty]
kind = "graphql"
url = "{loyalty_url}/graphql"
timeout_ms = 3000

[sources.loyalty.entities.member]
key_field = "id"
federation_type = "Member"
selection = "id email phone points tier joinedAt redemptions {{ id reward points redeemedAt }}"

# memberPage's cursor is the system's own (opaque); the identity sync sends it back as is.
[sources.loyalty.scan]
query = """
query($after: String, $limit: Int!) {{
  memberPage(first: $limit, after: $after) {{ items {{ id email phone }} nextCursor }}
}}
"""
items = "memberPage.items"
next_field = "memberPage.nextCursor"

# --- stores: the offline stores' REST API (v3) ------------------------------------------
[sources.stores]
kind = "rest"
base_url = "{stores_url}"
timeout_ms = 3000
health_path = "/healthz"

# Visits of up to 100 shoppers per request, each as its own ?shopper= parameter; the
# answer comes 25 visits a page, the next page's cursor in "next", sent back as ?cursor=.
[sources.stores.entities.visits]
key_field = "shopperNo"
many = true
items = "visits"
batch = {{ path = "/v3/visits", param = "shopper", style = "repeat", max_keys = 100 }}
paging = {{ next_field = "next", cursor_param = "cursor", max_pages = 50 }}

[sources.stores.scan]
path = "/v3/shoppers"
items = "shoppers"
next_field = "next"
cursor_param = "cursor"
limit_param = "limit"
id_field = "shopperNo"
email_field = "mail"
phone_field = "mobile"
'''
