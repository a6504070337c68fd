"""Driving load with wrk: a Lua script that cycles through prepared request bodies and
reports latency percentiles, counts and errors as one JSON line.

wrk (C, epoll) sends and times requests for a small fraction of a core, so on a 2-core
machine the gateway, not the client, is what saturates; each run records the client's CPU.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

RESULT_MARK = "BENCH_RESULT "
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)

_SCRIPT = """
local bodies = {
%(bodies)s
}
wrk.method = "POST"
wrk.path = %(path)s
%(headers)s
local threads = {}
local counter = 0
sent = 0

function setup(thread)
  thread:set("offset", #threads * 7919)
  table.insert(threads, thread)
end

function init(args)
  -- Threads start at different bodies, so they do not ask for the same customer together.
  counter = offset or 0
end

function request()
  counter = counter + 1
  sent = sent + 1
  return wrk.format(nil, nil, nil, bodies[(counter %% #bodies) + 1])
end

function done(summary, latency, requests)
  local total_sent = 0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + (thread:get("sent") or 0)
  end
  local e = summary.errors
  local out = string.format(
    '{"requests": %%d, "sent": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, ' ..
    '"read": %%d, "write": %%d, "status": %%d, "timeout": %%d, "mean_us": %%f, ' ..
    '"max_us": %%f, "min_us": %%f, "percentiles_us": {',
    summary.requests, total_sent, summary.duration, summary.bytes, e.connect, e.read,
    e.write, e.status, e.timeout, latency.mean, latency.max, latency.min)
  local parts = {}
  for _, p in ipairs({%(percentiles)s}) do
    table.insert(parts, string.format('"%%s": %%d', tostring(p), latency:percentile(p)))
  end
  io.write("%(mark)s" .. out .. table.concat(parts, ", ") .. "}}\\n")
end
"""


def _lua_string(text: str) -> str:
    """A Lua long-bracket literal that cannot be closed early by the text itself."""
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def lua_script(bodies: Sequence[bytes], headers: Mapping[str, str], path: str = "/graphql") -> str:
    header_lines = "\n".join(
        f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()
    )
    return _SCRIPT % {
        "bodies": ",\n".join(_lua_string(body.decode()) for body in bodies),
        "path": _lua_string(path),
        "headers": header_lines,
        "percentiles": ", ".join(str(p) for p in PERCENTILES),
        "mark": RESULT_MARK,
    }


@dataclass
class LoadResult:
    requests: int  # answered within the run
    sent: int  # sent, including those still in flight when the run ended
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    client_cpu_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_result(stdout: str, client_cpu_s: float) -> LoadResult:
    line = next((x for x in stdout.splitlines() if x.startswith(RESULT_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {stdout[-500:]}")
    raw = orjson.loads(line[len(RESULT_MARK) :])
    duration_s = raw["duration_us"] / 1e6
    pct = {float(k): v / 1000 for k, v in raw["percentiles_us"].items()}
    return LoadResult(
        requests=raw["requests"],
        sent=raw["sent"],
        duration_s=duration_s,
        rps=raw["requests"] / duration_s if duration_s else 0.0,
        p50_ms=pct[50.0],
        p90_ms=pct[90.0],
        p95_ms=pct[95.0],
        p99_ms=pct[99.0],
        p999_ms=pct[99.9],
        mean_ms=raw["mean_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        non_2xx=raw["status"],
        socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        client_cpu_s=client_cpu_s,
    )


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run_wrk(
    base_url: str,
    script: Path,
    *,
    concurrency: int,
    duration_s: float,
    timeout_s: float = 30.0,
) -> LoadResult:
    """One closed-loop run: `concurrency` connections, each sending its next request as soon
    as the previous answer arrived. One wrk thread: enough for these rates, and it leaves the
    cores to the servers."""
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    # wrk is the only child that exits during a run, so the children's rusage delta is its CPU.
    cpu_before = _children_cpu_s()
    process = await asyncio.create_subprocess_exec(
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:.0f}s",
        "-s",
        str(script),
        base_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), duration_s + timeout_s + 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited {process.returncode}: {stdout.decode()[-500:]}")
    return parse_result(stdout.decode(), _children_cpu_s() - cpu_before)
