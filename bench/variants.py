"""Two or more c360 trees against each other, at one concurrency (1 unless
`--concurrency`), in interleaved rounds.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python -m bench.variants --scenario a --rounds 6 before=/tmp/before after=.

Each named tree serves its own gateway (`python -m gateway.cli serve` run from that tree,
with this tree's virtualenv) over one set of demo systems; every round runs each gateway
and the lower bound once, for `--seconds` each, in turn (the order reversed in every
other round), so that the machine's drift lands in every variant alike. Prints each
round and, per variant, the median overhead over the lower bound of the same round, its
lowest and highest, and the gateway's CPU per request: how the commits of the third
session of 2026-12-06 were measured. A variant may carry environment variables:
`name=path:KEY=value,KEY2=value`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.counters import c360_counts
from bench.load import wrk_path
from bench.plan import SYSTEM_LATENCY_MS, Plan
from bench.procs import Children, wait_ready
from bench.runner import REPO, Bench, Target
from bench.scenarios import SCENARIOS
from gateway.demo import DemoOptions, start_demo_systems, to_toml

WORK_DIR = REPO / "bench" / ".work" / "variants"


@dataclass
class Variant:
    name: str
    tree: Path
    env: dict[str, str] = field(default_factory=dict)
    p50_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, _, rest = spec.partition("=")
        tree, _, assignments = rest.partition(":")
        if not name or not tree:
            raise argparse.ArgumentTypeError(f"{spec!r}: expected name=path[:KEY=value,...]")
        env = dict(pair.split("=", 1) for pair in assignments.split(",") if pair)
        return cls(name, Path(tree).resolve(), env)


async def compare(
    key: str, rounds: int, seconds: float, variants: list[Variant], concurrency: int = 1
) -> None:
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    children = Children(WORK_DIR / "logs")
    plan = Plan("variants", (concurrency,), duration_s=seconds, warmup_s=1.0, gateway_warmup_s=2.0)
    async with aiohttp.ClientSession() as http:
        bench = Bench(
            plan, [key], with_peers=False, http=http, children=children, work_dir=WORK_DIR,
            log=lambda line: None,
        )  # fmt: skip
        latency = {k: v for k, v in SYSTEM_LATENCY_MS.items() if k != "sales"}
        bench.systems = await start_demo_systems(
            DemoOptions(data_dir=WORK_DIR / "data", system_latency=latency)
        )
        try:
            bench.config = bench.c360_config(cache=False)  # the tokens' issuer and key
            targets = [await _start(bench, children, http, variant) for variant in variants]
            bench.cuids = await bench.fetch_cuids(targets[0])
            await bench.load_crosswalk()
            scenario = SCENARIOS[key]
            scripts = {}
            for target in targets:
                await bench.warm(target, scenario)
                bodies = bench.bodies(target, scenario.queries[0])
                scripts[target.name] = bench.script(target.name, bodies, bench.headers(scenario))
            bound: list[float] = []
            bound_rps: list[float] = []
            for round_ in range(rounds):
                order: list[Any] = [*zip(variants, targets, strict=True), None]
                for entry in order[:: -1 if round_ % 2 else 1]:
                    if entry is None:
                        [run] = await bench.lower_bound(key, [concurrency], seconds)
                        bound.append(run["p50_ms"])
                        bound_rps.append(run["rps"])
                        continue
                    variant, target = entry
                    run = await bench.measure(
                        target, key, concurrency, scripts[target.name], seconds
                    )
                    variant.p50_ms.append(run["p50_ms"])
                    variant.rps.append(run["rps"])
                    variant.cpu_ms.append(run["gateway_cpu_ms_per_request"])
                line = "  ".join(
                    f"{v.name} {v.p50_ms[-1]:.2f} ms {v.rps[-1]:.1f}/s" for v in variants
                )
                bound_line = f"lower bound {bound[-1]:.2f} ms {bound_rps[-1]:.1f}/s"
                print(f"round {round_ + 1}: {line}  {bound_line}", flush=True)
            for variant in variants:
                overheads = [c - b for c, b in zip(variant.p50_ms, bound, strict=True)]
                print(
                    f"{variant.name}: overhead {statistics.median(overheads):.2f} ms "
                    f"(median of {rounds}; {min(overheads):.2f} to {max(overheads):.2f}), "
                    f"CPU {statistics.median(variant.cpu_ms):.2f} ms per request, "
                    f"{statistics.median(variant.rps):.1f} req/s"
                )
        finally:
            children.stop_all()
            await bench.systems.stop()


async def _start(
    bench: Bench, children: Children, http: aiohttp.ClientSession, variant: Variant
) -> Target:
    config = bench.c360_config(cache=False)
    path = WORK_DIR / f"{variant.name}.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    env = {"PYTHONPATH": str(variant.tree), **variant.env}
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]
    child = children.spawn(variant.name, command, cwd=variant.tree, env=env)
    url = f"http://127.0.0.1:{config['server']['port']}"
    await wait_ready(http, child, url + "/readyz", limit_s=120)
    assert bench.systems is not None
    counts = c360_counts(http, url, bench.admin)
    return Target(variant.name, child, url, counts, [bench.systems.process.pid])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.variants", description=__doc__)
    parser.add_argument("--scenario", choices=["a", "b", "d"], default="a")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("variants", nargs="+", type=Variant.parse, metavar="name=path")
    args = parser.parse_args()
    if wrk_path() is None:
        print("bench.variants: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    asyncio.run(compare(args.scenario, args.rounds, args.seconds, args.variants, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
