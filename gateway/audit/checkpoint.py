"""Signed checkpoints of the access log, held apart from it, and the proofs they allow.

**One tree per chain.** A chain is one writer's order; the order *across* chains is not
one thing (JSONL interleaves workers' batches as they land, PostgreSQL orders by chain),
so each chain gets its own RFC 6962 tree (gateway/audit/merkle.py): leaf i is the chain's
record seq i+1, leaf hash = SHA-256(0x00 || the record's canonical JSON: sorted keys, no
spaces, its `hash` included). A checkpoint holds, per chain it covers, the tree's size
and root, the chain hash of its last record, a digest of that record's content (without
chain, seq, prev_hash, hash: it survives a renumbering, so `verify` can tell an insertion
from a deletion from a rewrite) and the tree's frontier (its perfect subtrees: a writer
resumes from it, and a prune keeps it for the records it removes); then a timestamp, the
signer's key id and an Ed25519 signature over the rest (canonical JSON, sorted keys,
ASCII). Scope `log` (`c360 audit checkpoint`): every chain in the log at that moment, so a
chain it does not name but whose records are older is forged; scope `chain`: one
writer's periodic checkpoint of its own chain; scope `cut`: made by `c360 audit prune`,
where the kept records start.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit import merkle
from gateway.audit.chain import GENESIS, ChainReport, Cut
from gateway.audit.files import replace_file
from gateway.errors import ConfigError

TYPE = "c360.checkpoint.v1"
CHAIN_FIELDS = ("chain", "seq", "prev_hash", "hash")


class CheckpointError(Exception):
    """A checkpoint that cannot be read, trusted or used: one line saying why."""


# -- keys ------------------------------------------------------------------------------


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519-" + hashlib.sha256(raw).hexdigest()[:12]


def _read_key(name: str, value: object, base: Path) -> bytes:
    """A 32-byte Ed25519 private key from a file (PEM, or base64 of the raw key) or a
    base64 value."""
    where = f"audit.checkpoint_key{'.' + name if name else ''}"
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: a file path or a base64 Ed25519 private key")
    text = value.strip()
    path = base / text
    if path.is_file():
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{where}: cannot read {path}: {error}") from error
        if text.startswith("-----BEGIN"):
            try:
                key = serialization.load_pem_private_key(text.encode(), password=None)
            except (ValueError, TypeError) as error:
                raise ConfigError(f"{where}: {path} is not an unencrypted PEM key") from error
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"{where}: {path} is not an Ed25519 key")
            return key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(
            f"{where}: a file path or a base64 Ed25519 private key (32 bytes), e.g. from "
            "`openssl genpkey -algorithm ed25519`"
        )
    return raw


def parse_keys(value: object, base: Path) -> tuple[tuple[str, bytes], ...]:
    """`checkpoint_key = "…"` (its id: `ed25519-` and 12 hex digits of its public key's
    SHA-256) or `checkpoint_key = { cp2 = "…", cp1 = "…" }`: the first signs, all verify."""
    if isinstance(value, Mapping):
        if not value:
            raise ConfigError("audit.checkpoint_key: at least one key")
        keys = []
        for key_id, item in value.items():
            if not isinstance(key_id, str) or not key_id or len(key_id) > 64:
                raise ConfigError("audit.checkpoint_key: key ids of 1-64 characters")
            keys.append((key_id, _read_key(key_id, item, base)))
        return tuple(keys)
    raw = _read_key("", value, base)
    return ((key_id_of(Ed25519PrivateKey.from_private_bytes(raw).public_key()), raw),)


@dataclass(frozen=True)
class CheckpointSettings:
    keys: tuple[tuple[str, bytes], ...] = field(repr=False)  # (id, raw private key)
    directory: Path
    witness: Path | None = None
    every: int = 0  # records of its chain between a writer's checkpoints; 0: none

    def signer(self) -> tuple[str, Ed25519PrivateKey]:
        key_id, raw = self.keys[0]
        return key_id, Ed25519PrivateKey.from_private_bytes(raw)

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Every key by its id, and also by its fingerprint id (`ed25519-…`): a key first
        configured alone and named later still verifies what it signed."""
        found = {k: Ed25519PrivateKey.from_private_bytes(raw).public_key() for k, raw in self.keys}
        for public in list(found.values()):
            found.setdefault(key_id_of(public), public)
        return found


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


# -- records as leaves -----------------------------------------------------------------


def record_bytes(record: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a record as stored: its leaf is SHA-256(0x00 || these)."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_leaf(record: Mapping[str, Any]) -> bytes:
    return merkle.leaf_hash(record_bytes(record))


def content_digest(record: Mapping[str, Any]) -> str:
    """What a record says, without where it sits in its chain (kept by a renumbering)."""
    body = {k: v for k, v in record.items() if k not in CHAIN_FIELDS}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class WriterTree:
    """A writer's own chain as a growing tree, fed the records the sink has taken."""

    frontier: merkle.Frontier = field(default_factory=merkle.Frontier)
    last_hash: str = GENESIS
    last_digest: str = ""  # of where it resumed from, until a record comes
    checkpointed: int = 0  # the size of its last checkpoint
    last_record: Mapping[str, Any] | None = None

    def add(self, record: Mapping[str, Any]) -> bool:
        """Append a record if it is the next of the chain (a replayed one is not)."""
        if record.get("seq") != self.frontier.size + 1:
            return False
        self.frontier.append(record_leaf(record))
        self.last_hash = str(record["hash"])
        self.last_record = record
        return True

    def entry(self) -> dict[str, Any]:
        if self.last_record is not None:
            self.last_digest = content_digest(self.last_record)
            self.last_record = None
        return chain_entry(
            self.frontier.size,
            self.frontier.root(),
            self.last_hash,
            self.last_digest,
            self.frontier.nodes(),
        )


def chain_entry(
    size: int, root: bytes, last_hash: str, last_digest: str, frontier: Sequence[bytes]
) -> dict[str, Any]:
    return {
        "size": size,
        "root": root.hex(),
        "hash": last_hash,
        "last": last_digest,
        "frontier": [node.hex() for node in frontier],
    }


# -- checkpoints -----------------------------------------------------------------------


def signed_bytes(checkpoint: Mapping[str, Any]) -> bytes:
    """What the signature covers: everything but the signature, as canonical JSON (the
    standalone verifier, tools/verify_proof.py, makes the same bytes with `json`)."""
    body = {k: v for k, v in checkpoint.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make(
    chains: Mapping[str, Mapping[str, Any]],
    scope: str,
    log_name: str,
    settings: CheckpointSettings,
    timestamp: str | None = None,
) -> dict[str, Any]:
    key_id, key = settings.signer()
    checkpoint: dict[str, Any] = {
        "type": TYPE,
        "log": log_name,
        "scope": scope,
        "timestamp": timestamp or now_iso(),
        "chains": {name: dict(entry) for name, entry in sorted(chains.items())},
        "key_id": key_id,
    }
    checkpoint["signature"] = base64.b64encode(key.sign(signed_bytes(checkpoint))).decode()
    return checkpoint


def check_signature(
    checkpoint: Mapping[str, Any], public_keys: Mapping[str, Ed25519PublicKey]
) -> str | None:
    """None when a known key signed exactly this checkpoint; else what is wrong."""
    key_id = checkpoint.get("key_id")
    public = public_keys.get(str(key_id))
    if public is None:
        known = ", ".join(k for k in sorted(public_keys) if not k.startswith("ed25519-"))
        known = known or ", ".join(sorted(public_keys)) or "none configured"
        return f"signed by key {key_id!r}, which is not one of audit.checkpoint_key ({known})"
    try:
        signature = base64.b64decode(str(checkpoint.get("signature", "")), validate=True)
        public.verify(signature, signed_bytes(checkpoint))
    except (InvalidSignature, ValueError):
        return f"its signature does not verify with key {key_id!r}: it was altered or forged"
    return None


def validate(checkpoint: object, where: str) -> dict[str, Any]:
    """The shape of a checkpoint, so that later code can index it."""
    if not isinstance(checkpoint, dict) or checkpoint.get("type") != TYPE:
        raise CheckpointError(f"{where}: not a c360 checkpoint")
    chains = checkpoint.get("chains")
    if not isinstance(chains, dict) or not all(
        isinstance(entry, dict)
        and isinstance(entry.get("size"), int)
        and entry["size"] >= 0
        and isinstance(entry.get("root"), str)
        and isinstance(entry.get("frontier"), list)
        for entry in chains.values()
    ):
        raise CheckpointError(f"{where}: a checkpoint without valid chains")
    for key in ("timestamp", "key_id", "signature", "scope"):
        if not isinstance(checkpoint.get(key), str):
            raise CheckpointError(f"{where}: a checkpoint without {key}")
    return checkpoint


def load(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as error:
        raise CheckpointError(f"{path}: {error.strerror}") from error
    except orjson.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not JSON") from error
    return validate(data, str(path))


def load_trusted(path: Path, settings: CheckpointSettings | None) -> dict[str, Any]:
    checkpoint = load(path)
    if settings is None:
        raise CheckpointError("audit.checkpoint_key: no key configured to check checkpoints with")
    problem = check_signature(checkpoint, settings.public_keys())
    if problem:
        raise CheckpointError(f"checkpoint {path.name}: {problem}")
    return checkpoint


def _write_file(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    replace_file(target, data, 0o644)  # a checkpoint is public: anyone may verify with it
    return target


def file_name(checkpoint: Mapping[str, Any]) -> str:
    stamp = str(checkpoint["timestamp"]).replace(":", "").replace("-", "")
    chains = checkpoint["chains"]
    label = next(iter(chains)) if checkpoint["scope"] == "chain" and chains else checkpoint["scope"]
    sizes = sum(int(entry["size"]) for entry in chains.values())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80]
    return f"checkpoint-{stamp}-{safe}-{sizes}.json"


def store(checkpoint: Mapping[str, Any], settings: CheckpointSettings) -> Path:
    """One JSON file in `checkpoint_dir` (and a copy in `witness_dir`), written whole."""
    data = orjson.dumps(checkpoint, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    name = file_name(checkpoint)
    path = _write_file(settings.directory, name, data)
    if settings.witness is not None:
        _write_file(settings.witness, name, data)
    return path


def newest_first(directory: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The readable checkpoints of a directory, newest first, each read only when the
    caller gets to it (the names start with their UTC timestamp, so they sort in time)."""
    paths = sorted(directory.glob("checkpoint-*.json")) if directory.is_dir() else []
    for path in reversed(paths):
        try:
            yield path, load(path)
        except CheckpointError:
            continue


def newest(
    directory: Path, accept: Callable[[dict[str, Any]], bool]
) -> tuple[Path, dict[str, Any]] | None:
    return next(((p, c) for p, c in newest_first(directory) if accept(c)), None)


# -- reading the log as trees ------------------------------------------------------------


@dataclass
class ChainLeaves:
    name: str
    cut: int = 0
    cut_hash: str = GENESIS
    cut_frontier: list[bytes] = field(default_factory=list)
    leaves: list[bytes] = field(default_factory=list)
    last_hash: str = GENESIS
    last_digest: str = ""  # of the cut, until a record comes
    last_record: Mapping[str, Any] | None = None
    first_ts: str | None = None
    digests: dict[str, int] = field(default_factory=dict)  # wanted digest -> size through it
    # prune: the longest prefix dated before `before` (size, hash, digest, frontier)
    prefix: int = 0
    prefix_hash: str = GENESIS
    prefix_digest: str = ""
    prefix_open: bool = True
    prefix_frontier: merkle.Frontier | None = None

    @property
    def size(self) -> int:
        return self.cut + len(self.leaves)

    def tree(self) -> merkle.Tree:
        return merkle.Tree(self.leaves, self.cut, self.cut_frontier)

    def entry(self) -> dict[str, Any]:
        """The checkpoint entry of the whole chain as read."""
        frontier = merkle.Frontier(self.cut, self.cut_frontier)
        for leaf in self.leaves:
            frontier.append(leaf)
        last = self.last_record
        digest = content_digest(last) if last is not None else self.last_digest
        return chain_entry(frontier.size, frontier.root(), self.last_hash, digest, frontier.nodes())


@dataclass
class LogScan:
    """The log read once: per chain its leaves (what a tree needs), and what a command
    asked for on the way: digests to find, a request's records, a prune's prefix."""

    chains: dict[str, ChainLeaves] = field(default_factory=dict)
    wanted: Mapping[str, str] = field(default_factory=dict)  # chain -> content digest
    request_id: str | None = None
    found: list[tuple[str, int, bytes]] = field(default_factory=list)  # chain, index, bytes
    before: str | None = None  # prune: ts of the first record to keep (ISO, UTC)

    def add(self, record: object) -> None:
        """One scanned line: anything but a record (an unreadable line) is skipped."""
        if not isinstance(record, Mapping):
            return
        name = str(record.get("chain", "?"))
        chain = self.chains.get(name)
        if chain is None:
            chain = self.chains[name] = ChainLeaves(name)
        if isinstance(record, Cut):
            chain.cut = chain.prefix = int(record["seq"])
            chain.cut_hash = chain.last_hash = chain.prefix_hash = str(record["hash"])
            chain.cut_frontier = [bytes.fromhex(node) for node in record.get("frontier", [])]
            chain.last_digest = chain.prefix_digest = str(record.get("last", ""))
            return
        seq = record.get("seq")
        if isinstance(seq, int) and seq <= chain.cut:
            return  # left of a cut (an interrupted prune): not part of the tree
        data = record_bytes(record)
        leaf = merkle.leaf_hash(data)
        chain.leaves.append(leaf)
        chain.last_hash = str(record.get("hash"))
        chain.last_record = record
        digest = ""
        if name in self.wanted or self.before is not None:
            digest = content_digest(record)
            if digest == self.wanted.get(name) and digest not in chain.digests:
                chain.digests[digest] = chain.size
        if chain.first_ts is None:
            chain.first_ts = str(record.get("ts"))
        if self.request_id is not None and record.get("request_id") == self.request_id:
            self.found.append((name, chain.size - 1, data))
        if self.before is not None and chain.prefix_open:
            if _utc(record.get("ts")) < self.before:
                if chain.prefix_frontier is None:
                    chain.prefix_frontier = merkle.Frontier(chain.cut, chain.cut_frontier)
                chain.prefix_frontier.append(leaf)
                chain.prefix = chain.size
                chain.prefix_hash = str(record.get("hash"))
                chain.prefix_digest = digest
            else:
                chain.prefix_open = False


def _utc(ts: object) -> str:
    try:
        moment = dt.datetime.fromisoformat(str(ts))
    except ValueError:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat()


def utc_iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat()


def scan_items(items: Iterable[tuple[str, object]], scan: LogScan) -> LogScan:
    for _, record in items:
        scan.add(record)
    return scan


# -- verifying the log against a checkpoint --------------------------------------------


@dataclass(frozen=True)
class Finding:
    chain: str
    kind: str  # truncated, rewritten, inserted, deleted, forged, pruned
    message: str
    fatal: bool = True


def compare(
    checkpoint: Mapping[str, Any],
    scan: LogScan,
    report: ChainReport,
    torn_at: str | None = None,
) -> list[Finding]:
    """What of the log no longer matches a (trusted) checkpoint, by chain, named."""
    findings: list[Finding] = []
    broken = {b.chain for b in report.breaks}
    for name, entry in checkpoint["chains"].items():
        size = int(entry["size"])
        chain = scan.chains.get(name)
        have = chain.size if chain else 0
        if chain is not None and chain.cut > size:
            findings.append(
                Finding(
                    name,
                    "pruned",
                    f"its {size} records were pruned since (the chain now starts after seq "
                    f"{chain.cut}): nothing of it is left to compare",
                    fatal=False,
                )
            )
            continue
        at = chain.digests.get(str(entry.get("last", ""))) if chain else None
        if have < size and at is not None and name not in broken:
            findings.append(
                Finding(
                    name,
                    "deleted",
                    f"the chain verifies but not its first {size} records: {size - at} "
                    "record(s) were deleted and the chain renumbered and rehashed",
                )
            )
            continue
        if have < size:
            torn = f" (the incomplete last line {torn_at} counts as missing)" if torn_at else ""
            where = "the chain is missing from the log" if chain is None else f"the log has {have}"
            findings.append(
                Finding(
                    name,
                    "truncated",
                    f"the checkpoint covers {size} records, {where}: records "
                    f"{have + 1}-{size} were removed{torn}",
                )
            )
            continue
        if size == 0 or chain is None:
            continue
        try:
            root = chain.tree().root(size).hex()
        except merkle.Pruned:
            root = ""
        if root == entry["root"]:
            continue
        if name in broken:
            findings.append(
                Finding(
                    name,
                    "broken",
                    f"its first {size} records do not match the checkpoint's root (the break "
                    "above)",
                )
            )
            continue
        if at == size:
            kind, text = (
                "rewritten",
                "records were edited or reordered and every later hash recomputed",
            )
        elif at is not None and at > size:
            kind, text = (
                "inserted",
                f"{at - size} record(s) were inserted and the chain renumbered and rehashed",
            )
        elif at is not None:
            kind, text = (
                "deleted",
                f"{size - at} record(s) were deleted and the chain renumbered and rehashed",
            )
        else:
            kind, text = (
                "rewritten",
                f"the record the checkpoint ends with (seq {size}) was edited or removed and "
                "the hashes recomputed",
            )
        findings.append(
            Finding(name, kind, f"the chain verifies but not its first {size} records: {text}")
        )
    if checkpoint["scope"] == "log":
        taken = _utc(checkpoint["timestamp"])
        for name, chain in sorted(scan.chains.items()):
            if name in checkpoint["chains"] or chain.first_ts is None:
                continue
            if _utc(chain.first_ts) <= taken:
                findings.append(
                    Finding(
                        name,
                        "forged",
                        f"not in the checkpoint, which covers every chain, though its first "
                        f"record is older ({chain.first_ts})",
                    )
                )
    return findings


# -- proofs ----------------------------------------------------------------------------


def chain_tree(scan: LogScan, name: str, checkpoint: Mapping[str, Any]) -> tuple[merkle.Tree, int]:
    """The chain's tree, checked against the checkpoint: (tree, the checkpoint's size)."""
    entry = checkpoint["chains"].get(name)
    if entry is None:
        raise CheckpointError(f"the checkpoint does not cover chain {name}")
    chain = scan.chains.get(name)
    size = int(entry["size"])
    if chain is None or chain.size < size:
        raise CheckpointError(
            f"chain {name}: the log has fewer records than the checkpoint "
            "(run `c360 audit verify --checkpoint`)"
        )
    tree = chain.tree()
    try:
        matches = tree.root(size).hex() == entry["root"]
    except merkle.Pruned as error:
        raise CheckpointError(
            f"chain {name}: the checkpoint's records were pruned (cut at {chain.cut})"
        ) from error
    if not matches:
        raise CheckpointError(
            f"chain {name}: the log no longer matches the checkpoint "
            "(run `c360 audit verify --checkpoint`)"
        )
    return tree, size


def inclusion_proof(
    scan: LogScan, checkpoint: Mapping[str, Any], request_id: str
) -> dict[str, Any]:
    proofs = []
    for name, index, data in scan.found:
        tree, size = chain_tree(scan, name, checkpoint)
        if index >= size:
            raise CheckpointError(
                f"the record (chain {name}, seq {index + 1}) is newer than the checkpoint "
                f"({size} records): write one with `c360 audit checkpoint`"
            )
        proofs.append(
            {
                "chain": name,
                "index": index,
                "tree_size": size,
                "leaf_hash": merkle.leaf_hash(data).hex(),
                "record": data.decode(),
                "audit_path": [node.hex() for node in tree.inclusion(index, size)],
            }
        )
    return {
        "type": "c360.inclusion.v1",
        "request_id": request_id,
        "proofs": proofs,
        "checkpoint": dict(checkpoint),
    }


def consistency_proof(
    scan: LogScan, old: Mapping[str, Any], new: Mapping[str, Any]
) -> dict[str, Any]:
    proofs = {}
    for name, entry in old["chains"].items():
        if name not in new["chains"]:
            raise CheckpointError(f"chain {name} of the older checkpoint is not in the newer one")
        first, second = int(entry["size"]), int(new["chains"][name]["size"])
        if second < first:
            raise CheckpointError(
                f"chain {name}: the newer checkpoint has fewer records ({second} < {first})"
            )
        tree, _ = chain_tree(scan, name, new)
        chain_tree(scan, name, old)
        proofs[name] = {
            "first_size": first,
            "second_size": second,
            "path": [node.hex() for node in tree.consistency(first, second)],
        }
    return {
        "type": "c360.consistency.v1",
        "proofs": proofs,
        "from": dict(old),
        "to": dict(new),
    }


def cut_entry(chain: ChainLeaves) -> dict[str, Any]:
    """The chain's checkpoint entry at its prune prefix."""
    frontier = chain.prefix_frontier or merkle.Frontier(chain.cut, chain.cut_frontier)
    return chain_entry(
        frontier.size, frontier.root(), chain.prefix_hash, chain.prefix_digest, frontier.nodes()
    )


def cut_of(name: str, checkpoint: Mapping[str, Any], where: str) -> Cut:
    entry = checkpoint["chains"][name]
    return Cut(
        chain=name,
        seq=int(entry["size"]),
        hash=str(entry["hash"]),
        frontier=list(entry["frontier"]),
        last=str(entry.get("last", "")),
        where=where,
        checkpoint=checkpoint,
    )
