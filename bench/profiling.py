"""Sampling the gateway under load with py-spy, and reading the samples: where CPU goes,
by frame and by library, written to `bench/results/profile.md`."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Our own code, by folder; everything else is grouped by its top-level package.
OURS = ("gateway", "resolvers", "connectors", "policies")


def py_spy_path() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, rate: int = 250) -> None:
    """Sample `pid` for `seconds` into a collapsed-stack file (one `a;b;c count` per line)."""
    py_spy = py_spy_path()
    if py_spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    process = await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(round(seconds)),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nolineno",
        # Only stacks holding the GIL: Python's on-CPU work. Without it, aiosqlite's worker
        # threads, blocked on their queue, are counted as busy (py-spy's idle heuristic
        # misses that wait) and make up most of the samples.
        "--gil",
        "--output",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), seconds + 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"py-spy failed ({process.returncode}): {output.decode()[-400:]}")


@dataclass(frozen=True)
class Frame:
    function: str
    file: str

    @classmethod
    def parse(cls, text: str) -> Frame:
        function, _, rest = text.rpartition(" (")
        if not function:
            return cls(text, "")
        return cls(function, rest.rstrip(")"))

    @property
    def library(self) -> str:
        """`gateway`, `strawberry`, `asyncio`...: the first segment of the file's path."""
        head = self.file.split("/", 1)[0]
        return head.removesuffix(".py") if head else "?"

    def __str__(self) -> str:
        return f"{self.function} ({self.file})"


@dataclass
class Profile:
    samples: int
    self_by_frame: Counter[Frame]
    total_by_frame: Counter[Frame]
    self_by_library: Counter[str]
    total_by_library: Counter[str]

    @classmethod
    def parse(cls, lines: Iterable[str]) -> Profile:
        samples = 0
        self_by_frame: Counter[Frame] = Counter()
        total_by_frame: Counter[Frame] = Counter()
        self_by_library: Counter[str] = Counter()
        total_by_library: Counter[str] = Counter()
        for line in lines:
            stack, _, count_text = line.strip().rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [Frame.parse(part) for part in stack.split(";")]
            samples += count
            leaf = frames[-1]
            self_by_frame[leaf] += count
            self_by_library[leaf.library] += count
            # A frame (or library) that appears twice in one stack still counts once.
            for frame in set(frames):
                total_by_frame[frame] += count
            for library in {frame.library for frame in frames}:
                total_by_library[library] += count
        return cls(samples, self_by_frame, total_by_frame, self_by_library, total_by_library)

    def share(self, count: int) -> float:
        return 100.0 * count / self.samples if self.samples else 0.0


def _table(rows: Sequence[tuple[str, float]], head: str) -> list[str]:
    lines = [f"| {head} | % of samples |", "|---|---:|"]
    lines += [f"| `{name}` | {pct:.1f} |" for name, pct in rows]
    return lines


def markdown(profile: Profile, *, context: str, title: str, top: int = 25) -> str:
    """The profile as Markdown: self and inclusive time by library and by frame."""
    ours_total = [
        (str(frame), profile.share(count))
        for frame, count in profile.total_by_frame.most_common()
        if frame.library in OURS
    ][:top]
    # Inclusive time of frames near the root (the event loop, uvicorn) is ~100%: noise.
    inclusive = [
        (str(frame), profile.share(count))
        for frame, count in profile.total_by_frame.most_common()
        if profile.share(count) < 90.0
    ][:top]
    parts = [
        f"# Profile of the gateway under {title}",
        "",
        context,
        "",
        f"{profile.samples} samples of stacks holding the GIL (py-spy `--gil`, 250 Hz): the",
        "gateway's Python work; time in C with the GIL released (SQLite, sockets) is not here.",
        "*Self* is where the sample's innermost frame was; *inclusive* counts every frame on",
        "the stack. Generated by `python -m bench --profile` (or `--full`); the reading of",
        "it is in bench/README.md.",
        "",
        "## Self time by library",
        "",
        *_table(
            [(lib, profile.share(n)) for lib, n in profile.self_by_library.most_common(15)],
            "library",
        ),
        "",
        "## Inclusive time by library",
        "",
        *_table(
            [(lib, profile.share(n)) for lib, n in profile.total_by_library.most_common(20)],
            "library",
        ),
        "",
        f"## Top {top} frames by self time",
        "",
        *_table(
            [(str(f), profile.share(n)) for f, n in profile.self_by_frame.most_common(top)],
            "frame",
        ),
        "",
        f"## Top {top} frames by inclusive time (below 90%)",
        "",
        *_table(inclusive, "frame"),
        "",
        "## c360's own frames by inclusive time",
        "",
        *_table(ours_total, "frame"),
        "",
    ]
    return "\n".join(parts)
