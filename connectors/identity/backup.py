"""`c360 identity export / import`: the crosswalk as JSON lines, for backup and restore.

The file holds what the store holds and nothing more: CUID <-> (system, id) links with
their keyed match hashes, each system's scan cursor, the reported issues, the
data-quality runs, the tombstones of erased people's records (restored, so that a sync
after a restore does not link them again) and the people who restricted processing
(restored, so that a restore does not lift a restriction); never an email or phone in
clear. An export made before restrictions were kept has none, and its end line no count
of them. A header
line names the format and carries a keyed check of `identity.key` (a hash of a constant:
it reveals nothing), so a file is refused by a gateway with another key, whose hashes
would find no one; an end line carries the counts, so a file cut short is refused too.

    {"kind": "c360.crosswalk", "version": 1, "exported_at": "...", "key_check": "..."}
    {"kind": "link", "system": "sales", "system_id": "10001", "cuid": "cus_...", ...}
    {"kind": "cursor", "system": "sales", "after": "11010"}
    {"kind": "issue", "system": "sales", "system_id": "10417", "issue": "duplicate", ...}
    {"kind": "quality_run", "ran_at": "...", "figures": {...}}
    {"kind": "tombstone", "system": "sales", "system_id": "10233", "erased_at": "..."}
    {"kind": "restriction", "cuid": "cus_...", "since": "..."}
    {"kind": "end", "links": 2831, "cursors": 3, "issues": 15, "quality_runs": 2, ...}
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import select

from connectors.identity import store as tables
from connectors.identity.keys import CUID_PATTERN, IdentityKeys
from connectors.identity.store import CrosswalkStore, Issue, Link, QualityRun

FORMAT = "c360.crosswalk"
VERSION = 1
ISSUE_KINDS = frozenset({"unlinkable", "conflict", "duplicate"})
_HASH = re.compile(r"^[0-9a-f]{40}$")  # IdentityKeys.match_hash: 40 hex characters


class BackupError(ValueError):
    """A file that is not a whole crosswalk export for this key: `line N: message`."""


def key_check(keys: IdentityKeys) -> str:
    """A keyed hash of a constant: equal for the same `identity.key`, and nothing else."""
    return keys.match_hash("key-check", FORMAT)


@dataclass
class Crosswalk:
    links: list[Link] = field(default_factory=list)
    cursors: dict[str, str | None] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    quality_runs: list[QualityRun] = field(default_factory=list)
    tombstones: list[tuple[str, str, str]] = field(default_factory=list)  # system, id, when
    restrictions: list[tuple[str, str]] = field(default_factory=list)  # cuid, since

    def counts(self) -> dict[str, int]:
        return {
            "links": len(self.links),
            "cursors": len(self.cursors),
            "issues": len(self.issues),
            "quality_runs": len(self.quality_runs),
            "tombstones": len(self.tombstones),
            "restrictions": len(self.restrictions),
        }

    def summary(self) -> str:
        return ", ".join(
            f"{count} {name.replace('_', ' ')}" for name, count in self.counts().items()
        )


async def read_crosswalk(store: CrosswalkStore, attempts: int = 5) -> Crosswalk:
    """The whole crosswalk as of one moment: its parts are read one after the other, so
    a change made meanwhile (an erasure's links gone but its tombstones not yet read)
    would give a file that restores a person the store no longer links; the store's
    change number before and after tells, and the read starts again."""
    for _ in range(attempts):
        before = await store.epoch()
        crosswalk = await _read_parts(store)
        if await store.epoch() == before:
            return crosswalk
    raise BackupError("the crosswalk kept changing while it was read: export it again")


async def _read_parts(store: CrosswalkStore) -> Crosswalk:
    stones = tables.tombstones
    async with store.engine.connect() as connection:
        erased = (
            await connection.execute(
                select(stones.c.system, stones.c.system_id, stones.c.erased_at).order_by(
                    stones.c.system, stones.c.system_id
                )
            )
        ).all()
    return Crosswalk(
        links=sorted(await store.links(), key=lambda link: (link.system, link.system_id)),
        cursors=dict(sorted((await store.cursors()).items())),
        issues=await store.issues(),
        quality_runs=await store.quality_runs(),
        tombstones=sorted((str(s), str(i), str(at)) for s, i, at in erased),
        restrictions=await store.restrictions(),
    )


def export_lines(crosswalk: Crosswalk, keys: IdentityKeys, now: dt.datetime) -> Iterator[bytes]:
    """The file, line by line (each ending in a newline)."""
    stamp = now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    yield _line(kind=FORMAT, version=VERSION, exported_at=stamp, key_check=key_check(keys))
    for link in crosswalk.links:
        yield _line(
            kind="link",
            system=link.system,
            system_id=link.system_id,
            cuid=link.cuid,
            is_primary=link.is_primary,
            email_hash=link.email_hash,
            phone_hash=link.phone_hash,
        )
    for system, after in crosswalk.cursors.items():
        yield _line(kind="cursor", system=system, after=after)
    for issue in crosswalk.issues:
        yield _line(
            kind="issue",
            system=issue.system,
            system_id=issue.system_id,
            issue=issue.kind,
            cuid=issue.cuid,
            detail=issue.detail,
        )
    for run in crosswalk.quality_runs:
        yield _line(kind="quality_run", ran_at=run.ran_at, figures=run.figures)
    for system, system_id, erased_at in crosswalk.tombstones:
        yield _line(kind="tombstone", system=system, system_id=system_id, erased_at=erased_at)
    for cuid, since in crosswalk.restrictions:
        yield _line(kind="restriction", cuid=cuid, since=since)
    yield _line(kind="end", **crosswalk.counts())


def _line(**entry: Any) -> bytes:
    return orjson.dumps(entry) + b"\n"


def parse_lines(lines: Iterable[bytes | str], keys: IdentityKeys) -> Crosswalk:
    """Read and check a whole export; BackupError names the first line at fault."""
    crosswalk = Crosswalk()
    seen_links: set[tuple[str, str]] = set()
    seen_issues: set[tuple[str, str, str]] = set()
    seen_stones: set[tuple[str, str]] = set()
    seen_restricted: set[str] = set()
    header = False
    ended = False
    number = 0
    for number, raw in enumerate(lines, start=1):
        text = raw.decode() if isinstance(raw, bytes) else raw
        if not text.strip():
            continue

        def fail(message: str, number: int = number) -> BackupError:
            return BackupError(f"line {number}: {message}")

        try:
            entry = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise fail("not JSON") from None
        if not isinstance(entry, dict):
            raise fail("not a JSON object")
        kind = entry.get("kind")
        if ended:
            raise fail("a line after the end line")
        if not header:
            if kind != FORMAT:
                raise fail(f"not a crosswalk export (the first line names {FORMAT!r})")
            if entry.get("version") != VERSION:
                raise fail(f"format version {entry.get('version')!r}; this c360 reads {VERSION}")
            if entry.get("key_check") != key_check(keys):
                raise fail(
                    "exported under another identity.key: its match hashes would find no one "
                    "(import it with the key it was exported with)"
                )
            header = True
            continue
        if kind == "link":
            system, system_id = (
                _name(entry, "system", 64, fail),
                _name(entry, "system_id", 128, fail),
            )
            cuid = entry.get("cuid")
            if not isinstance(cuid, str) or not CUID_PATTERN.fullmatch(cuid):
                raise fail("link: 'cuid' is not a CUID")
            if not isinstance(entry.get("is_primary"), bool):
                raise fail("link: 'is_primary' is true or false")
            hashes = [entry.get("email_hash"), entry.get("phone_hash")]
            if any(
                h is not None and not (isinstance(h, str) and _HASH.fullmatch(h)) for h in hashes
            ):
                # Also what keeps a clear email or phone out of a restored crosswalk.
                raise fail("link: a match key is not a keyed hash")
            if (system, system_id) in seen_links:
                raise fail(f"link: {system}:{system_id} appears twice")
            seen_links.add((system, system_id))
            crosswalk.links.append(
                Link(system, system_id, cuid, entry["is_primary"], hashes[0], hashes[1])
            )
        elif kind == "cursor":
            system = _name(entry, "system", 64, fail)
            after = entry.get("after")
            if after is not None and (not isinstance(after, str) or len(after) > 1024):
                raise fail("cursor: 'after' is text of at most 1024 characters, or null")
            if system in crosswalk.cursors:
                raise fail(f"cursor: {system} appears twice")
            crosswalk.cursors[system] = after
        elif kind == "issue":
            system, system_id = (
                _name(entry, "system", 64, fail),
                _name(entry, "system_id", 128, fail),
            )
            issue = entry.get("issue")
            if issue not in ISSUE_KINDS:
                raise fail(f"issue: 'issue' is one of {', '.join(sorted(ISSUE_KINDS))}")
            cuid = entry.get("cuid")
            if cuid is not None and not (isinstance(cuid, str) and CUID_PATTERN.fullmatch(cuid)):
                raise fail("issue: 'cuid' is a CUID or null")
            detail = entry.get("detail")
            if not isinstance(detail, str) or len(detail) > 256:
                raise fail("issue: 'detail' is text of at most 256 characters")
            if (system, system_id, issue) in seen_issues:
                raise fail(f"issue: {issue} of {system}:{system_id} appears twice")
            seen_issues.add((system, system_id, issue))
            crosswalk.issues.append(Issue(system, system_id, issue, cuid, detail))
        elif kind == "quality_run":
            ran_at, figures = entry.get("ran_at"), entry.get("figures")
            if not isinstance(ran_at, str) or len(ran_at) > 40 or not isinstance(figures, dict):
                raise fail("quality_run: 'ran_at' (text) and 'figures' (an object)")
            crosswalk.quality_runs.append(QualityRun(ran_at, figures))
        elif kind == "tombstone":
            system, system_id = (
                _name(entry, "system", 64, fail),
                _name(entry, "system_id", 128, fail),
            )
            erased_at = _name(entry, "erased_at", 32, fail)
            if (system, system_id) in seen_stones:
                raise fail(f"tombstone: {system}:{system_id} appears twice")
            seen_stones.add((system, system_id))
            crosswalk.tombstones.append((system, system_id, erased_at))
        elif kind == "restriction":
            cuid = entry.get("cuid")
            if not isinstance(cuid, str) or not CUID_PATTERN.fullmatch(cuid):
                raise fail("restriction: 'cuid' is not a CUID")
            since = _name(entry, "since", 32, fail)
            if cuid in seen_restricted:
                raise fail(f"restriction: {cuid} appears twice")
            seen_restricted.add(cuid)
            crosswalk.restrictions.append((cuid, since))
        elif kind == "end":
            # An export made before restrictions were kept counts none.
            counts = {
                name: entry.get(name, 0 if name == "restrictions" else None)
                for name in crosswalk.counts()
            }
            if counts != crosswalk.counts():
                raise fail(f"the end line counts {counts}, the file holds {crosswalk.counts()}")
            ended = True
        else:
            raise fail(f"unknown kind {kind!r}")
    if not header:
        raise BackupError("empty: not a crosswalk export")
    if not ended:
        raise BackupError(f"line {number}: the file ends before its end line (cut short?)")
    return crosswalk


def _name(entry: dict[str, Any], key: str, longest: int, fail: Callable[[str], BackupError]) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value or len(value) > longest:
        raise fail(f"{entry.get('kind')}: {key!r} is text of 1 to {longest} characters")
    return value
