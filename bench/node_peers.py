"""The Node peers: `@apollo/gateway` under `@apollo/server` and `@graphql-hive/gateway`, over
the demo marketing subgraph and two thin subgraphs in `bench/peers/` (sales with the identity
crosswalk, and the helpdesk) whose schemas are derived from c360's graph declaration
(bench/peer_schemas.py). Installed with npm into `bench/peers/node_modules` on first use.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.peer_schemas import peer_schemas
from bench.procs import Child, Children, free_port, wait_ready
from demo import GRAPH_FILE
from resolvers.declaration import load_declaration

PEERS_DIR = Path(__file__).with_name("peers")
PEER_NAMES = ("apollo", "hive")
# Reported with the results; the first three are the ones the issue names.
PACKAGES = (
    "@apollo/gateway",
    "@apollo/server",
    "@graphql-hive/gateway",
    "@apollo/subgraph",
    "graphql-yoga",
    "graphql",
    "sql.js",
)
TYPENAME = b'{"query": "{ __typename }"}'
INSTALL_TIMEOUT_S = 600.0


def node_version() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


def installed_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        manifest = PEERS_DIR / "node_modules" / package / "package.json"
        if manifest.exists():
            versions[package] = json.loads(manifest.read_text())["version"]
    return versions


async def ensure_installed(log_path: Path) -> str | None:
    """Install the peers' packages unless they already are; the reason when that fails."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        return "node/npm not found"
    marker = PEERS_DIR / "node_modules" / ".package-lock.json"
    lock = PEERS_DIR / "package-lock.json"
    manifests = [path for path in (PEERS_DIR / "package.json", lock) if path.exists()]
    if marker.exists() and all(marker.stat().st_mtime >= p.stat().st_mtime for p in manifests):
        return None
    # `npm ci` installs exactly the committed lock file; without one, resolve afresh.
    command = [npm, "ci" if lock.exists() else "install", "--no-audit", "--no-fund"]
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=PEERS_DIR, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
        try:
            code = await asyncio.wait_for(process.wait(), INSTALL_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            return f"npm install did not finish in {INSTALL_TIMEOUT_S:.0f}s"
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    if code != 0:
        return f"npm install failed ({code}): {_tail(log_path)}"
    return None


def _tail(log_path: Path) -> str:
    return " / ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])


@dataclass
class Subgraphs:
    customers: Child
    helpdesk: Child
    customers_url: str  # base, for /_admin/stats
    services: list[dict[str, str]]  # [{"name", "url"}] for composition


@dataclass
class NodePeers:
    children: Children
    http: aiohttp.ClientSession
    work_dir: Path

    def _node(self, name: str, script: str, env: Mapping[str, str], *args: str) -> Child:
        node = shutil.which("node") or "node"
        return self.children.spawn(
            name,
            [node, str(PEERS_DIR / script), *args],
            env={"NODE_ENV": "production", **env},
            cwd=PEERS_DIR,
        )

    async def start_subgraphs(
        self,
        *,
        sales_db: Path,
        crosswalk: Path,
        helpdesk_url: str,
        marketing_url: str,
        sales_latency_ms: int,
    ) -> Subgraphs:
        customers_port, helpdesk_port = free_port(), free_port()
        # The subgraphs serve the fields c360's declaration declares, from the same columns.
        schemas = peer_schemas(load_declaration(GRAPH_FILE))
        spec = {
            name: schema.write(self.work_dir / f"{name}-subgraph.json")
            for name, schema in schemas.items()
        }
        customers = self._node(
            "peer-customers-subgraph",
            "customers-subgraph.mjs",
            {
                "PORT": str(customers_port),
                "SALES_DB": str(sales_db),
                "CROSSWALK": str(crosswalk),
                "LATENCY_MS": str(sales_latency_ms),
                "SCHEMA": str(spec["customers"]),
            },
        )
        helpdesk = self._node(
            "peer-helpdesk-subgraph",
            "helpdesk-subgraph.mjs",
            {
                "PORT": str(helpdesk_port),
                "HELPDESK_URL": helpdesk_url,
                "SCHEMA": str(spec["helpdesk"]),
            },
        )
        customers_base = f"http://127.0.0.1:{customers_port}"
        helpdesk_base = f"http://127.0.0.1:{helpdesk_port}"
        await wait_ready(self.http, customers, customers_base + "/graphql", body=TYPENAME)
        await wait_ready(self.http, helpdesk, helpdesk_base + "/graphql", body=TYPENAME)
        services = [
            {"name": "customers", "url": customers_base + "/graphql"},
            {"name": "helpdesk", "url": helpdesk_base + "/graphql"},
            {"name": "marketing", "url": marketing_url},
        ]
        return Subgraphs(customers, helpdesk, customers_base, services)

    async def start(self, peer: str, subgraphs: Subgraphs) -> tuple[Child, str]:
        """Start one Node gateway over the subgraphs; its child and base URL once it answers."""
        port = free_port()
        services = json.dumps(subgraphs.services)
        if peer == "apollo":
            child = self._node(
                "peer-apollo", "apollo-gateway.mjs", {"PORT": str(port), "SUBGRAPHS": services}
            )
        elif peer == "hive":
            supergraph = self.work_dir / "supergraph.graphql"
            await self._compose(supergraph, services)
            child = self._node(
                "peer-hive",
                "node_modules/@graphql-hive/gateway/dist/bin.js",
                {},
                *("supergraph", str(supergraph), "--host", "127.0.0.1", "--port", str(port)),
                # One process, as c360 and Apollo run here, so CPU and RSS compare.
                *("--fork", "1", "--config-path", str(PEERS_DIR / "hive.config.mjs")),
            )
        else:
            raise ValueError(f"unknown peer {peer!r}")
        base = f"http://127.0.0.1:{port}"
        await wait_ready(self.http, child, base + "/graphql", body=TYPENAME, limit_s=90)
        return child, base

    async def _compose(self, out: Path, services: str) -> None:
        node = shutil.which("node") or "node"
        process = await asyncio.create_subprocess_exec(
            node,
            str(PEERS_DIR / "compose.mjs"),
            str(out),
            services,
            cwd=PEERS_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        if process.returncode != 0:
            raise RuntimeError(f"supergraph composition failed: {output.decode()[-400:]}")
