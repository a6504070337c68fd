"""The JSONL access log and its spill file encrypted at rest (issue 23 item 8): nothing of
a subject or a customer in clear on disk, and every reader (verify, checkpoint, prove,
prune, search, the console's views, the spill replay) works as on a plain log; keys
rotate; a tampered ciphertext or a missing key is named."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.systems import DemoSystems
from gateway.audit import encryption
from gateway.audit.commands import verify_log
from gateway.audit.encryption import LogKeyMissing
from gateway.audit.log import AccessLog
from gateway.audit.settings import parse_audit
from gateway.audit.sinks import AccessQuery, JsonlSink, SinkUnavailable
from gateway.console.jsonl_views import JsonlViews
from gateway.demo import to_toml
from gateway.errors import ConfigError
from harness import running_gateway, write_records

PAGE = """query Page($n: Int) { customers(first: $n) { edges { node { id name email } } } }"""


def checkpoint_key() -> str:
    raw = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def audit_table(**more: Any) -> dict[str, Any]:
    return {
        "path": "log/access.jsonl",
        "chain": "gw",
        "encrypt": True,
        "encryption_key_dir": "keys/access",
        "checkpoint_key": checkpoint_key(),
        "checkpoint_dir": "checkpoints",
        **more,
    }


def write_config(tmp_path: Path, audit: dict[str, Any]) -> Path:
    data = {
        "identity": {"key": "x" * 32},
        "auth": {"issuer": "i", "audience": "a", "hs256": {"k": "s" * 32}},
        "policies": {"hash_key": "h" * 16},
        "sources": {"s": {"kind": "rest", "base_url": "http://127.0.0.1:1", "entities": {}}},
        "audit": audit,
    }
    path = tmp_path / "c360.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def record(n: int, subject: str = "zhang.wei@example.com") -> dict[str, Any]:
    customer = f"cus_secret{n:08d}"
    return {
        "kind": "access",
        "ts": f"2026-11-25T09:{n // 60:02d}:{n % 60:02d}.000Z",
        "request_id": f"req-{n:04d}",
        "subject": subject,
        "roles": ["sales"],
        "outcome": "ok",
        "status": 200,
        "customers": [customer],
        "fields": {customer: {"email": "allow"}},
    }


def envelopes(path: Path) -> list[dict[str, Any]]:
    """The lines of a file, or of a log's every file (oldest first)."""
    files = JsonlSink(path).files() if path.name == "access.jsonl" else [path]
    return [orjson.loads(line) for file in files for line in file.read_bytes().splitlines()]


async def test_an_encrypted_log_holds_nothing_in_clear_and_verifies_searches_proves(
    tmp_path: Path, c360: Any
) -> None:
    audit = audit_table()
    await write_records(tmp_path, audit, [record(n) for n in range(1, 6)])
    config = write_config(tmp_path, audit)
    raw = (tmp_path / "log" / "access.jsonl").read_bytes()
    for secret in (b"zhang.wei", b"cus_secret", b"sales", b"req-0003", b"email"):
        assert secret not in raw
    lines = envelopes(tmp_path / "log" / "access.jsonl")
    assert [(e["enc"], e["kid"], e["chain"], e["seq"]) for e in lines] == [
        ("aes-256-gcm", "k1", "gw", n) for n in range(1, 6)
    ]
    key_file = tmp_path / "keys" / "access" / "k1.json"
    assert key_file.stat().st_mode & 0o777 == 0o600  # made on first use, for its owner only

    code, out, err = await c360("audit", "verify", "--config", str(config))
    assert (code, err) == (0, "")
    assert "intact: 5 records in 1 chain(s) (gw: 5)" in out
    code, out, _ = await c360(
        "audit", "search", "--config", str(config), "--customer", "cus_secret00000003", "--json"
    )
    assert code == 0
    [found] = [orjson.loads(line) for line in out.splitlines()]
    assert found["subject"] == "zhang.wei@example.com" and found["seq"] == 3
    assert (await c360("audit", "checkpoint", "--config", str(config)))[0] == 0
    code, out, _ = await c360("audit", "prove", "--config", str(config), "--request-id", "req-0004")
    assert code == 0
    proof = orjson.loads(out)
    assert proof["proofs"][0]["index"] == 3
    code, out, _ = await c360("audit", "verify", "--config", str(config), "--checkpoint", "latest")
    assert code == 0 and "matches checkpoint" in out
    # The console's JSONL views read through the same decoding.
    _, sink = parse_audit(audit, tmp_path)
    assert isinstance(sink, JsonlSink)
    seen = await JsonlViews(sink).find("gw", 2)
    assert seen is not None and seen["request_id"] == "req-0002"


async def test_a_rotated_key_seals_new_lines_old_ones_still_read_and_prune_retires_it(
    tmp_path: Path, c360: Any
) -> None:
    audit = audit_table()
    config = write_config(tmp_path, audit)
    await write_records(tmp_path, audit, [record(n) for n in range(1, 4)])
    code, out, _ = await c360("keys", "rotate", "audit.encryption_key", "--config", str(config))
    assert code == 0 and "audit.encryption_key.k2" in out
    await write_records(tmp_path, audit, [record(n) for n in range(4, 7)])
    log_file = tmp_path / "log" / "access.jsonl"
    assert [e["kid"] for e in envelopes(log_file)] == ["k1"] * 3 + ["k2"] * 3
    code, out, _ = await c360("audit", "verify", "--config", str(config))
    assert code == 0 and "intact: 6 records" in out

    code, out, err = await c360("keys", "status", "--config", str(config), "--json")
    rows = {row["id"]: row for row in map(orjson.loads, out.splitlines())}
    assert rows["audit.encryption_key.k1"]["age_days"] == 0  # the key file knows its date
    assert "decrypts older lines" in rows["audit.encryption_key.k1"]["use"]
    assert "encrypts new lines" in rows["audit.encryption_key.k2"]["use"]
    secrets = [orjson.loads(p.read_bytes())["key"] for p in (tmp_path / "keys/access").glob("k*")]
    assert not any(secret in out + err for secret in secrets)  # never the key itself

    # Prune what k1 sealed; then k1 can go, and the rest still verifies and searches.
    code, out, _ = await c360(
        "audit", "prune", "--config", str(config), "--before", "2026-11-25T09:00:04+00:00"
    )
    assert code == 0, out
    assert [e["kid"] for e in envelopes(log_file)] == ["k2"] * 3
    assert all(b"cus_secret" not in p.read_bytes() for p in log_file.parent.glob("*.jsonl"))
    (tmp_path / "keys" / "access" / "k1.json").unlink()
    code, out, err = await c360("audit", "verify", "--config", str(config))
    assert code == 0, err
    assert "pruned: the chains start at their signed cut (gw after seq 3)" in out
    code, out, _ = await c360("audit", "search", "--config", str(config), "--json")
    assert [orjson.loads(line)["seq"] for line in out.splitlines()] == [6, 5, 4]


async def test_a_tampered_ciphertext_is_named_by_verify_and_a_missing_key_is_one_line(
    tmp_path: Path, c360: Any
) -> None:
    audit = audit_table()
    config = write_config(tmp_path, audit)
    await write_records(tmp_path, audit, [record(n) for n in range(1, 5)])
    log_file = tmp_path / "log" / "access.jsonl"
    original = log_file.read_bytes()
    lines = envelopes(log_file)

    def rewrite(changed: list[dict[str, Any]]) -> None:
        log_file.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in changed))

    sealed = bytearray(base64.b64decode(lines[1]["ct"]))
    sealed[10] ^= 1  # one bit of the ciphertext
    rewrite([lines[0], {**lines[1], "ct": base64.b64encode(bytes(sealed)).decode()}, *lines[2:]])
    code, _, err = await c360("audit", "verify", "--config", str(config))
    assert code == 1
    assert (
        "BROKEN chain gw at seq 2 (access.jsonl:2): tampered: the ciphertext does not "
        "authenticate under key k1" in err
    )
    # Swapping two ciphertexts between their envelopes: neither opens in the other's place.
    swapped = [lines[0], {**lines[1], "ct": lines[2]["ct"]}, {**lines[2], "ct": lines[1]["ct"]}]
    rewrite([*swapped, lines[3]])
    code, _, err = await c360("audit", "verify", "--config", str(config))
    assert code == 1
    assert "(access.jsonl:2): tampered" in err and "(access.jsonl:3): tampered" in err
    # Swapping whole lines: each opens, and the chain names the reordering.
    rewrite([lines[0], lines[2], lines[1], lines[3]])
    code, _, err = await c360("audit", "verify", "--config", str(config))
    assert code == 1 and "reordered" in err

    log_file.write_bytes(original)
    (tmp_path / "keys" / "access" / "k1.json").unlink()
    for command in (("audit", "verify"), ("audit", "search"), ("audit", "checkpoint")):
        code, _, err = await c360(*command, "--config", str(config))
        assert code == 1
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "access.jsonl:1: the line is encrypted under key k1" in err


async def test_a_spilled_encrypted_record_is_sealed_on_disk_and_replayed(tmp_path: Path) -> None:
    settings, sink = parse_audit(
        {
            "path": "access.jsonl",
            "chain": "gw",
            "encrypt": True,
            "spill_path": "spill.jsonl",
        },
        tmp_path,
    )
    assert isinstance(sink, JsonlSink)
    access_log = AccessLog(dataclasses.replace(settings, retry_interval_s=0.02), sink)
    await access_log.start()
    real_write = sink.write
    down = [True]

    async def flaky_write(batch: Sequence[Any]) -> None:
        if down[0]:
            raise SinkUnavailable("injected: the disk is gone")
        await real_write(batch)

    sink.write = flaky_write  # type: ignore[method-assign,assignment]
    for n in range(1, 4):
        access_log.record(record(n))
    await access_log.flush()
    spill = tmp_path / "spill.jsonl"
    assert access_log.spilling and spill.exists()
    assert b"cus_secret" not in spill.read_bytes() and b"zhang" not in spill.read_bytes()
    assert [e["kid"] for e in envelopes(spill)] == ["k1"] * 3  # the default key dir's first
    assert (tmp_path / "access-keys" / "k1.json").exists()
    down[0] = False
    async with asyncio.timeout(5):
        while access_log.spilling:  # noqa: ASYNC110 - the writer replays on its own
            await asyncio.sleep(0.02)
    await access_log.stop()
    assert not spill.exists()
    assert [r["seq"] for _, r in sink.lines() if r] == [1, 2, 3]
    assert b"cus_secret" not in (tmp_path / "access.jsonl").read_bytes()
    found = await sink.search(AccessQuery(customer="cus_secret00000002"))
    assert [r["seq"] for r in found] == [2]


async def test_a_plain_log_turned_encrypted_reads_both_and_a_sealed_one_needs_its_keys(
    tmp_path: Path,
) -> None:
    plain = {"path": "access.jsonl", "chain": "gw"}
    await write_records(tmp_path, plain, [record(1), record(2)])
    await write_records(tmp_path, {**plain, "encrypt": True}, [record(3)])
    _, sink = parse_audit({**plain, "encryption_key_dir": "access-keys"}, tmp_path)
    assert isinstance(sink, JsonlSink)  # encrypt off, keys kept to read: a plain sink reads
    assert [r["seq"] for _, r in sink.lines() if r] == [1, 2, 3]
    _, without_keys = parse_audit(plain, tmp_path)
    assert isinstance(without_keys, JsonlSink)
    missing = r"access\.jsonl:3: .* key k1, and no audit\.encryption_key_dir"
    with pytest.raises(LogKeyMissing, match=missing):
        list(without_keys.lines())


async def test_the_gateway_writes_an_encrypted_log_with_no_subject_or_customer_in_clear(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    overrides = {"audit.encrypt": True}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        reply = await gateway.query(
            PAGE, {"n": 5}, headers=gateway.as_role("sales", subject="carol")
        )
        await gateway.gateway.access_log.flush()
        sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink) and not reply.errors
    customers = [edge["node"]["id"] for edge in reply.data["customers"]["edges"]]
    [written] = [r for _, r in sink.lines() if r and r.get("subject") == "carol"]
    assert written["customers"] == customers
    raw = b"".join(path.read_bytes() for path in sink.files())
    assert b"carol" not in raw and b'"sales"' not in raw
    assert not any(customer.encode() in raw for customer in customers)
    assert (tmp_path / "access-keys" / "k1.json").exists()  # beside the config: the data dir


async def test_a_key_file_that_does_not_load_stops_start_up_with_one_line(
    tmp_path: Path,
) -> None:
    settings, sink = parse_audit(audit_table(), tmp_path)
    (tmp_path / "keys" / "access").mkdir(parents=True)
    (tmp_path / "keys" / "access" / "k1.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"audit\.encryption_key_dir: .*k1\.json is not a key"):
        await AccessLog(settings, sink).start()
    (tmp_path / "blocked").write_text("a file where the key directory's parent should be")
    settings, sink = parse_audit(audit_table(encryption_key_dir="blocked/keys"), tmp_path)
    with pytest.raises(ConfigError, match=r"audit\.encryption_key_dir: .*blocked/keys: "):
        await AccessLog(settings, sink).start()


@pytest.mark.parametrize("breakage", ["not a directory", "a key file that does not load"])
async def test_a_key_directory_that_breaks_after_start_never_stops_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, breakage: str
) -> None:
    """Sealing fails in the sink and in the spill alike: the records are counted lost,
    flush() returns, and once the keys are back the writer goes on."""
    monkeypatch.setattr(encryption, "RESCAN_S", 0.0)  # writers look at the directory each time
    settings, sink = parse_audit(audit_table(spill_path="spill.jsonl"), tmp_path)
    assert isinstance(sink, JsonlSink)
    access_log = AccessLog(dataclasses.replace(settings, retry_interval_s=0.02), sink)
    await access_log.start()
    access_log.record(record(1))
    await access_log.flush()
    keys = tmp_path / "keys" / "access"
    saved = (keys / "k1.json").read_bytes()
    if breakage == "not a directory":
        shutil.rmtree(keys)
        keys.write_text("")
    else:
        (keys / "k2.json").write_text("{not json")
    for n in (2, 3):
        access_log.record(record(n))
    async with asyncio.timeout(5):
        await access_log.flush()
    assert access_log.lost == 2 and access_log._writer is not None
    assert not access_log._writer.done()
    if breakage == "not a directory":
        keys.unlink()
        keys.mkdir()
        (keys / "k1.json").write_bytes(saved)
    else:
        (keys / "k2.json").unlink()
    access_log.record(record(4))
    async with asyncio.timeout(5):
        while access_log.spilling:  # noqa: ASYNC110 - the writer replays on its own
            await asyncio.sleep(0.02)
        await access_log.stop()
    assert [r["seq"] for _, r in sink.lines() if r] == [1, 4]  # 2 and 3: lost, and counted


async def test_prune_reads_places_from_envelopes_without_their_keys(tmp_path: Path) -> None:
    audit = audit_table(max_bytes=4096)
    await write_records(tmp_path, audit, [record(n) for n in range(1, 31)])
    log_file = tmp_path / "log" / "access.jsonl"
    assert len(JsonlSink(log_file).files()) > 2
    without_keys = JsonlSink(log_file)  # reads no sealed line: prune needs none
    assert await without_keys.prune({"gw": 12}, None) == 12
    assert [e["seq"] for e in envelopes(log_file)] == list(range(13, 31))


async def test_verify_names_a_tampered_line_while_another_scan_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = audit_table()
    settings, sink = parse_audit(audit, tmp_path)
    assert isinstance(sink, JsonlSink)
    await write_records(tmp_path, audit, [record(n) for n in range(1, 4)])
    log_file = tmp_path / "log" / "access.jsonl"
    lines = envelopes(log_file)
    lines[1]["ct"] = lines[2]["ct"]
    log_file.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in lines))
    scan = sink.scan

    async def scan_beside_another() -> AsyncIterator[Any]:
        async for item in scan():
            yield item
        next(iter(sink.lines()))  # the console starts a scan of its own meanwhile

    sink.scan = scan_beside_another  # type: ignore[method-assign]
    assert await verify_log(sink, settings, None) == 1
    assert "(access.jsonl:2): tampered: the ciphertext does not" in capsys.readouterr().err


async def test_keys_beside_the_log_are_advised_against_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="c360.audit"):
        await write_records(tmp_path, audit_table(), [record(1)])
    advice = [r for r in caplog.records if "same file system" in r.getMessage()]
    assert len(advice) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="c360.audit"):
        await write_records(tmp_path, {"path": "plain.jsonl", "chain": "p"}, [record(1)])
    assert "same file system" not in caplog.text  # nothing sealed: nothing to advise


async def test_a_sink_that_fails_unexpectedly_never_stops_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error a sink was not meant to raise (a bug there), on a write and again on the
    replay, is handled as the sink being unavailable: the batch is spilled and replayed
    once the sink takes it, nothing is lost, the writer runs on."""
    settings, sink = parse_audit(audit_table(spill_path="spill.jsonl"), tmp_path)
    assert isinstance(sink, JsonlSink)
    access_log = AccessLog(dataclasses.replace(settings, retry_interval_s=0.02), sink)
    write = sink.write
    failures = [RuntimeError("a bug in the sink"), RuntimeError("and again, on the replay")]

    async def failing_once(records: Sequence[dict[str, Any]]) -> None:
        if failures:
            raise failures.pop()
        await write(records)

    monkeypatch.setattr(sink, "write", failing_once)
    await access_log.start()
    try:
        access_log.record(record(1))
        access_log.record(record(2))
        async with asyncio.timeout(5):
            await access_log.flush()
            while access_log.spilling:  # noqa: ASYNC110 - the writer replays on its own
                await asyncio.sleep(0.02)
        access_log.record(record(3))
        async with asyncio.timeout(5):
            await access_log.flush()
        assert not failures and access_log.lost == 0
        assert access_log._writer is not None and not access_log._writer.done()
    finally:
        await access_log.stop()
    assert [r["seq"] for _, r in sink.lines() if r] == [1, 2, 3]
