#!/usr/bin/env python3
"""Check a proof from `c360 audit prove` without the gateway or its keys: the checkpoint's
Ed25519 signature against a public key (`c360 audit public-key`), then the RFC 6962 / 9162
inclusion proof (the record is in the log) or consistency proof (the newer checkpoint
extends the older one: nothing before it was rewritten). Python's standard library and
`cryptography` only.

    python tools/verify_proof.py PROOF.json --public-key checkpoint.pem

Prints OK and exits 0, or FAILED: why, and exits 1.
"""

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def signed_by(checkpoint, keys):
    body = {k: v for k, v in checkpoint.items() if k != "signature"}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    for key in keys:
        try:
            key.verify(base64.b64decode(checkpoint["signature"]), data)
            return True
        except Exception:
            continue
    return False


def inclusion_root(leaf, index, size, path):  # RFC 9162 2.1.3.2
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 and index < size else None


def consistent(m, n, first, second, path):  # RFC 9162 2.1.4.2
    if m == n:
        return not path and first == second
    if m == 0 or m > n or not path:
        return m == 0 and not path
    path = ([first] if m & (m - 1) == 0 else []) + path
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first and sr == second


def load_key(path):
    data = Path(path).read_bytes().strip()
    if data.startswith(b"-----BEGIN"):
        return load_pem_public_key(data)
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(data))


def check(proof, keys):
    """The problem with a proof, or None."""
    checkpoints = [proof["checkpoint"]] if "checkpoint" in proof else [proof["from"], proof["to"]]
    for checkpoint in checkpoints:
        if not signed_by(checkpoint, keys):
            return f"checkpoint {checkpoint.get('timestamp')} is not signed by the given key"
    if proof["type"] == "c360.inclusion.v1":
        chains = proof["checkpoint"]["chains"]
        for part in proof["proofs"] or [None]:
            if part is None:
                return "no record in the proof"
            record = json.loads(part["record"])
            leaf = hashlib.sha256(b"\x00" + part["record"].encode()).digest()
            entry = chains.get(part["chain"], {})
            root = inclusion_root(
                leaf,
                part["index"],
                part["tree_size"],
                [bytes.fromhex(h) for h in part["audit_path"]],
            )
            if (
                record.get("request_id") != proof["request_id"]
                or record.get("chain") != part["chain"]
                or record.get("seq") != part["index"] + 1
            ):
                return "the record is not the request's, or not at the index proven"
            if leaf.hex() != part["leaf_hash"] or part["tree_size"] != entry.get("size"):
                return "the leaf or the tree size does not match"
            if root is None or root.hex() != entry.get("root"):
                return f"chain {part['chain']}: the audit path does not lead to the signed root"
        return None
    if proof["type"] == "c360.consistency.v1":
        old, new = proof["from"]["chains"], proof["to"]["chains"]
        for name, entry in old.items():
            part = proof["proofs"].get(name)
            if part is None or name not in new:
                return f"chain {name}: no proof"
            if (part["first_size"], part["second_size"]) != (entry["size"], new[name]["size"]):
                return f"chain {name}: the sizes are not the checkpoints'"
            if not consistent(
                entry["size"],
                new[name]["size"],
                bytes.fromhex(entry["root"]),
                bytes.fromhex(new[name]["root"]),
                [bytes.fromhex(h) for h in part["path"]],
            ):
                return f"chain {name}: the newer checkpoint does not extend the older one"
        return None
    return f"not a c360 proof: {proof.get('type')}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("proof", help="the JSON that `c360 audit prove` printed (- for stdin)")
    parser.add_argument("--public-key", action="append", required=True, help="PEM or base64")
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.proof == "-" else Path(args.proof).read_text()
        proof = json.loads(text)
        problem = check(proof, [load_key(path) for path in args.public_key])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        problem = f"unreadable proof or key ({type(error).__name__}: {error})"
    if problem:
        print(f"FAILED: {problem}")
        return 1
    if proof["type"] == "c360.inclusion.v1":
        where = ", ".join(f"{p['chain']} seq {p['index'] + 1}" for p in proof["proofs"])
        when = proof["checkpoint"]["timestamp"]
        print(f"OK: request {proof['request_id']} ({where}) is in the log as of {when}")
    else:
        sizes = ", ".join(
            f"{name} {part['first_size']}->{part['second_size']}"
            for name, part in proof["proofs"].items()
        )
        print(f"OK: {proof['to']['timestamp']} extends {proof['from']['timestamp']} ({sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
