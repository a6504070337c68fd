"""`python -m bench [--quick | --full | --turns | --profile] [--scenarios a,b,...] [--no-peers]`

Writes bench/results/latest.json, latest.md and latest.png (full.* in full mode, turns.*
with --turns; profile.md and profile-d.md when profiling).
Ctrl-C stops every process the run started.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import time
from collections.abc import Sequence

import aiohttp

from bench import report
from bench.load import wrk_path
from bench.plan import Plan
from bench.procs import Children, StartError
from bench.runner import RESULTS_DIR, WORK_DIR, Bench
from bench.scenarios import SCENARIOS


def _scenarios(text: str) -> list[str]:
    keys = [key.strip() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in SCENARIOS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SCENARIOS)}, got {text!r}"
        )
    return keys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark c360 against a direct client (the lower bound) and the Node "
        "federation gateways, on the demo department systems.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: under three minutes")
    mode.add_argument(
        "--full", action="store_true", help="more concurrencies, longer runs, profile, soak"
    )
    mode.add_argument(
        "--turns",
        action="store_true",
        help="the throughput against the peers in turns (and short runs at c=1), ~10 min",
    )
    mode.add_argument(
        "--profile", action="store_true", help="only profile scenario (b) with py-spy"
    )
    parser.add_argument(
        "--scenarios",
        type=_scenarios,
        default=list(SCENARIOS),
        help="which of a,b,c,d,e (default: all)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the Node gateways")
    return parser


async def _main(plan: Plan, scenarios: list[str], with_peers: bool) -> int:
    if wrk_path() is None:
        print("bench: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    # A fresh work directory per run: configs, Lua scripts, logs, the demo databases.
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    children = Children(WORK_DIR / "logs")
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # Ctrl-C and SIGTERM cancel the run, so every `finally` stops its processes (SIGINT
    # explicitly too: a shell starting the run in the background leaves SIGINT ignored).
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=120)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            bench = Bench(
                plan,
                scenarios,
                with_peers=with_peers,
                http=http,
                children=children,
                work_dir=WORK_DIR,
            )
            try:
                results = await bench.run()
            except (StartError, RuntimeError) as error:
                print(f"bench: {error}", file=sys.stderr)
                print(f"bench: logs in {WORK_DIR / 'logs'}", file=sys.stderr)
                return 1
    finally:
        children.stop_all()
    if plan.mode == "profile":
        print(f"wrote {RESULTS_DIR / 'profile.md'} in {time.monotonic() - started:.0f} s")
        return 0
    results["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    stem = {"full": "full", "turns": "turns"}.get(plan.mode, "latest")
    for path in report.write(results, RESULTS_DIR, stem):
        print(f"wrote {path}")
    for row in results["targets"]:
        print(f"  [{ {True: 'met', False: 'NOT MET', None: 'n/a'}[row['met']] }] "
              f"{row['target']}: {row['measured']}")  # fmt: skip
    print(f"done in {results['meta']['wall_s']:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.full:
        plan = Plan.full()
    elif args.profile:
        plan = Plan.profile_only()
    elif args.turns:
        plan = Plan.turns_only()
    else:
        plan = Plan.quick()
    try:
        return asyncio.run(_main(plan, args.scenarios, not args.no_peers))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
