"""Tamper evidence: every record carries the hash of the one before it in its chain.

One chain per gateway instance (named in config). A record's hash is SHA-256 over the
previous hash and the record's canonical JSON (sorted keys, without `hash`), so editing,
deleting or reordering a record breaks the chain at that point.
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


@dataclass(frozen=True, slots=True)
class Break:
    chain: str
    seq: int | None
    where: str  # file:line or table row
    problem: str


@dataclass
class ChainReport:
    records: int = 0
    chains: dict[str, int] = field(default_factory=dict)  # chain -> last good seq
    breaks: list[Break] = field(default_factory=list)
    torn_tail: str | None = None  # an incomplete last line after a crash

    @property
    def intact(self) -> bool:
        return not self.breaks


def verify(records: Iterable[tuple[str, Mapping[str, Any] | None]]) -> ChainReport:
    """Check every chain in (location, record) order; None (or anything but an object)
    is an unreadable line, named as a break of its own.

    Reports the first break of each chain: a record whose hash does not match its
    content (edited), whose prev_hash is not the previous record's hash (deleted or
    reordered), or whose seq does not follow (deleted)."""
    heads: dict[str, ChainHead] = {}
    report = ChainReport()
    broken: set[str] = set()
    for where, record in records:
        if not isinstance(record, Mapping):  # None, or a row whose JSON is not an object
            report.breaks.append(
                Break("?", None, where, "unreadable line (not JSON, or JSON but not an object)")
            )
            continue
        report.records += 1
        name = str(record.get("chain", "?"))
        if name in broken:
            continue
        head = heads.setdefault(name, ChainHead(name))
        seq = record.get("seq")
        problem = None
        if not isinstance(seq, int) or seq != head.seq + 1:
            problem = f"expected seq {head.seq + 1}, found {seq}"
        elif record.get("prev_hash") != head.last_hash:
            problem = "prev_hash does not match the previous record"
        elif record.get("hash") != record_hash(head.last_hash, record):
            problem = "content does not match its hash"
        if problem is not None:
            broken.add(name)
            report.breaks.append(Break(name, seq if isinstance(seq, int) else None, where, problem))
            continue
        head.seq += 1  # == seq, checked above
        head.last_hash = str(record["hash"])
        report.chains[name] = head.seq
    return report
