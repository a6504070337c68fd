"""Tamper evidence: every record carries the hash of the one before it in its chain.

One chain per writing process (the configured name, plus a worker's suffix: see
gateway/audit/writers.py). A record's hash is SHA-256 over the previous hash and the
record's canonical JSON (sorted keys, without `hash`), so editing, deleting or reordering
a record breaks the chain at that point. What the chain alone cannot see (a rewrite with
every later hash recomputed, the newest records removed, a forged chain) the signed
checkpoints do (gateway/audit/checkpoint.py).

A chain whose oldest records were pruned (retention) starts at its cut: the sink hands
`verify` a `Cut` (the seq and hash of the last pruned record) before the chain's records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

GENESIS = "0" * 64


def canonical(record: Mapping[str, Any]) -> bytes:
    body = {key: value for key, value in record.items() if key != "hash"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(record)).hexdigest()


@dataclass
class ChainHead:
    """Where a chain stands: the next record continues from here."""

    name: str
    seq: int = 0
    last_hash: str = GENESIS

    def seal(self, record: dict[str, Any]) -> dict[str, Any]:
        """Number and hash a record in place, and advance the head."""
        self.seq += 1
        record["chain"] = self.name
        record["seq"] = self.seq
        record["prev_hash"] = self.last_hash
        record["hash"] = record_hash(self.last_hash, record)
        self.last_hash = record["hash"]
        return record


class TornTail:
    """The newest file's last line when it has no newline: a write a crash cut short. A
    scan yields it (as an item of its own, so concurrent scans share no state); `verify`
    skips it, and says so."""

    __slots__ = ()


TORN_TAIL = TornTail()


class Cut(dict[str, Any]):
    """Where a pruned chain now starts ({"chain", "seq", "hash"} of its last pruned record).
    Made by a sink from its cut state, never parsed from a log line (a plain dict), so a
    line that claims to be a cut is just a record that does not verify. `c360 audit
    verify` also checks the cut's signature (gateway/audit/checkpoint.py)."""


@dataclass(frozen=True, slots=True)
class Break:
    chain: str
    seq: int | None
    where: str  # file:line or table row
    problem: str
    # What the break most likely is: edited, deleted, reordered, inserted, unreadable.
    kind: str = ""


@dataclass
class ChainReport:
    records: int = 0
    chains: dict[str, int] = field(default_factory=dict)  # chain -> last good seq
    breaks: list[Break] = field(default_factory=list)
    torn_tail: str | None = None  # an incomplete last line after a crash
    cuts: dict[str, int] = field(default_factory=dict)  # chain -> seq of its last pruned record
    left_of_cut: int = 0  # records at or before a cut still present (an interrupted prune)

    @property
    def intact(self) -> bool:
        return not self.breaks


def verify(records: Iterable[tuple[str, object]]) -> ChainReport:
    """Check every chain in (location, record) order; anything but an object (None, why a
    line is unreadable) is an unreadable line, named as a break of its own.

    Reports the first break of each chain: a record whose hash does not match its
    content (edited), whose prev_hash is not the previous record's hash (inserted or
    replaced), or whose seq does not follow; the seqs seen after it tell a deletion (the
    expected one never comes), a reordering (it comes later) and an insertion (a number
    already used) apart."""
    heads: dict[str, ChainHead] = {}
    report = ChainReport()
    broken: dict[str, tuple[int, int, set[int]]] = {}  # chain -> (break, expected, seqs after)
    for where, record in records:
        if record is TORN_TAIL:
            report.torn_tail = where
            continue
        if isinstance(record, Cut):
            name = str(record["chain"])
            heads[name] = ChainHead(name, int(record["seq"]), str(record["hash"]))
            report.cuts[name] = report.chains[name] = int(record["seq"])
            continue
        if not isinstance(record, Mapping):  # None, or a row whose JSON is not an object
            report.breaks.append(
                Break(
                    "?",
                    None,
                    where,
                    "unreadable line (not JSON, or JSON but not an object)",
                    "unreadable",
                )
            )
            continue
        name = str(record.get("chain", "?"))
        seq = record.get("seq")
        if isinstance(seq, int) and seq <= report.cuts.get(name, 0):
            report.left_of_cut += 1  # pruned, not yet removed: outside what is checked
            continue
        report.records += 1
        if name in broken:
            if isinstance(seq, int):
                broken[name][2].add(seq)
            continue
        head = heads.setdefault(name, ChainHead(name))
        problem = kind = None
        if not isinstance(seq, int) or seq != head.seq + 1:
            problem = f"expected seq {head.seq + 1}, found {seq}"
            kind = "inserted" if isinstance(seq, int) and seq <= head.seq else "deleted"
        elif record.get("prev_hash") != head.last_hash:
            problem, kind = "prev_hash does not match the previous record", "inserted"
        elif record.get("hash") != record_hash(head.last_hash, record):
            problem, kind = "content does not match its hash", "edited"
        if problem is not None:
            broken[name] = (len(report.breaks), head.seq + 1, set())
            report.breaks.append(
                Break(name, seq if isinstance(seq, int) else None, where, problem, kind or "")
            )
            continue
        head.seq += 1  # == seq, checked above
        head.last_hash = str(record["hash"])
        report.chains[name] = head.seq
    for index, expected, later in broken.values():
        found = report.breaks[index]
        if found.kind == "deleted" and expected in later:
            report.breaks[index] = Break(
                found.chain, found.seq, found.where, found.problem, "reordered"
            )
    return report
