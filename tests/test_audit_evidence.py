"""The access log as evidence (issue 21): a chain per writing process, RFC 6962 trees,
signed checkpoints held apart, inclusion and consistency proofs a standalone tool checks,
and retention that leaves what remains verifiable."""

from __future__ import annotations

import ast
import asyncio
import base64
import datetime as dt
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.systems import DemoSystems
from gateway.audit import merkle
from gateway.audit.chain import ChainHead
from gateway.audit.checkpoint import content_digest
from gateway.audit.log import AccessLog
from gateway.audit.settings import parse_audit
from gateway.audit.writers import claim_chain
from gateway.demo import to_toml
from gateway.errors import ConfigError
from harness import sales_token, start_serve, write_config, write_records

ROOT = Path(__file__).resolve().parent.parent
VERIFIER = ROOT / "tools" / "verify_proof.py"
CHAIN_FIELDS = ("chain", "seq", "prev_hash", "hash")


# -- helpers -----------------------------------------------------------------------------


def new_key() -> str:
    raw = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def public_pem(key: str) -> bytes:
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(key))
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def audit_table(tmp_path: Path, key: Any, **more: Any) -> dict[str, Any]:
    return {
        "path": "log/access.jsonl",
        "chain": "gw",
        "checkpoint_key": key,
        "checkpoint_dir": "checkpoints",
        "witness_dir": "witness",
        **more,
    }


def write_audit_config(tmp_path: Path, audit: dict[str, Any], name: str = "c360.toml") -> Path:
    """A config whose [audit] is what the test says (the rest: the minimum that parses)."""
    data = {
        "identity": {"key": "x" * 32},
        "auth": {"issuer": "i", "audience": "a", "hs256": {"k": "s" * 32}},
        "policies": {"hash_key": "h" * 16},
        "sources": {"s": {"kind": "rest", "base_url": "http://127.0.0.1:1", "entities": {}}},
        "audit": audit,
    }
    path = tmp_path / name
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def record(n: int, ts: str | None = None) -> dict[str, Any]:
    return {
        "kind": "access",
        "ts": ts or f"2026-11-25T09:{n // 60:02d}:{n % 60:02d}.000Z",
        "request_id": f"req-{n:04d}",
        "subject": "alice",
        "roles": ["sales"],
        "outcome": "ok",
        "status": 200,
        "customers": [f"cus_{n:016d}"],
        "fields": {f"cus_{n:016d}": {"email": "allow"}},
    }


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def write_lines(path: Path, records: list[dict[str, Any]], end: bytes = b"\n") -> None:
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + end)


def reseal(records: list[dict[str, Any]], chain: str = "gw") -> list[dict[str, Any]]:
    """What an attacker with write access does: renumber and recompute every hash."""
    head = ChainHead(chain)
    return [head.seal({k: v for k, v in r.items() if k not in CHAIN_FIELDS}) for r in records]


def verifier(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-I", str(VERIFIER), *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )


# -- the tree --------------------------------------------------------------------------


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1, literally."""
    if not leaves:
        return merkle.EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = merkle.split(len(leaves))
    return merkle.node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = merkle.split(len(leaves))
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [_mth(leaves)]
    k = merkle.split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def test_the_tree_is_rfc_6962s_with_and_without_a_cut() -> None:
    # The certificate-transparency test vectors: roots of the first n of these leaves.
    inputs = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657"]
    inputs.append("606162636465666768696a6b6c6d6e6f")
    vectors = {
        1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    }
    leaves = [merkle.leaf_hash(bytes.fromhex(text)) for text in inputs]
    for size, root in vectors.items():
        assert merkle.root_of(leaves[:size]).hex() == root
    assert merkle.root_of([]) == merkle.EMPTY_ROOT
    for n in range(1, 20):
        leaves = [merkle.leaf_hash(n.to_bytes(2, "big") + bytes([i])) for i in range(n)]
        tree = merkle.Tree(leaves)
        assert tree.root() == _mth(leaves)
        for i in range(n):
            path = tree.inclusion(i, n)
            assert path == _path(i, leaves)
            assert merkle.verify_inclusion(leaves[i], i, n, path, tree.root())
            forged = merkle.leaf_hash(b"forged")
            assert not merkle.verify_inclusion(forged, i, n, path, tree.root())
            if n > 1:  # the path of one leaf does not prove another
                assert not merkle.verify_inclusion(leaves[i], (i + 1) % n, n, path, tree.root())
        for m in range(1, n + 1):
            proof = tree.consistency(m, n)
            assert proof == _subproof(m, leaves, True)
            assert merkle.verify_consistency(m, n, _mth(leaves[:m]), tree.root(), proof)
            if m < n:  # a rewritten newer tree does not extend the older
                other = _mth([*leaves[: n - 1], merkle.leaf_hash(b"forged")])
                assert not merkle.verify_consistency(m, n, _mth(leaves[:m]), other, proof)
        for cut in range(n + 1):  # leaves before `cut` gone: only their frontier is kept
            frontier = merkle.Frontier()
            for leaf in leaves[:cut]:
                frontier.append(leaf)
            kept = merkle.Tree(leaves[cut:], cut, frontier.nodes())
            for size in range(max(cut, 1), n + 1):
                assert kept.root(size) == _mth(leaves[:size])
                for i in range(cut, size):
                    assert kept.inclusion(i, size) == _path(i, leaves[:size])
                for m in range(max(cut, 1), size + 1):
                    assert kept.consistency(m, size) == _subproof(m, leaves[:size], True)
            if cut > 1:
                with pytest.raises(merkle.Pruned):
                    kept.inclusion(0, n)


# -- one chain per writing process ------------------------------------------------------


def test_each_process_claims_a_chain_of_its_own(tmp_path: Path) -> None:
    first = claim_chain("gw", tmp_path, worker_count=1)
    second = claim_chain("gw", tmp_path, worker_count=1)  # another instance, same machine
    workers = [claim_chain("gw", tmp_path, worker_count=2) for _ in range(2)]
    assert (first.chain, second.chain) == ("gw", "gw-i2")
    assert [w.chain for w in workers] == ["gw-w1", "gw-w2"]
    workers[0].release()
    again = claim_chain("gw", tmp_path, worker_count=2)
    assert again.chain == "gw-w1"  # stable: a restarted worker gets its number back
    for claim in (first, second, workers[1], again):
        claim.release()


async def test_serve_with_workers_writes_a_chain_each_and_verifies(
    demo_systems: DemoSystems, tmp_path: Path, c360: Any
) -> None:
    import socket as sockets

    with sockets.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config, data = write_config(
        demo_systems, tmp_path, {"server.port": port, "audit.chain": "multi"}
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config),
        "--workers",
        "2",
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {sales_token(data)}", "content-type": "application/json"}
    body = orjson.dumps({"query": "{ customers(first: 2) { edges { node { name } } } }"})
    statuses: list[int] = []

    async def client() -> None:
        # A connection per request: the kernel spreads them over both workers.
        for _ in range(12):
            async with (
                aiohttp.ClientSession() as http,
                http.post(url + "/graphql", data=body, headers=headers) as reply,
            ):
                statuses.append(reply.status)

    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(60):
            ready = 0
            while ready < 2:  # both workers up (each answers /readyz once synced)
                try:
                    async with http.get(url + "/readyz") as answer:
                        ready = ready + 1 if answer.status == 200 else 0
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.3)
        await asyncio.gather(*(client() for _ in range(8)))
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
    assert statuses == [200] * 96
    written = [orjson.loads(line) for line in (tmp_path / "access.jsonl").read_bytes().splitlines()]
    chains = {r["chain"] for r in written}
    assert chains == {"multi-w1", "multi-w2"}, chains  # both workers served, each its chain
    assert len(written) == 96
    for name in chains:
        assert [r["seq"] for r in written if r["chain"] == name] == list(
            range(1, sum(1 for r in written if r["chain"] == name) + 1)
        )
    code, out, err = await c360("audit", "verify", "--config", str(config))
    assert code == 0, err
    assert "intact: 96 records in 2 chain(s)" in out


# -- checkpoints -------------------------------------------------------------------------


async def test_the_writer_checkpoints_its_chain_and_resumes_its_tree(
    tmp_path: Path, c360: Any
) -> None:
    key = new_key()
    audit = audit_table(tmp_path, key, checkpoint_every=5)
    written = await write_records(tmp_path, audit, [record(n) for n in range(1, 13)])
    directory = tmp_path / "checkpoints"
    stored = sorted(directory.glob("checkpoint-*.json"))
    sizes = sorted(orjson.loads(p.read_bytes())["chains"]["gw"]["size"] for p in stored)
    assert sizes[-1] == 12 and 5 in sizes  # every 5 records, and when it stops
    assert written.checkpoints_written == len(stored)
    assert sorted(p.name for p in (tmp_path / "witness").iterdir()) == [p.name for p in stored]
    first = min(stored, key=lambda p: orjson.loads(p.read_bytes())["chains"]["gw"]["size"])
    # A restart resumes the tree from the newest checkpoint, not from the first record.
    await write_records(tmp_path, audit, [record(n) for n in range(13, 16)])
    config = write_audit_config(tmp_path, audit)
    code, out, err = await c360(
        "audit", "verify", "--config", str(config), "--checkpoint", "latest"
    )
    assert code == 0, err
    assert "matches checkpoint" in out and "gw: 15" in out
    code, out, err = await c360(
        "audit", "prove", "--config", str(config), "--from", str(first), "--to", "latest"
    )
    assert code == 0, err
    proof_file = tmp_path / "consistency.json"
    proof_file.write_text(out)
    key_file = tmp_path / "checkpoint.pem"
    key_file.write_bytes(public_pem(key))
    checked = verifier(str(proof_file), "--public-key", str(key_file))
    assert checked.returncode == 0, checked.stdout
    assert b"OK: " in checked.stdout and b"gw 5->15" in checked.stdout


@pytest.fixture
async def signed_log(tmp_path: Path, c360: Any) -> dict[str, Any]:
    """15 records of chain gw; a checkpoint at 12 (`early`) and one at 15 (`late`)."""
    key = new_key()
    audit = audit_table(tmp_path, key)
    config = write_audit_config(tmp_path, audit)
    await write_records(tmp_path, audit, [record(n) for n in range(1, 13)])
    code, out, err = await c360("audit", "checkpoint", "--config", str(config))
    assert code == 0, err
    early = Path(out.split()[1].rstrip(":"))
    await write_records(tmp_path, audit, [record(n) for n in range(13, 16)])
    code, out, err = await c360("audit", "checkpoint", "--config", str(config))
    assert code == 0, err
    late = Path(out.split()[1].rstrip(":"))
    log_file = tmp_path / "log" / "access.jsonl"
    return {"config": config, "key": key, "early": early, "late": late, "log": log_file}


def _attacks(records: list[dict[str, Any]]) -> dict[str, tuple[bytes, str]]:
    """What someone with write access to the log (15 records, a checkpoint at 12) can do,
    and the name verify gives it."""

    def dump(items: list[dict[str, Any]], end: bytes = b"\n") -> bytes:
        return b"\n".join(orjson.dumps(r) for r in items) + end

    edited = [dict(r) for r in records]
    edited[4]["outcome"] = "error"
    reordered = [*records[:3], records[4], records[3], *records[5:]]
    rewritten = [{k: v for k, v in r.items()} for r in records]
    rewritten[4]["subject"] = "mallory"
    inserted = [*records[:5], record(999), *records[5:]]
    deleted = [*records[:4], *records[5:]]
    forged = reseal([record(900 + n, "2026-11-25T08:00:00.000Z") for n in range(3)], "gw-old")
    return {
        "edited": (dump(edited), "edited: content does not match its hash"),
        "reordered": (dump(reordered), "reordered: expected seq 4, found 5"),
        "rewritten": (dump(reseal(rewritten)), "CHECKPOINT chain gw: rewritten:"),
        "inserted": (
            dump(reseal(inserted)),
            "CHECKPOINT chain gw: inserted: the chain verifies but not its first 12 records: "
            "1 record(s) were inserted",
        ),
        "deleted": (
            dump(reseal(deleted)),
            "CHECKPOINT chain gw: deleted: the chain verifies but not its first 12 records: "
            "1 record(s) were deleted",
        ),
        "forged": (dump([*records, *forged]), "CHECKPOINT chain gw-old: forged:"),
        "truncated": (dump(records[:10]), "CHECKPOINT chain gw: truncated: "),
        "torn": (dump(records[:11]) + orjson.dumps(records[11]), "records 12-12 were removed"),
    }


@pytest.mark.parametrize(
    "attack",
    ["edited", "reordered", "rewritten", "inserted", "deleted", "forged", "truncated", "torn"],
)
async def test_verify_against_a_checkpoint_names_each_tampering(
    signed_log: dict[str, Any], c360: Any, attack: str
) -> None:
    config, log_file = signed_log["config"], signed_log["log"]
    code, out, err = await c360(
        "audit", "verify", "--config", str(config), "--checkpoint", str(signed_log["early"])
    )
    assert code == 0, err
    assert "matches checkpoint" in out and "gw: 12" in out
    records = lines_of(log_file)
    content, named = _attacks(records)[attack]
    log_file.write_bytes(content)
    # The chain alone passes a rewrite with recomputed hashes; the checkpoint does not.
    code, out, err = await c360(
        "audit", "verify", "--config", str(config), "--checkpoint", str(signed_log["early"])
    )
    assert code == 1
    assert named in err, err
    assert "Traceback" not in err
    assert all(line.startswith(("BROKEN ", "CHECKPOINT ")) for line in err.splitlines()), err


async def test_a_checkpoint_must_be_signed_by_a_configured_key(
    signed_log: dict[str, Any], c360: Any, tmp_path: Path
) -> None:
    config, early = signed_log["config"], signed_log["early"]
    checkpoint = orjson.loads(early.read_bytes())
    checkpoint["chains"]["gw"]["size"] = 11  # a checkpoint "moved back" to hide a deletion
    forged = tmp_path / "forged.json"
    forged.write_bytes(orjson.dumps(checkpoint))
    code, _, err = await c360(
        "audit", "verify", "--config", str(config), "--checkpoint", str(forged)
    )
    assert code == 1
    assert err.strip() == (
        f"c360: checkpoint forged.json: its signature does not verify with key "
        f"{checkpoint['key_id']!r}: it was altered or forged"
    )
    other = write_audit_config(tmp_path, audit_table(tmp_path, new_key()), "other.toml")
    code, _, err = await c360("audit", "verify", "--config", str(other), "--checkpoint", str(early))
    assert code == 1 and len(err.splitlines()) == 1
    assert "which is not one of audit.checkpoint_key" in err


async def test_checkpoint_keys_rotate_first_signs_all_verify_and_keys_status_names_them(
    signed_log: dict[str, Any], c360: Any, tmp_path: Path
) -> None:
    old = signed_log["key"]
    new = new_key()
    pem = tmp_path / "new-key.pem"
    pem.write_bytes(
        Ed25519PrivateKey.from_private_bytes(base64.b64decode(new)).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rotated = write_audit_config(
        tmp_path,
        audit_table(tmp_path, {"cp2": "new-key.pem", "cp1": old}),
        "rotated.toml",
    )
    early = signed_log["early"]
    code, out, err = await c360(
        "audit", "verify", "--config", str(rotated), "--checkpoint", str(early)
    )
    assert code == 0, err  # signed by the old key, which still verifies
    code, out, err = await c360("audit", "checkpoint", "--config", str(rotated))
    assert code == 0 and "signed by cp2" in out
    code, out, _ = await c360("audit", "public-key", "--config", str(rotated))
    assert out.encode() == public_pem(new)
    text = await c360("keys", "status", "--config", str(rotated), "--json")
    rows = {row["id"]: row for row in map(orjson.loads, text[1].splitlines())}
    assert rows["audit.checkpoint_key.cp2"]["use"] == "access-log checkpoints (signs and verifies)"
    assert rows["audit.checkpoint_key.cp1"]["use"] == "access-log checkpoints (verifies)"
    plain = await c360("keys", "status", "--config", str(signed_log["config"]))
    assert "audit.checkpoint_key.ed25519-" in plain[1]
    for secret in (old, new, pem.read_text().splitlines()[1]):
        assert secret not in text[1] + text[2] + plain[1] + plain[2]


def test_checkpoint_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"audit\.checkpoint_dir: needs audit\.checkpoint_key"):
        parse_audit({"checkpoint_dir": "x"}, tmp_path)
    with pytest.raises(ConfigError, match=r"audit\.checkpoint_key: a file path or a base64"):
        parse_audit({"checkpoint_key": "not-a-key"}, tmp_path)
    with pytest.raises(ConfigError, match=r"audit\.checkpoint_every"):
        parse_audit({"checkpoint_key": new_key(), "checkpoint_every": -1}, tmp_path)
    with pytest.raises(ConfigError, match=r"audit\.retention_days"):
        parse_audit({"retention_days": "30"}, tmp_path)


# -- proofs ------------------------------------------------------------------------------


def test_the_standalone_verifier_imports_nothing_of_c360() -> None:
    tree = ast.parse(VERIFIER.read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"argparse", "base64", "hashlib", "json", "sys", "pathlib", "cryptography"}


async def test_an_inclusion_proof_checks_without_the_gateway(
    signed_log: dict[str, Any], c360: Any, tmp_path: Path
) -> None:
    config = signed_log["config"]
    key_file = tmp_path / "checkpoint.pem"
    key_file.write_bytes(public_pem(signed_log["key"]))
    code, out, err = await c360(
        "audit", "prove", "--config", str(config), "--request-id", "req-0007"
    )
    assert code == 0, err
    proof = orjson.loads(out)
    [part] = proof["proofs"]
    assert (part["chain"], part["index"], part["tree_size"]) == ("gw", 6, 15)  # the latest
    assert orjson.loads(part["record"])["request_id"] == "req-0007"
    checked = verifier("-", "--public-key", str(key_file), stdin=out.encode())
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.startswith(b"OK: request req-0007 (gw seq 7) is in the log")
    code, out, _ = await c360(
        "audit", "prove", "--config", str(config), "--request-id", "req-0007",
        "--checkpoint", str(signed_log["early"]),
    )  # fmt: skip
    assert orjson.loads(out)["proofs"][0]["tree_size"] == 12
    # Anything changed in the proof, or another key, and the tool says so.
    tampered = dict(proof, proofs=[dict(part, record=part["record"].replace("alice", "bob"))])
    wrong_path = dict(proof, proofs=[dict(part, audit_path=part["audit_path"][::-1])])
    other_key = tmp_path / "other.pem"
    other_key.write_bytes(public_pem(new_key()))
    for bad, key in ((tampered, key_file), (wrong_path, key_file), (proof, other_key)):
        checked = verifier("-", "--public-key", str(key), stdin=orjson.dumps(bad))
        assert checked.returncode == 1 and checked.stdout.startswith(b"FAILED: ")
    code, _, err = await c360("audit", "prove", "--config", str(config), "--request-id", "nope")
    assert code == 1 and err.strip() == "c360: no record of request nope in the log"


async def test_a_rewrite_between_checkpoints_cannot_be_proven_consistent(
    signed_log: dict[str, Any], c360: Any
) -> None:
    config, log_file = signed_log["config"], signed_log["log"]
    early, late = str(signed_log["early"]), str(signed_log["late"])
    code, out, err = await c360(
        "audit", "prove", "--config", str(config), "--from", early, "--to", late
    )
    assert code == 0, err
    assert orjson.loads(out)["proofs"]["gw"]["first_size"] == 12
    records = lines_of(log_file)
    records[2]["outcome"] = "error"
    write_lines(log_file, reseal(records))
    code, _, err = await c360(
        "audit", "prove", "--config", str(config), "--from", early, "--to", late
    )
    assert code == 1
    assert "the log no longer matches the checkpoint" in err and len(err.splitlines()) == 1


# -- retention ---------------------------------------------------------------------------


def _dated(day: int, n: int) -> dict[str, Any]:
    return record(n, f"2026-11-{day:02d}T10:00:{n % 60:02d}.000Z")


async def test_prune_keeps_what_remains_verifiable(tmp_path: Path, c360: Any) -> None:
    key = new_key()
    audit = audit_table(tmp_path, key, max_bytes=4096, checkpoint_every=1000)
    config = write_audit_config(tmp_path, audit)
    # Two chains (two instances), three days; files rotate every ~12 records.
    await write_records(tmp_path, audit, [_dated(1 + n // 10, n) for n in range(30)])
    other = dict(audit, chain="gw-b")
    await write_records(tmp_path, other, [_dated(1, 100 + n) for n in range(5)])
    log_dir = tmp_path / "log"
    assert len(list(log_dir.glob("access*.jsonl"))) > 2
    code, out, err = await c360("audit", "checkpoint", "--config", str(config))
    before = Path(out.split()[1].rstrip(":"))
    code, out, err = await c360("audit", "prune", "--config", str(config), "--before", "2026-11-02")
    assert code == 0, err
    assert "pruned 15 records dated before 2026-11-02T00:00:00+00:00" in out
    assert "gw: seq 1-10 removed, kept from 11" in out and "gw-b: seq 1-5 removed" in out
    kept = [r for p in sorted(log_dir.glob("access*.jsonl")) for r in lines_of(p)]
    assert sorted(r["seq"] for r in kept if r["chain"] == "gw") == list(range(11, 31))
    assert not [r for r in kept if r["chain"] == "gw-b"]
    assert not any(r["ts"] < "2026-11-02" for r in kept)
    for checkpoint in ("latest", str(before), None):  # the cut, and one from before the prune
        args = ["--checkpoint", checkpoint] if checkpoint else []
        code, out, err = await c360("audit", "verify", "--config", str(config), *args)
        assert code == 0, err
        assert "start at their signed cut (gw after seq 10, gw-b after seq 5)" in out
    # The writers continue after the cut, even a chain pruned to nothing.
    await write_records(tmp_path, audit, [_dated(4, 40)])
    await write_records(tmp_path, other, [_dated(4, 41)])
    code, out, err = await c360("audit", "verify", "--config", str(config))
    assert code == 0, err
    assert "(gw: 31, gw-b: 6)" in out
    code, out, err = await c360(
        "audit", "prove", "--config", str(config), "--request-id", "req-0025"
    )
    assert code == 0, err
    key_file = tmp_path / "checkpoint.pem"
    key_file.write_bytes(public_pem(key))
    assert verifier("-", "--public-key", str(key_file), stdin=out.encode()).returncode == 0
    code, _, err = await c360("audit", "prove", "--config", str(config), "--request-id", "req-0003")
    assert code == 1 and "no record of request req-0003" in err
    # An edit after the prune is still seen, and so is a record put back before the cut.
    head = log_dir / "access.jsonl"
    records = lines_of(head)
    records[0]["outcome"] = "error"
    write_lines(head, records)
    code, _, err = await c360("audit", "verify", "--config", str(config))
    assert code == 1 and "edited: content does not match its hash" in err
    records[0]["outcome"] = "ok"
    write_lines(head, records)
    cut_file = log_dir / "access.cut.json"
    cut = orjson.loads(cut_file.read_bytes())
    cut["chains"]["gw"]["size"] = 9  # claim the cut was earlier: an unsigned change
    cut_file.write_bytes(orjson.dumps(cut))
    code, _, err = await c360("audit", "verify", "--config", str(config))
    assert code == 1 and "BROKEN cut:" in err and "it was altered or forged" in err


async def test_prune_uses_retention_days_and_refuses_a_log_that_does_not_verify(
    tmp_path: Path, c360: Any
) -> None:
    audit = audit_table(tmp_path, new_key(), retention_days=30)
    config = write_audit_config(tmp_path, audit)
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).isoformat()
    await write_records(tmp_path, audit, [record(1, old), record(2, old), record(3)])
    log_file = tmp_path / "log" / "access.jsonl"
    original = log_file.read_bytes()
    records = lines_of(log_file)
    records[2]["outcome"] = "error"
    write_lines(log_file, records)
    code, _, err = await c360("audit", "prune", "--config", str(config))
    assert code == 1 and "the log does not verify" in err and "nothing pruned" in err
    log_file.write_bytes(original)
    code, out, err = await c360("audit", "prune", "--config", str(config))
    assert code == 0, err
    assert "pruned 2 records" in out
    code, out, err = await c360("audit", "verify", "--config", str(config))
    assert code == 0 and "(gw: 3)" in out


@pytest.mark.postgres
async def test_prune_and_checkpoints_on_postgresql(
    tmp_path: Path, c360: Any, postgres_dsn: str
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    chain = "evidence-" + uuid.uuid4().hex[:8]
    audit = {
        "sink": "postgresql",
        "dsn": postgres_dsn,
        "chain": chain,
        "checkpoint_key": new_key(),
        "checkpoint_dir": "checkpoints",
        "checkpoint_every": 5,
    }
    config = write_audit_config(tmp_path, audit)
    engine = create_async_engine(postgres_dsn)
    try:
        await write_records(tmp_path, audit, [_dated(1 + n // 4, n) for n in range(12)])
        # The writer's tree (records as written) is the tree of the rows as read back.
        code, out, err = await c360(
            "audit", "verify", "--config", str(config), "--checkpoint", "latest"
        )
        assert code == 0, err
        assert "scope chain, signed by ed25519-" in out and f"{chain}: 12" in out
        code, out, err = await c360(
            "audit", "checkpoint", "--config", str(config), "--chain", chain
        )
        assert code == 0, err
        code, out, err = await c360(
            "audit", "prune", "--config", str(config), "--before", "2026-11-02", "--chain", chain
        )
        assert code == 0, err
        assert f"{chain}: seq 1-4 removed, kept from 5" in out
        async with engine.connect() as connection:
            seqs = await connection.scalars(
                text("SELECT seq FROM c360_access_log WHERE chain = :c ORDER BY seq"), {"c": chain}
            )
            assert list(seqs) == list(range(5, 13))
        for checkpoint in ("latest", None):
            args = ["--checkpoint", checkpoint] if checkpoint else []
            code, out, err = await c360("audit", "verify", "--config", str(config), *args)
            assert code == 0, err
            assert f"{chain} after seq 4" in out
        await write_records(tmp_path, audit, [_dated(5, 50)])  # continues at 13
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE c360_access_log SET record = jsonb_set(record, '{outcome}', "
                    "'\"error\"') WHERE chain = :c AND seq = 6"
                ),
                {"c": chain},
            )
        code, _, err = await c360("audit", "verify", "--config", str(config))
        assert code == 1
        assert f"BROKEN chain {chain} at seq 6" in err and "edited:" in err
    finally:
        async with engine.begin() as connection:  # the shared table stays intact
            for table in ("c360_access_log", "c360_access_customer", "c360_access_cut"):
                await connection.execute(
                    text(f"DELETE FROM {table} WHERE chain = :c"), {"c": chain}
                )
        await engine.dispose()


# -- a sink that stalls ----------------------------------------------------------------


class StallingProxy:
    """TCP in front of the real PostgreSQL that can stop passing bytes (a primary that
    stops answering: connections stay open, nothing comes back) and start again."""

    def __init__(self, port: int = 5432) -> None:
        self.port = port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> StallingProxy:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.address = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        for source, target in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, target))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self.flowing.wait()
                target.write(data)
                await target.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            target.close()


@pytest.mark.postgres
@pytest.mark.parametrize("fail_closed", [False, True])
async def test_a_stalled_postgresql_sink_spills_within_the_bound_and_loses_nothing_older(
    demo_systems: DemoSystems, tmp_path: Path, postgres_dsn: str, c360: Any, fail_closed: bool
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    chain = "stall-" + uuid.uuid4().hex[:8]
    bound_s = 0.2
    async with StallingProxy() as proxy:
        dsn = postgres_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.address}")
        config, data = write_config(
            demo_systems,
            tmp_path,
            {
                "audit.sink": "postgresql",
                "audit.dsn": dsn,
                "audit.chain": chain,
                "audit.write_timeout_ms": int(bound_s * 1000),
                "audit.fail_closed": fail_closed,
            },
        )
        process, url = await start_serve(config)
        headers = {
            "authorization": f"Bearer {sales_token(data)}",
            "content-type": "application/json",
        }
        body = orjson.dumps({"query": "{ customers(first: 1) { edges { node { id } } } }"})
        answered: list[tuple[float, str]] = []
        stop = asyncio.Event()

        async def client() -> None:
            async with aiohttp.ClientSession() as http:
                while not stop.is_set():
                    try:
                        async with http.post(url + "/graphql", data=body, headers=headers) as r:
                            await r.read()
                            if r.status == 200:
                                answered.append((time.monotonic(), r.headers["x-request-id"]))
                    except aiohttp.ClientError:
                        return

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(0.5)
        proxy.flowing.clear()  # the database stops answering
        stalled_at = time.monotonic()
        await asyncio.sleep(1.5)
        process.send_signal(signal.SIGKILL)  # a crash during the stall
        killed_at = time.monotonic()
        await process.wait()
        stop.set()
        await asyncio.gather(*clients)
        spill = tmp_path / f"access-spill-{chain}.jsonl"
        assert spill.exists()  # records went to local disk while the database stalled
        proxy.flowing.set()
        process, url = await start_serve(config)  # replays the spill
        engine = create_async_engine(postgres_dsn)
        try:
            async with asyncio.timeout(20):
                while spill.exists():  # noqa: ASYNC110 - the writer replays on its own
                    await asyncio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            await process.wait()
            async with engine.connect() as connection:
                rows = await connection.execute(
                    text(
                        "SELECT seq, request_id FROM c360_access_log WHERE chain = :c ORDER BY seq"
                    ),
                    {"c": chain},
                )
                found = list(rows)
            code, _, err = await c360("audit", "verify", "--config", str(config))
        finally:
            async with engine.begin() as connection:
                for table in ("c360_access_log", "c360_access_customer"):
                    await connection.execute(
                        text(f"DELETE FROM {table} WHERE chain = :c"), {"c": chain}
                    )
            await engine.dispose()
    assert code == 0, err
    assert [seq for seq, _ in found] == list(range(1, len(found) + 1))  # in order, no gap
    stored = {request_id for _, request_id in found}
    during = [rid for moment, rid in answered if moment > stalled_at]
    assert len(during) > 20  # requests were answered during the stall
    # Every request answered more than the bound before the crash has its record; with
    # fail_closed, every answered request.
    margin = 0.0 if fail_closed else bound_s + 0.1
    required = [rid for moment, rid in answered if moment < killed_at - margin]
    missing = [rid for rid in required if rid not in stored]
    assert not missing, f"{len(missing)} of {len(required)} answered requests lost"


async def test_a_jsonl_write_past_its_time_is_spilled_and_never_written_twice(
    tmp_path: Path,
) -> None:
    import dataclasses

    settings, sink = parse_audit(
        {"path": "access.jsonl", "chain": "gw", "write_timeout_ms": 50}, tmp_path
    )
    access_log = AccessLog(dataclasses.replace(settings, retry_interval_s=0.02), sink)
    await access_log.start()
    real_write = sink.write
    slow = [True]

    async def slow_write(batch: Any) -> None:
        if slow.pop() if slow else False:
            await asyncio.sleep(0.3)  # past the timeout; then it lands all the same
        await real_write(batch)

    sink.write = slow_write  # type: ignore[method-assign]
    for n in range(1, 7):
        access_log.record(record(n))
        await asyncio.sleep(0.02)
    assert access_log.spilling and access_log.spilled >= 1  # spilled within the bound
    async with asyncio.timeout(5):
        while access_log.spilling:  # noqa: ASYNC110 - the writer replays on its own
            await asyncio.sleep(0.02)
    await access_log.stop()
    written = lines_of(tmp_path / "access.jsonl")
    assert [r["seq"] for r in written] == [1, 2, 3, 4, 5, 6]  # the late write not doubled


async def test_the_checkpoint_key_rotates_on_reload_without_a_restart(
    demo_systems: DemoSystems, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import tomllib

    from harness import running_gateway

    old, new = new_key(), new_key()
    overrides = {
        "audit.checkpoint_key": {"cp1": old},
        "audit.checkpoint_dir": "checkpoints",
        "audit.checkpoint_every": 1,
    }
    query = "{ customers(first: 1) { edges { node { id } } } }"
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        await gateway.query(query)
        await gateway.gateway.access_log.flush()
        path = gateway.gateway.config_path
        assert path is not None
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        data["audit"]["checkpoint_key"] = {"cp2": new, "cp1": old}
        path.write_text(to_toml(data), encoding="utf-8")
        with caplog.at_level(logging.WARNING):
            assert gateway.gateway.reload()
        await gateway.query(query)
        await gateway.gateway.access_log.flush()
        await asyncio.sleep(0.1)  # the checkpoint is written off the writer's path
    restart = [r for r in caplog.records if r.getMessage() == "reload: restart to apply"]
    assert not restart, [r.__dict__.get("sections") for r in restart]
    signers = [
        orjson.loads(p.read_bytes())["key_id"]
        for p in sorted((tmp_path / "checkpoints").glob("checkpoint-*.json"))
    ]
    assert signers[0] == "cp1" and signers[-1] == "cp2"


# -- to the SIEM --------------------------------------------------------------------------


@pytest.fixture
def logs_collector() -> Iterator[tuple[str, list[bytes]]]:
    """A stand-in OTLP/HTTP collector: the bodies POSTed to /v1/logs."""
    import http.server
    import threading

    received: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path == "/v1/logs":
                received.append(body)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


async def test_access_records_and_alerts_go_to_opentelemetry_as_log_records(
    demo_systems: DemoSystems,
    tmp_path: Path,
    logs_collector: tuple[str, list[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from harness import running_gateway

    endpoint, received = logs_collector
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    query = "{ customers(first: 3) { edges { node { id name email phone nationalId } } } }"
    overrides = {"audit.alerts.bulk_customers": 2}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        reply = await gateway.query(query)
        await gateway.query(query, headers={"authorization": "Bearer nonsense"})
        await gateway.gateway.access_log.flush()
    exported = []
    for body in received:
        request = ExportLogsServiceRequest.FromString(body)
        for resource in request.resource_logs:
            for scope in resource.scope_logs:
                exported.extend(scope.log_records)
    by_event = {r.event_name: r for r in exported}
    assert sorted(r.event_name for r in exported) == ["c360.access", "c360.access", "c360.alert"]
    assert by_event["c360.alert"].severity_text == "WARN"
    attrs = {a.key: a.value for a in exported[0].attributes}
    assert attrs["c360.subject"].string_value == "alice"
    assert attrs["c360.request_id"].string_value == reply.headers["x-request-id"]
    assert [v.string_value for v in attrs["c360.roles"].array_value.values] == ["sales"]
    assert "c360.hash" in attrs and "c360.seq" in attrs and "c360.fields" in attrs
    # The record's fields, never a value of a customer's field.
    text = b"".join(received)
    for edge in reply.data["customers"]["edges"]:
        for field in ("name", "email", "phone", "nationalId"):
            value = edge["node"][field]
            if value and field != "nationalId":  # masked or denied values are not raw anyway
                assert value.encode() not in text


def test_content_digest_ignores_where_a_record_sits() -> None:
    sealed = ChainHead("gw").seal(record(1))
    assert content_digest(sealed) == content_digest(record(1))
