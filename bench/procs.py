"""The processes a benchmark starts, and what /proc says about them (CPU time, RSS).

Every child runs in its own session with its output in a log file, so a Ctrl-C in the
terminal reaches only the harness, which then stops the children in order; `Children`
also stops them from `atexit` should the harness die some other way.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A process did not come up; the message ends with the last lines of its log."""


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; we close it again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of all the process's threads so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time all cores have spent on anything but idling, since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The resident set's high-water mark (since start, or since `reset_peak_rss`)."""
    return _status_kib(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (Linux: writing 5 to clear_refs), so each run reports its own peak."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the child's process group, SIGKILL if it lingers."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@dataclass
class Children:
    """Every process the harness started; `stop_all` stops those still running, newest first."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop_all)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name, popen, log_path)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        while self.children:
            self.children.pop().stop()


async def wait_ready(
    http: aiohttp.ClientSession,
    child: Child,
    url: str,
    *,
    body: bytes | None = None,
    limit_s: float = 60.0,
) -> None:
    """Poll `url` (GET, or POST of a JSON `body`) until it answers 200 or the child exits."""
    deadline = time.monotonic() + limit_s
    headers = {"content-type": "application/json"}
    while True:
        if not child.alive():
            raise StartError(f"{child.name} exited with {child.popen.returncode}: {child.tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            request = http.get(url) if body is None else http.post(url, data=body, headers=headers)
            async with request as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise StartError(f"{child.name} not ready after {limit_s:.0f}s: {child.tail()}")
        await asyncio.sleep(0.1)
