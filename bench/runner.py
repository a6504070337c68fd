"""One benchmark, start to finish: the demo systems and the gateway as their own processes,
a warm-up, the scenarios at each concurrency with wrk, the lower bound, the Node peers, and
(in full mode) the profile and the soak. Every run is recorded, a failed one with its reason,
so one broken piece never loses the rest of the results."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import report
from bench.counters import Counts, CountSource, c360_counts, peer_counts
from bench.direct import DirectSpec
from bench.load import LoadResult, lua_script, run_wrk, wrk_path
from bench.node_peers import PEER_NAMES, NodePeers, ensure_installed, installed_versions
from bench.node_peers import node_version as node_version_of
from bench.plan import SYSTEM_LATENCY_MS, Plan
from bench.procs import (
    Child,
    Children,
    StartError,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    wait_ready,
)
from bench.profiling import Profile
from bench.profiling import markdown as profile_markdown
from bench.profiling import record as py_spy_record
from bench.scenarios import ONE, PAGE, SCENARIOS, Query, Scenario, problem_with
from bench.tokens import mint
from connectors.identity.index import IdentityIndex
from connectors.identity.keys import IdentityKeys
from connectors.identity.store import CrosswalkStore
from gateway.demo import DemoOptions, DemoSystemsProcess, demo_config, start_demo_systems, to_toml

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
WORK_DIR = REPO / "bench" / ".work"
PROBE_REQUESTS = 5
SOAK_WARMUP_S = 60.0  # RSS settles (caches, pools, allocator arenas) before growth is judged
SOAK_THRESHOLD_MB = 5.0
MB = 1024 * 1024
CACHE_TTL_S = 3600
MAX_COST = 1_000_000


@dataclass
class Target:
    """A gateway under test: c360 or a Node peer, as a process with a URL."""

    name: str
    child: Child
    url: str
    counts: CountSource
    system_pids: list[int]  # the department systems (and subgraphs) behind it
    peer: bool = False


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at `path` while children are started, so they inherit it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return (
        f"{model}, {os.cpu_count()} cores, {mem_kib / 1024 / 1024:.0f} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"Node {node_version_of() or 'absent'}"
    )


def commit() -> str:
    """The checked-out commit, read-only (and whether the tree has changes on top)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{head} + uncommitted changes" if dirty else head


def wrk_version() -> str:
    wrk = wrk_path()
    if wrk is None:
        return "wrk (absent)"
    output = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
    return output.split(" [")[0].strip() or "wrk"


class Bench:
    def __init__(
        self,
        plan: Plan,
        selected: Sequence[str],
        *,
        with_peers: bool,
        http: aiohttp.ClientSession,
        children: Children,
        work_dir: Path,
        log: Callable[[str], None] = print,
    ) -> None:
        self.plan = plan
        self.selected = list(selected)
        self.with_peers = with_peers
        self.http = http
        self.children = children
        self.work_dir = work_dir
        self.log = log
        self.systems: DemoSystemsProcess | None = None
        self.config: dict[str, Any] = {}
        self.cuids: list[str] = []
        self.links: dict[str, dict[str, str]] = {}
        latency = ", ".join(f"{k} {v} ms" for k, v in SYSTEM_LATENCY_MS.items())
        self.results: dict[str, Any] = {
            "meta": {
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": machine(),
                "commit": commit(),
                "load_generator": f"{wrk_version()}, 1 thread, closed loop over keep-alive "
                "connections, one connection per concurrent client",
                "latency": latency + " (sales through the SQL connector's simulated_latency_ms)",
            },
            "plan": asdict(plan),
            "titles": {key: SCENARIOS[key].title for key in self.selected},
            "runs": [],
            "checks": [],
            "peers": {},
            "paired": [],
            "turns": [],
            "notes": [
                f"c360 runs with limits.max_cost = {MAX_COST}: the demo template's 5000 answers "
                "(b)'s page query with QUERY_TOO_COMPLEX (estimated cost 6501). The record "
                "cache is off except in (c), where every TTL is an hour.",
            ],
        }

    # --- processes -------------------------------------------------------------------------

    @property
    def admin(self) -> dict[str, str]:
        assert self.systems is not None
        endpoints = self.systems.endpoints
        return {
            "service": endpoints["service"]["url"],
            "marketing": endpoints["marketing"]["url"].removesuffix("/graphql"),
        }

    def c360_config(self, *, cache: bool) -> dict[str, Any]:
        assert self.systems is not None
        overrides: dict[str, Any] = {
            "sources.sales.simulated_latency_ms": SYSTEM_LATENCY_MS["sales"],
            "identity.dsn": f"sqlite+aiosqlite:///{self.work_dir / 'identity.db'}",
            "server.graphiql": False,
            # The template's cost limit (5000) rejects (b) itself; the bench measures the
            # work, and the report says the limit was raised.
            "limits.max_cost": MAX_COST,
        }
        # The demo template enables the record cache; every scenario but (c) measures the
        # systems' path, and (e) must see the failure rather than stale records.
        overrides["cache.enabled"] = cache
        if cache:
            # "Warm" means every record cached for the whole scenario: the demo's TTLs (10 s
            # for tickets) would otherwise expire entries mid-run and count refreshes.
            overrides["cache.ttl_s"] = CACHE_TTL_S
            for source in self.systems.endpoints:
                overrides[f"sources.{source}.cache.ttl_s"] = CACHE_TTL_S
        config = demo_config(self.systems.endpoints, port=free_port(), overrides=overrides)
        # One principal sending thousands of requests a minute is the load test itself; a
        # per-principal rate limit, should the template enable one, would measure only itself.
        config.pop("rate_limit", None)
        return config

    async def start_c360(self, name: str, *, cache: bool = False) -> Target:
        config = self.c360_config(cache=cache)
        path = self.work_dir / f"{name}.toml"
        path.write_text(to_toml(config), encoding="utf-8")
        c360 = Path(sys.executable).with_name("c360")
        command = [str(c360)] if c360.exists() else [sys.executable, "-m", "gateway.cli"]
        child = self.children.spawn(name, [*command, "serve", "--config", str(path)], cwd=REPO)
        url = f"http://127.0.0.1:{config['server']['port']}"
        try:
            await wait_ready(self.http, child, url + "/readyz", limit_s=120)
        except StartError:
            self.children.stop(child)
            raise
        assert self.systems is not None
        counts = c360_counts(self.http, url, self.admin)
        return Target("c360", child, url, counts, [self.systems.process.pid])

    # --- requests ------------------------------------------------------------------------

    def headers(self, scenario: Scenario) -> dict[str, str]:
        token = mint(self.config, role=scenario.role, purpose=scenario.purpose)
        return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, Any]:
        async with self.http.post(url + "/graphql", data=body, headers=headers) as response:
            raw = await response.read()
        try:
            return response.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return response.status, raw[:200].decode(errors="replace")

    def bodies(self, target: Target, query: Query) -> list[bytes]:
        text = query.peer if target.peer else query.c360
        assert text is not None
        return query.bodies(text, self.cuids)

    def script(self, name: str, bodies: Sequence[bytes], headers: Mapping[str, str]) -> Path:
        path = self.work_dir / f"{name}.lua"
        path.write_text(lua_script(bodies, headers), encoding="utf-8")
        return path

    async def fetch_cuids(self, target: Target) -> list[str]:
        """The customers of `customers(first: 100)`: the ids (a) cycles through."""
        query = b'{"query": "{ customers(first: 100) { edges { node { id } } } }"}'
        status, body = await self.post(target.url, query, self.headers(SCENARIOS["a"]))
        if status != 200 or not isinstance(body, dict) or not body.get("data"):
            raise RuntimeError(f"customers(first: 100) answered {status}: {str(body)[:300]}")
        return [edge["node"]["id"] for edge in body["data"]["customers"]["edges"]]

    async def load_crosswalk(self) -> Path:
        """The gateway's identity crosswalk (CUID -> each system's key), read through the
        project's own store, for the lower bound and the peers' customers subgraph."""
        identity = self.config["identity"]
        store = CrosswalkStore(identity["dsn"])
        try:
            index = IdentityIndex.build(await store.links(), IdentityKeys(identity["key"].encode()))
        finally:
            await store.close()
        self.links = {cuid: dict(systems) for cuid, systems in index.systems.items()}
        path = self.work_dir / "crosswalk.json"
        path.write_bytes(orjson.dumps({"ordered": list(index.ordered), "links": self.links}))
        return path

    # --- measuring -----------------------------------------------------------------------

    async def drained(self, target: Target) -> Counts:
        """Counts once the requests still in flight (wrk stops mid-request) have finished."""
        previous = await target.counts()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            current = await target.counts()
            if current.requests == previous.requests:
                return current
            previous = current
        return previous

    def systems_cpu(self, target: Target) -> float:
        return sum(cpu_seconds(pid) for pid in target.system_pids)

    async def warm(self, target: Target, scenario: Scenario) -> None:
        for query in scenario.queries:
            bodies = self.bodies(target, query)
            script = self.script(f"warm-{target.name}-{query.name}", bodies, self.headers(scenario))
            await run_wrk(target.url, script, concurrency=16, duration_s=self.plan.gateway_warmup_s)
        await self.drained(target)

    async def check(self, target: Target, scenario: Scenario, query: Query) -> str | None:
        """One request checked for the scenario's expected answer, then a few sequential
        ones counted exactly at the systems."""
        bodies = self.bodies(target, query)
        headers = self.headers(scenario)
        status, body = await self.post(target.url, bodies[0], headers)
        problem = problem_with(status, body, scenario, peer=target.peer)
        calls = None
        if status == 200:
            before = await self.drained(target)
            for i in range(PROBE_REQUESTS):
                await self.post(target.url, bodies[i % len(bodies)], headers)
            calls = (await self.drained(target)).per_request(before)
        self.results["checks"].append(
            {
                "target": target.name,
                "label": scenario.label(query),
                "problem": problem,
                "calls_per_query": calls,
            }
        )
        if problem:
            self.log(f"  {target.name} {scenario.label(query)}: {problem}")
        return problem

    async def settled_check(self, target: Target, scenario: Scenario, query: Query) -> str | None:
        """`check`, and once more after the breakers' cooldown when a source looks
        unavailable: a run before this one (overloaded, or (e) with the helpdesk failing)
        can leave a circuit open, and c360 then answers without asking that system."""
        problem = await self.check(target, scenario, query)
        if problem and "SOURCE_UNAVAILABLE" in problem and not target.peer:
            label = scenario.label(query)
            cooldown = self.config.get("resilience", {}).get("breaker_cooldown_s", 10)
            self.log(f"  a source looks unavailable; retrying in {cooldown + 1} s")
            self.results["notes"].append(
                f"({label}) on {target.name}: the first check saw SOURCE_UNAVAILABLE "
                f"({problem[:60]}...): a circuit left open by a previous run; checked "
                f"again after the {cooldown} s cooldown."
            )
            await asyncio.sleep(cooldown + 1)
            self.results["checks"].pop()
            problem = await self.check(target, scenario, query)
        return problem

    def duration_for(self, previous: Mapping[str, Any] | None, concurrency: int) -> float:
        """The plan's run length, or longer when the expected latency at this concurrency
        (the previous run's throughput shared by `concurrency` clients) is not well below it."""
        base = self.plan.duration_s
        if previous is None or previous.get("status") != "ok" or not previous["rps"]:
            return base
        expected_s = max(previous["p50_ms"] / 1000, concurrency / previous["rps"])
        return float(min(self.plan.longest_run_s, max(base, round(2 * expected_s))))

    async def measure(
        self,
        target: Target,
        label: str,
        concurrency: int,
        script: Path,
        duration_s: float,
    ) -> dict[str, Any]:
        record: dict[str, Any] = {"target": target.name, "label": label, "concurrency": concurrency}
        pid = target.child.pid
        try:
            # At concurrency 1 the gateway is already warm and the one connection opens at
            # once; above it, the first wave of simultaneous requests is not steady state.
            if self.plan.warmup_s and concurrency > 1:
                await run_wrk(
                    target.url, script, concurrency=concurrency, duration_s=self.plan.warmup_s
                )
            before = await self.drained(target)
            reset_peak_rss(pid)
            cpu_before, systems_before = cpu_seconds(pid), self.systems_cpu(target)
            busy_before = machine_busy_seconds()
            result = await run_wrk(
                target.url, script, concurrency=concurrency, duration_s=duration_s
            )
            cpu = cpu_seconds(pid) - cpu_before
            systems = self.systems_cpu(target) - systems_before
            busy = machine_busy_seconds() - busy_before
            peak = peak_rss_bytes(pid)
            after = await self.drained(target)
        except (RuntimeError, OSError, aiohttp.ClientError, TimeoutError) as error:
            record["status"] = f"failed: {error}"
            self.log(f"  {target.name} {label} c={concurrency}: {record['status']}")
            return record
        record.update(self.derived(result, cpu, systems, peak))
        # Whatever else the machine did meanwhile (another job on the same two cores makes a
        # run worthless; this column shows it).
        others = busy - cpu - systems - result.client_cpu_s
        record["other_cores"] = round(max(others, 0.0) / result.duration_s, 2)
        record["calls_per_query"] = after.per_request(before)
        self.log(
            f"  {target.name:>11} {label:<4} c={concurrency:<3} {result.rps:8.1f} req/s  "
            f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms"
        )
        return record

    @staticmethod
    def derived(result: LoadResult, cpu: float, systems: float, peak: int) -> dict[str, Any]:
        answered = max(result.requests, 1)
        return {
            "status": "ok"
            if result.requests
            else f"failed: no answer within the {result.duration_s:.0f} s run",
            **result.as_dict(),
            "gateway_cpu_ms_per_request": round(cpu * 1000 / answered, 3),
            "gateway_cores": round(cpu / result.duration_s, 3),
            "systems_cpu_ms_per_request": round(systems * 1000 / answered, 3),
            "client_cores": round(result.client_cpu_s / result.duration_s, 4),
            "peak_rss_mb": round(peak / MB, 1),
        }

    async def scenario_runs(self, target: Target, scenario: Scenario) -> None:
        """The scenario's queries at every concurrency, in the state the scenario asks for."""
        if scenario.fault:
            await self.fault(scenario.fault, "error")
        try:
            for query in scenario.queries:
                label = scenario.label(query)
                problem = await self.settled_check(target, scenario, query)
                if problem and (problem.startswith("HTTP") or problem.startswith("no data")):
                    for concurrency in self.plan.concurrencies:
                        self.results["runs"].append(
                            {
                                "target": target.name,
                                "label": label,
                                "concurrency": concurrency,
                                "status": f"skipped: {problem[:80]}",
                            }
                        )
                    continue
                bodies = self.bodies(target, query)
                script = self.script(f"{target.name}-{label}", bodies, self.headers(scenario))
                previous = None
                for concurrency in self.plan.concurrencies:
                    duration = self.duration_for(previous, concurrency)
                    previous = await self.measure(target, label, concurrency, script, duration)
                    self.results["runs"].append(previous)
        finally:
            if scenario.fault:
                await self.fault(scenario.fault, "ok")

    async def fault(self, system: str, mode: str) -> None:
        url = self.admin[system] + "/_admin/fault"
        async with self.http.post(url, json={"mode": mode}) as response:
            response.raise_for_status()

    # --- phases ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        options = DemoOptions(
            data_dir=self.work_dir / "data",
            system_latency={k: v for k, v in SYSTEM_LATENCY_MS.items() if k != "sales"},
        )
        before = machine_busy_seconds()
        await asyncio.sleep(1.0)
        idle_load = machine_busy_seconds() - before
        if idle_load > 0.3:
            warning = (
                f"Before the run the machine was already using {idle_load:.2f} cores for "
                "other work: every number below shares the two cores with it."
            )
            self.results["notes"].append(warning)
            self.log(f"warning: {warning}")
        self.log("starting the demo systems")
        # Their stderr is inherited: aiohttp logs a traceback for every request a client
        # drops (wrk and the Node gateways do, when stopped), which belongs in a log file.
        with stderr_to(self.work_dir / "logs" / "demo-systems.log"):
            self.systems = await start_demo_systems(options)
        try:
            await self.phases()
        finally:
            self.children.stop_all()
            await self.systems.stop()
        return self.results

    async def phases(self) -> None:
        self.config = self.c360_config(cache=False)
        self.log("starting the gateway (c360 serve)")
        main = await self.start_c360("c360")
        self.cuids = await self.fetch_cuids(main)
        crosswalk = await self.load_crosswalk()
        if self.plan.mode == "profile":
            for key in self.selected:
                if key in ("a", "b", "d"):
                    await self.profile(main, key)
            return
        await self.warm(main, SCENARIOS["a"])
        await self.warm(main, SCENARIOS["b"])
        for key in ("a", "b", "d", "e"):
            if key in self.selected:
                self.log(f"scenario ({key}) {SCENARIOS[key].title}")
                await self.scenario_runs(main, SCENARIOS[key])
        if self.plan.paired_rounds:
            # Before the profile and the soak, as the scenario runs are: after ten minutes
            # of load both c360 and the lower bound ran slower for a while.
            for key in ("a", "b"):
                if key in self.selected:
                    self.log(f"paired at c=1 ({key}): c360 and the lower bound in turn")
                    await self.paired(main, key)
        if self.plan.profile_s:
            for key in ("b", "d"):
                if key in self.selected:
                    await self.profile(main, key)
        if self.plan.soak_s:
            await self.soak(main)
        self.children.stop(main.child)
        if "c" in self.selected:
            await self.cache_phase()
        for key in ("a", "b"):
            if key in self.selected:
                self.log(f"lower bound ({key})")
                self.results["runs"].extend(await self.lower_bound(key))
        if self.with_peers:
            await self.peers_phase(crosswalk)

    async def cache_phase(self) -> None:
        scenario = SCENARIOS["c"]
        self.log(f"scenario (c) {scenario.title}")
        try:
            target = await self.start_c360("c360-cache", cache=True)
        except StartError as error:
            reason = f"not available: {str(error).splitlines()[-1][:160]}"
            self.log(f"  {reason}")
            for query in scenario.queries:
                label = scenario.label(query)
                self.results["checks"].append(
                    {"target": "c360", "label": label, "problem": reason, "calls_per_query": None}
                )
                for concurrency in self.plan.concurrencies:
                    self.results["runs"].append(
                        {"target": "c360", "label": label, "concurrency": concurrency,
                         "status": reason}
                    )  # fmt: skip
            return
        try:
            # Every request of the scenario once, so the measured runs find a warm cache.
            headers = self.headers(scenario)
            bodies = [b for query in scenario.queries for b in self.bodies(target, query)]
            for start in range(0, len(bodies), 16):
                batch = bodies[start : start + 16]
                await asyncio.gather(*(self.post(target.url, b, headers) for b in batch))
            await self.warm(target, scenario)
            await self.scenario_runs(target, scenario)
        finally:
            self.children.stop(target.child)

    async def paired(self, target: Target, key: str) -> None:
        """Rounds of one c360 run and one lower-bound run at concurrency 1, back to back:
        each pair sees the systems and the machine as they were within seconds, where the
        two phases are minutes apart. The overhead target reads the pairs' median."""
        scenario = SCENARIOS[key]
        # Right after (e), the helpdesk's circuit may still be open: c360 then answers
        # without it (one full run's first pair read 3.7 ms under the lower bound).
        await self.settled_check(target, scenario, scenario.queries[0])
        self.results["checks"].pop()  # the scenario's own check is the one reported
        bodies = self.bodies(target, scenario.queries[0])
        script = self.script(f"{target.name}-{key}", bodies, self.headers(scenario))
        pairs = []
        for round_ in range(self.plan.paired_rounds):
            # Each goes first in every other round: going first or second lands in no pair.
            if round_ % 2:
                bound = await self.lower_bound(key, [1], self.plan.paired_s)
                gateway = await self.measure(target, key, 1, script, self.plan.paired_s)
            else:
                gateway = await self.measure(target, key, 1, script, self.plan.paired_s)
                bound = await self.lower_bound(key, [1], self.plan.paired_s)
            if gateway.get("status") == "ok" and bound and bound[0].get("status") == "ok":
                pairs.append({"c360_p50_ms": gateway["p50_ms"], "bound_p50_ms": bound[0]["p50_ms"]})
        if len(pairs) < self.plan.paired_rounds:
            self.results["notes"].append(
                f"({key}) paired at concurrency 1: {self.plan.paired_rounds - len(pairs)} of "
                f"{self.plan.paired_rounds} rounds failed; "
                + ("the pairs left decide the target." if pairs else "the phases decide it.")
            )
        self.results["paired"].append(
            {"label": key, "duration_s": self.plan.paired_s, "pairs": pairs}
        )

    async def lower_bound(
        self,
        key: str,
        concurrencies: Sequence[int] | None = None,
        duration_s: float | None = None,
    ) -> list[dict[str, Any]]:
        """The direct client for query `key` at every concurrency (or these), in one process
        of its own; it reads the gateway's own source settings, so it asks exactly what the
        gateway asks."""
        sources = self.config["sources"]
        batch = sources["service"]["entities"]["tickets"]["batch"]
        spec = DirectSpec(
            query=key,
            cuids=self.cuids,
            links=self.links,
            sales_dsn=sources["sales"]["dsn"],
            sales_query=sources["sales"]["entities"]["customer"]["query"],
            sales_latency_ms=SYSTEM_LATENCY_MS["sales"],
            helpdesk_url=sources["service"]["base_url"] + batch["path"],
            helpdesk_param=batch["param"],
            marketing_url=sources["marketing"]["url"],
            marketing_selection=sources["marketing"]["entities"]["contact"]["selection"],
            concurrencies=list(concurrencies or self.plan.concurrencies),
            duration_s=duration_s or self.plan.duration_s,
            warmup_s=0.5 if self.plan.mode == "quick" else self.plan.warmup_s,
        )
        path = self.work_dir / f"direct-{key}.json"
        path.write_bytes(orjson.dumps(asdict(spec)))
        with (self.work_dir / "logs" / "direct.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.direct", str(path),
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
            try:
                runs = len(spec.concurrencies)
                limit = runs * (spec.duration_s + spec.warmup_s + 30)
                stdout, _ = await asyncio.wait_for(process.communicate(), limit)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        if process.returncode != 0:
            status = f"failed: exit {process.returncode} (see bench/.work/logs/direct.log)"
            return [
                {"target": report.BOUND, "label": key, "concurrency": c, "status": status}
                for c in spec.concurrencies
            ]
        records = []
        for data in orjson.loads(stdout.splitlines()[-1]):
            answered = max(data["requests"], 1)
            records.append(
                {
                    "target": report.BOUND,
                    "label": key,
                    **data,
                    "status": "ok",
                    # No gateway here: these columns are the direct client's own process.
                    "gateway_cpu_ms_per_request": round(data["client_cpu_s"] * 1000 / answered, 3),
                    "gateway_cores": round(data["client_cpu_s"] / data["duration_s"], 3),
                    "client_cores": None,
                }
            )
            self.log(
                f"  {report.BOUND:>11} {key:<4} c={data['concurrency']:<3} "
                f"{data['rps']:8.1f} req/s  p50 {data['p50_ms']:7.1f} ms  "
                f"p99 {data['p99_ms']:7.1f} ms"
            )
        return records

    async def peers_phase(self, crosswalk: Path) -> None:
        keys: list[str] = [k for k in ("a", "b") if k in self.selected]
        if self.plan.peer_fault_scenario and "e" in self.selected:
            keys.append("e")
        if not keys:
            return
        self.log("Node peers: npm install (first time only), subgraphs")
        reason = await ensure_installed(self.work_dir / "logs" / "npm.log")
        if reason:
            for peer in PEER_NAMES:
                self.results["peers"][peer] = {"status": f"not available: {reason}"}
            self.log(f"  peers not available: {reason}")
            return
        assert self.systems is not None
        endpoints = self.systems.endpoints
        peers = NodePeers(self.children, self.http, self.work_dir)
        try:
            subgraphs = await peers.start_subgraphs(
                sales_db=Path(endpoints["sales"]["dsn"].split("///", 1)[1]),
                crosswalk=crosswalk,
                helpdesk_url=endpoints["service"]["url"],
                marketing_url=endpoints["marketing"]["url"],
                sales_latency_ms=SYSTEM_LATENCY_MS["sales"],
            )
        except (StartError, RuntimeError, TimeoutError) as error:
            for peer in PEER_NAMES:
                self.results["peers"][peer] = {"status": f"not available: subgraphs: {error}"}
            return
        versions = installed_versions()
        system_pids = [self.systems.process.pid, subgraphs.customers.pid, subgraphs.helpdesk.pid]
        counts = peer_counts(self.http, subgraphs.customers_url, self.admin)
        if self.plan.turn_concurrencies:
            own_keys = [key for key in ("a", "b") if key in self.selected]
            await self.turns(peers, subgraphs, counts, system_pids, own_keys)
        for name in PEER_NAMES:
            self.log(f"peer: {name}")
            try:
                child, url = await peers.start(name, subgraphs)
            except (StartError, RuntimeError, TimeoutError) as error:
                status = f"not available: {str(error)[:300]}"
                self.results["peers"][name] = {"status": status, "versions": versions}
                self.log(f"  {status}")
                continue
            target = Target(name, child, url, counts, system_pids, peer=True)
            try:
                await self.warm(target, SCENARIOS["a"])
                await self.warm(target, SCENARIOS["b"])
                for key in keys:
                    await self.scenario_runs(target, SCENARIOS[key])
                self.results["peers"][name] = {"status": "ok", "versions": versions}
            finally:
                self.children.stop(child)
        self.children.stop(subgraphs.customers)
        self.children.stop(subgraphs.helpdesk)

    async def turns(
        self,
        peers: NodePeers,
        subgraphs: Any,
        counts: CountSource,
        system_pids: list[int],
        keys: Sequence[str],
    ) -> None:
        """c360 and both peers running at once, one run each per round at every turn
        concurrency, the order rotated each round: the throughput ratios then compare
        runs seconds apart, not phases tens of minutes apart."""
        self.log("throughput in turns: c360, apollo and hive")
        started: list[Child] = []
        try:
            own = await self.start_c360("c360-turns")
            started.append(own.child)
            targets = [own]
            for name in PEER_NAMES:
                child, url = await peers.start(name, subgraphs)
                started.append(child)
                targets.append(Target(name, child, url, counts, system_pids, peer=True))
            for target in targets:
                for key in keys:
                    await self.warm(target, SCENARIOS[key])
            for key in keys:
                scenario = SCENARIOS[key]
                headers = self.headers(scenario)
                scripts = {
                    t.name: self.script(
                        f"turns-{t.name}-{key}", self.bodies(t, scenario.queries[0]), headers
                    )
                    for t in targets
                }
                for concurrency in self.plan.turn_concurrencies:
                    rounds = []
                    for round_ in range(self.plan.turn_rounds):
                        shift = round_ % len(targets)
                        measured: dict[str, float] = {}
                        for target in targets[shift:] + targets[:shift]:
                            # The previous gateway's queued requests end before this run.
                            await asyncio.sleep(self.plan.turn_pause_s)
                            run = await self.measure(
                                target, key, concurrency, scripts[target.name], self.plan.turn_s
                            )
                            if run.get("status") == "ok":
                                measured[target.name] = run["rps"]
                        rounds.append(measured)
                    self.results["turns"].append(
                        {"label": key, "concurrency": concurrency, "rounds": rounds}
                    )
        except (StartError, RuntimeError, TimeoutError) as error:
            self.results["notes"].append(f"throughput in turns: not measured ({error})"[:300])
        finally:
            for child in started:
                self.children.stop(child)

    async def profile(self, target: Target, key: str) -> None:
        """py-spy on the gateway while wrk drives one scenario at concurrency 16; (b) goes to
        profile.md, any other to profile-<key>.md."""
        seconds = self.plan.profile_s
        scenario = SCENARIOS[key]
        query = scenario.queries[-1]
        self.log(f"profile: scenario ({key}) at c=16 for {seconds:.0f} s under py-spy")
        script = self.script(f"profile-{key}", self.bodies(target, query), self.headers(scenario))
        raw = self.work_dir / f"profile-{key}.txt"
        load = asyncio.create_task(
            run_wrk(target.url, script, concurrency=16, duration_s=seconds + 3)
        )
        try:
            await asyncio.sleep(1.0)
            await py_spy_record(target.child.pid, seconds, raw)
            result = await load
        except (RuntimeError, OSError) as error:
            load.cancel()
            self.results.setdefault("profiles", {})[key] = {"status": f"failed: {error}"}
            self.log(f"  profile failed: {error}")
            return
        profile = Profile.parse(raw.read_text().splitlines())
        context = (
            f"{self.results['meta']['date']}, {self.results['meta']['machine']}. "
            f"c360 {self.results['meta']['commit']}. Scenario ({key}) {scenario.title}, as "
            f"`{scenario.role}`, 16 connections, {result.rps:.0f} req/s, p50 "
            f"{result.p50_ms:.0f} ms while sampled.\n\n```graphql\n{query.c360}\n```"
        )
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        name = "profile.md" if key == "b" else f"profile-{key}.md"
        (RESULTS_DIR / name).write_text(
            profile_markdown(profile, context=context, title=f"scenario ({key})"),
            encoding="utf-8",
        )
        self.results.setdefault("profiles", {})[key] = {
            "status": "ok",
            "file": f"bench/results/{name}",
            "samples": profile.samples,
            "rps": result.rps,
            "self_by_library": {
                lib: round(profile.share(n), 1)
                for lib, n in profile.self_by_library.most_common(10)
            },
        }

    async def soak(self, target: Target) -> None:
        """Mixed (a) and (b) load for `soak_s`, sampling the gateway's RSS."""
        seconds, every = self.plan.soak_s, self.plan.soak_sample_s
        concurrency = self.plan.soak_concurrency
        self.log(f"soak: {seconds / 60:.0f} min at c={concurrency}, RSS every {every:g} s")
        # One page request per ten single-customer ones.
        bodies = self.bodies(target, ONE) + self.bodies(target, PAGE) * 10
        script = self.script("soak", bodies, self.headers(SCENARIOS["a"]))
        load = asyncio.create_task(
            run_wrk(target.url, script, concurrency=self.plan.soak_concurrency, duration_s=seconds)
        )
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        while not load.done():
            samples.append((time.monotonic() - started, rss_bytes(target.child.pid) / MB))
            await asyncio.wait({load}, timeout=every)
        try:
            result = load.result()
        except RuntimeError as error:
            self.results["soak"] = {"status": f"failed: {error}"}
            return
        self.results["soak"] = soak_summary(
            samples, result, self.plan.soak_concurrency, peak_rss_bytes(target.child.pid) / MB
        )


def soak_summary(
    samples: Sequence[tuple[float, float]], result: LoadResult, concurrency: int, peak_mb: float
) -> dict[str, Any]:
    """RSS growth after the warm-up minute: mean of the last minute minus mean of the first,
    and the least-squares slope over the whole window."""
    window = [(t, mb) for t, mb in samples if t >= SOAK_WARMUP_S]
    if len(window) < 4:
        return {"status": "failed: too few samples", "samples": list(samples)}
    edge = max(2, len(window) // 10)
    start = sum(mb for _, mb in window[:edge]) / edge
    end = sum(mb for _, mb in window[-edge:]) / edge
    n = len(window)
    mean_t = sum(t for t, _ in window) / n
    mean_mb = sum(mb for _, mb in window) / n
    spread = sum((t - mean_t) ** 2 for t, _ in window)
    slope = sum((t - mean_t) * (mb - mean_mb) for t, mb in window) / spread if spread else 0.0
    return {
        "status": "ok",
        "concurrency": concurrency,
        "requests": result.requests,
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.non_2xx + result.socket_errors,
        "window_s": window[-1][0] - window[0][0],
        "start_mb": round(start, 2),
        "end_mb": round(end, 2),
        "growth_mb": round(end - start, 2),
        "slope_mb_per_min": round(slope * 60, 3),
        "peak_mb": round(peak_mb, 1),
        "threshold_mb": SOAK_THRESHOLD_MB,
        "samples": [(round(t, 1), round(mb, 2)) for t, mb in samples],
    }
