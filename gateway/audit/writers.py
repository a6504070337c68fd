"""One writer per chain: each process that writes the access log claims a chain of its own.

A chain is one writer's order (seq 1, 2, 3, … each linked to the one before), so two
processes must never write under one name: `c360 serve --workers 2` did, both from seq 1,
and `verify` failed on the healthy log they wrote together.

A process claims its chain with an exclusive lock (flock) on a file beside its spill file:
- one process (`serve`, `demo`): the configured `audit.chain`; should another process on
  this machine already hold it (a second `serve` with the same config), the next free
  `<chain>-i2`, `<chain>-i3`, … with a warning;
- `serve --workers N` (which sets C360_WORKERS=N for its workers): `<chain>-w1` …
  `<chain>-wN`, each worker the lowest number no other live worker holds.
The numbers are stable (a worker that restarts gets a free one back, normally its own)
and unique (the kernel holds the lock until the process ends, kill -9 included). Across
machines, chains differ by `audit.chain` (default: the host name).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("c360.audit")

WORKERS_ENV = "C360_WORKERS"
MAX_SLOTS = 1024


@dataclass
class ChainClaim:
    chain: str
    suffix: str  # "" for the configured name itself, else "-w2", "-i2", …
    _fd: int | None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def workers() -> int:
    """How many worker processes `serve --workers N` runs (1 without it)."""
    try:
        return max(1, int(os.environ.get(WORKERS_ENV, "1")))
    except ValueError:
        return 1


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim_chain(chain: str, lock_dir: Path, worker_count: int | None = None) -> ChainClaim:
    """The chain this process writes, held until `release()` (or the process's end). When
    no lock can be taken there (the directory cannot be made), a worker's chain is named
    after its process id instead: unique, though not stable."""
    count = workers() if worker_count is None else worker_count
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        return _claim(chain, lock_dir, count)
    except OSError as error:
        suffix = f"-p{os.getpid()}" if count > 1 else ""
        log.warning(
            "cannot lock the access log chain: writing it unlocked",
            extra={"chain": chain + suffix, "reason": error.strerror or str(error)},
        )
        return ChainClaim(chain + suffix, suffix, None)


def _claim(chain: str, lock_dir: Path, count: int) -> ChainClaim:
    if count > 1:
        candidates = [f"-w{k}" for k in range(1, MAX_SLOTS + 1)]
    else:
        candidates = ["", *(f"-i{k}" for k in range(2, MAX_SLOTS + 1))]
    for suffix in candidates:
        fd = _try_lock(lock_dir / f".c360-chain-{chain}{suffix}.lock")
        if fd is not None:
            if count <= 1 and suffix:
                log.warning(
                    "another process on this machine writes the access log chain: this one "
                    "writes a chain of its own",
                    extra={"chain": chain, "own_chain": chain + suffix},
                )
            return ChainClaim(chain + suffix, suffix, fd)
    raise RuntimeError(f"no free access log chain for {chain!r} in {lock_dir}")


def suffixed(path: Path, suffix: str) -> Path:
    """`access-spill-gw.jsonl` -> `access-spill-gw-w2.jsonl`."""
    if not suffix:
        return path
    return path.with_name(f"{path.stem}{suffix}{path.suffix}")
