"""`c360 audit verify | checkpoint | prove | prune | public-key`: the log as evidence.

Each returns an exit status and prints what it found; a problem that stops it is a
CheckpointError (one line, exit 1, never a traceback: gateway/cli.py)."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.audit import checkpoint as checkpoints
from gateway.audit import merkle
from gateway.audit.chain import ChainReport, Cut, verify
from gateway.audit.checkpoint import CheckpointError, CheckpointSettings, LogScan
from gateway.audit.encryption import NOT_A_RECORD, Unreadable
from gateway.audit.log import AuditSettings
from gateway.audit.sinks import AccessSink, Item


def _settings(audit: AuditSettings) -> CheckpointSettings:
    if audit.checkpoints is None:
        raise CheckpointError("audit.checkpoint_key: no checkpoint key is configured")
    return audit.checkpoints


def _pick(settings: CheckpointSettings | None, name: str) -> Path:
    """A checkpoint file, or `latest`: the newest in checkpoint_dir (not a cut)."""
    if name != "latest":
        return Path(name)
    if settings is None:
        raise CheckpointError("audit.checkpoint_key: no checkpoint key is configured")
    # A prune's cut covers only what it removed: the newest other one, when there is one.
    found = checkpoints.newest(settings.directory, lambda c: c["scope"] != "cut")
    found = found or checkpoints.newest(settings.directory, lambda c: True)
    if found is None:
        raise CheckpointError(f"no checkpoint in {settings.directory}")
    return found[0]


async def _read(sink: AccessSink) -> list[Item]:
    return [item async for item in sink.scan()]


def _chain_list(report: ChainReport) -> str:
    return ", ".join(f"{name}: {seq}" for name, seq in sorted(report.chains.items()))


def _cut_problem(items: Sequence[Item], settings: CheckpointSettings | None) -> str | None:
    """A pruned log starts where its cuts say: only if a checkpoint key signed them."""
    cuts = {id(item["checkpoint"]): item for _, item in items if isinstance(item, Cut)}
    for cut in cuts.values():
        if settings is None:
            return "the log was pruned, and no audit.checkpoint_key is configured to check its cut"
        problem = checkpoints.check_signature(cut["checkpoint"], settings.public_keys())
        if problem:
            return f"the cut the log starts from ({cut['where']}) is not to be trusted: {problem}"
    return None


async def verify_log(sink: AccessSink, audit: AuditSettings, checkpoint_file: str | None) -> int:
    settings = audit.checkpoints
    checkpoint = None
    if checkpoint_file is not None:
        path = _pick(settings, checkpoint_file)
        checkpoint = checkpoints.load_trusted(path, settings)
    items = await _read(sink)
    report = verify(items)
    torn = report.torn_tail
    if torn:
        print(f"note: {torn} is an incomplete last record (a crash); it is ignored")
    problems = []
    cut_problem = _cut_problem(items, settings)
    if cut_problem:
        problems.append(f"BROKEN cut: {cut_problem}")
    unreadable = {where: item for where, item in items if isinstance(item, Unreadable)}
    for broken in report.breaks:
        why = unreadable.get(broken.where)
        if why is not None and why is not NOT_A_RECORD:
            # A sealed line says whose place it takes, even when it does not open.
            problems.append(
                f"BROKEN chain {why.chain or '?'} at seq {why.seq} ({broken.where}): {why.problem}"
            )
            continue
        problems.append(
            f"BROKEN chain {broken.chain} at seq {broken.seq} ({broken.where}): "
            f"{broken.kind + ': ' if broken.kind else ''}{broken.problem}"
        )
    notes = []
    if checkpoint is not None:
        wanted = {name: str(e.get("last", "")) for name, e in checkpoint["chains"].items()}
        scan = checkpoints.scan_items(items, LogScan(wanted=wanted))
        for finding in checkpoints.compare(checkpoint, scan, report, torn):
            line = f"chain {finding.chain}: {finding.kind}: {finding.message}"
            if finding.fatal:
                problems.append(f"CHECKPOINT {line}")
            else:
                notes.append(f"note: {line}")
    for note in notes:
        print(note)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return 1
    print(
        f"intact: {report.records} records in {len(report.chains)} chain(s) ({_chain_list(report)})"
    )
    if report.cuts:
        cuts = ", ".join(f"{name} after seq {seq}" for name, seq in sorted(report.cuts.items()))
        print(f"pruned: the chains start at their signed cut ({cuts})")
    if checkpoint is not None:
        covered = ", ".join(
            f"{name}: {entry['size']}" for name, entry in sorted(checkpoint["chains"].items())
        )
        print(
            f"matches checkpoint {checkpoint['timestamp']} (scope {checkpoint['scope']}, "
            f"signed by {checkpoint['key_id']}): {covered}"
        )
    return 0


async def _healthy(sink: AccessSink, settings: CheckpointSettings, what: str) -> list[Item]:
    items = await _read(sink)
    report = verify(items)
    problem = _cut_problem(items, settings)
    if report.breaks or problem:
        raise CheckpointError(
            f"the log does not verify (`c360 audit verify` names what broke): {what}"
        )
    return items


async def write_checkpoint(sink: AccessSink, audit: AuditSettings, chains: Sequence[str]) -> int:
    settings = _settings(audit)
    items = await _healthy(sink, settings, "no checkpoint signed")
    scan = checkpoints.scan_items(items, LogScan())
    missing = sorted(set(chains) - set(scan.chains))
    if missing:
        raise CheckpointError(f"no chain {missing[0]} in the log")
    entries = {
        name: chain.entry() for name, chain in scan.chains.items() if not chains or name in chains
    }
    made = checkpoints.make(entries, "chain" if chains else "log", sink.label(), settings)
    path = checkpoints.store(made, settings)
    total = sum(int(entry["size"]) for entry in entries.values())
    print(f"wrote {path}: {total} records in {len(entries)} chain(s), signed by {made['key_id']}")
    for name, entry in sorted(entries.items()):
        print(f"  {name}: {entry['size']} records, root {entry['root']}")
    if settings.witness is not None:
        print(f"  witness copy: {settings.witness / path.name}")
    return 0


async def prove(
    sink: AccessSink,
    audit: AuditSettings,
    request_id: str | None,
    checkpoint_file: str | None,
    old_file: str | None,
    new_file: str | None,
) -> int:
    settings = _settings(audit)
    if request_id is None:
        if old_file is None or new_file is None:
            raise CheckpointError("audit prove: --request-id ID, or --from OLD --to NEW")
        old = checkpoints.load_trusted(_pick(settings, old_file), settings)
        new = checkpoints.load_trusted(_pick(settings, new_file), settings)
        scan = checkpoints.scan_items(await _read(sink), LogScan())
        proof = checkpoints.consistency_proof(scan, old, new)
        for name, part in proof["proofs"].items():
            first, second = old["chains"][name], new["chains"][name]
            if not merkle.verify_consistency(
                part["first_size"],
                part["second_size"],
                bytes.fromhex(first["root"]),
                bytes.fromhex(second["root"]),
                [bytes.fromhex(node) for node in part["path"]],
            ):  # pragma: no cover - a proof made from a tree that matched both roots
                raise CheckpointError(f"chain {name}: the consistency proof does not verify")
    else:
        scan = checkpoints.scan_items(await _read(sink), LogScan(request_id=request_id))
        if not scan.found:
            raise CheckpointError(f"no record of request {request_id} in the log")
        if checkpoint_file is not None:
            checkpoint = checkpoints.load_trusted(_pick(settings, checkpoint_file), settings)
        else:
            checkpoint = _covering(settings, scan)
        proof = checkpoints.inclusion_proof(scan, checkpoint, request_id)
        for part in proof["proofs"]:
            entry = checkpoint["chains"][part["chain"]]
            assert merkle.verify_inclusion(
                bytes.fromhex(part["leaf_hash"]),
                part["index"],
                part["tree_size"],
                [bytes.fromhex(node) for node in part["audit_path"]],
                bytes.fromhex(entry["root"]),
            )
    sys.stdout.write(orjson.dumps(proof, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _covering(settings: CheckpointSettings, scan: LogScan) -> dict[str, Any]:
    """The newest trusted checkpoint that covers every record of the request."""
    keys = settings.public_keys()

    def covers(candidate: dict[str, Any]) -> bool:
        chains = candidate["chains"]
        return (
            candidate["scope"] != "cut"
            and all(
                name in chains and index < int(chains[name]["size"])
                for name, index, _ in scan.found
            )
            and checkpoints.check_signature(candidate, keys) is None
        )

    found = checkpoints.newest(settings.directory, covers)
    if found is not None:
        return found[1]
    name, index, _ = scan.found[0]
    raise CheckpointError(
        f"no checkpoint in {settings.directory} covers the record yet (chain {name}, seq "
        f"{index + 1}): write one with `c360 audit checkpoint`"
    )


def parse_before(value: str | None, retention_days: int) -> dt.datetime:
    if value is None:
        if not retention_days:
            raise CheckpointError("audit prune: --before DATE, or set audit.retention_days")
        return dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days)
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise CheckpointError("--before: a date or an ISO 8601 time, e.g. 2026-11-01") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def prune(
    sink: AccessSink, audit: AuditSettings, before_text: str | None, chains: Sequence[str]
) -> int:
    """Drop every chain's records dated before the cut (the longest prefix of each chain
    that is), keeping what remains verifiable: first a checkpoint of the whole log as it
    is, then a signed cut checkpoint (per chain: the size, root, frontier and last hash of
    what goes) stored apart and beside the log, and only then the records."""
    settings = _settings(audit)
    before = parse_before(before_text, audit.retention_days)
    items = await _healthy(sink, settings, "nothing pruned")
    scan = checkpoints.scan_items(items, LogScan(before=checkpoints.utc_iso(before)))
    targets = {
        name: chain
        for name, chain in scan.chains.items()
        if (not chains or name in chains) and chain.prefix > chain.cut
    }
    when = before.isoformat()
    if not targets:
        print(f"nothing to prune: no records before {when}")
        return 0
    label = sink.label()
    whole = checkpoints.make(
        {name: chain.entry() for name, chain in scan.chains.items()}, "log", label, settings
    )
    checkpoints.store(whole, settings)
    old = await sink.cut()
    entries: dict[str, Any] = dict(old["chains"]) if old else {}
    entries.update({name: checkpoints.cut_entry(chain) for name, chain in targets.items()})
    cut = checkpoints.make(entries, "cut", label, settings)
    path = checkpoints.store(cut, settings)
    await sink.write_cut(cut)
    sizes = {name: int(entries[name]["size"]) for name in targets}
    removed = await sink.prune(sizes, None if chains else before)
    print(f"pruned {removed} records dated before {when}; cut checkpoint {path}")
    for name, chain in sorted(targets.items()):
        print(f"  {name}: seq {chain.cut + 1}-{sizes[name]} removed, kept from {sizes[name] + 1}")
    return 0


def public_key(audit: AuditSettings, key_id: str | None) -> int:
    settings = _settings(audit)
    keys = settings.public_keys()
    chosen = key_id or settings.keys[0][0]
    if chosen not in keys:
        raise CheckpointError(f"no checkpoint key {chosen!r} (known: {', '.join(keys)})")
    sys.stdout.write(checkpoints.public_pem(keys[chosen]))
    return 0
