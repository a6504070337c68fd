"""`c360 identity export / import`: the crosswalk backed up as keyed JSON lines and
restored into an empty store (SQLite and the real PostgreSQL), after which a gateway
serves the same CUIDs, finds the same customers by email, and links nothing again."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from connectors.identity.backup import (
    BackupError,
    export_lines,
    key_check,
    parse_lines,
    read_crosswalk,
)
from connectors.identity.keys import IdentityKeys
from connectors.identity.store import CrosswalkStore, Issue
from demo.people import DemoWorld
from demo.systems import DemoSystems
from gateway.app import Gateway
from gateway.cli import CliError, _identity_backup, build_parser
from gateway.config import parse_config
from gateway.demo import to_toml
from harness import RunningGateway, gateway_config, running_gateway

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Exported:
    file: Path
    cuids: list[str]  # every customer of the crosswalk exported
    by_email: dict[str, str]  # a few persons' emails -> their CUID
    key: bytes


def write_config(systems: DemoSystems, state: Path, dsn: str) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    data = gateway_config(systems, state, {"identity.dsn": dsn, "identity.sync_on_start": False})
    path = state / "c360.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


async def cli(*argv: str) -> int:
    return await _identity_backup(build_parser().parse_args(["identity", *argv]))


@pytest.fixture(scope="module")
async def exported(
    demo_systems: DemoSystems, demo_world: DemoWorld, tmp_path_factory: pytest.TempPathFactory
) -> Exported:
    """A synced crosswalk with a quality run, exported through the command."""
    state = tmp_path_factory.mktemp("source")
    config_path = write_config(demo_systems, state, f"sqlite+aiosqlite:///{state}/identity.db")
    gateway = Gateway(parse_config(gateway_config(demo_systems, state), base_dir=state))
    try:
        await gateway.store.create()
        await gateway.sync()
        await gateway.quality(worst=0)
        persons = [p for p in demo_world.persons if p.sales_ids][:5]
        by_email = {p.email: gateway.identity.find_email(p.email) or "" for p in persons}
        cuids = list(gateway.identity.ordered)
        key = gateway.config.identity.key
    finally:
        await gateway.stop()
    file = state / "crosswalk.jsonl"
    assert await cli("export", str(file), "--config", str(config_path)) == 0
    return Exported(file, cuids, by_email, key)


async def every_cuid(gateway: RunningGateway) -> list[str]:
    cuids: list[str] = []
    cursor = None
    while True:
        reply = await gateway.query(
            "query($after: String) { customers(first: 100, after: $after) "
            "{ edges { node { id } } pageInfo { hasNextPage endCursor } } }",
            {"after": cursor},
        )
        page = reply.data["customers"]
        cuids += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return cuids
        cursor = page["pageInfo"]["endCursor"]


async def restores_and_serves(
    exported: Exported, demo_systems: DemoSystems, state: Path, dsn: str
) -> None:
    config_path = write_config(demo_systems, state, dsn)
    assert await cli("import", str(exported.file), "--config", str(config_path)) == 0
    async with running_gateway(
        demo_systems, state / "gw", {"identity.dsn": dsn, "identity.sync_on_start": False}
    ) as gateway:
        assert await every_cuid(gateway) == exported.cuids
        for email, cuid in exported.by_email.items():
            reply = await gateway.query(
                "query($e: String!) { customerByEmail(email: $e) { id name } }", {"e": email}
            )
            assert reply.data["customerByEmail"]["id"] == cuid
            assert reply.data["customerByEmail"]["name"]  # its records are served too
        # the cursors came back: a sync resumes after the last sales id, links nothing
        report = await gateway.gateway.sync()
        assert report.linked == 0 and report.systems["sales"].scanned == 0
        assert len(await gateway.gateway.store.quality_runs()) == 1


async def test_an_import_into_sqlite_serves_the_same_cuids(
    exported: Exported, demo_systems: DemoSystems, tmp_path: Path
) -> None:
    await restores_and_serves(
        exported, demo_systems, tmp_path, f"sqlite+aiosqlite:///{tmp_path}/restored.db"
    )


@pytest.mark.postgres
async def test_an_import_into_postgresql_serves_the_same_cuids(
    exported: Exported, demo_systems: DemoSystems, tmp_path: Path, fresh_postgres: str
) -> None:
    await restores_and_serves(exported, demo_systems, tmp_path, fresh_postgres)
    # and it is the same crosswalk, row for row
    source = CrosswalkStore(f"sqlite+aiosqlite:///{exported.file.parent}/identity.db")
    restored = CrosswalkStore(fresh_postgres)
    try:
        before, after = await read_crosswalk(source), await read_crosswalk(restored)
    finally:
        await source.close()
        await restored.close()
    assert after.links == before.links
    assert sorted(after.issues, key=_issue_key) == sorted(before.issues, key=_issue_key)
    assert after.cursors == before.cursors
    assert after.quality_runs == before.quality_runs


def _issue_key(issue: Issue) -> tuple[str, str, str]:
    return (issue.kind, issue.system, issue.system_id)


def test_the_export_holds_keyed_hashes_never_an_email_or_phone(
    exported: Exported, demo_world: DemoWorld
) -> None:
    lines = [orjson.loads(line) for line in exported.file.read_bytes().splitlines()]
    assert lines[0]["kind"] == "c360.crosswalk"
    assert lines[0]["key_check"] == key_check(IdentityKeys(exported.key))
    assert lines[-1] == {
        "kind": "end",
        "links": sum(1 for line in lines if line["kind"] == "link"),
        "cursors": 3,
        "issues": sum(1 for line in lines if line["kind"] == "issue"),
        "quality_runs": 1,
        "tombstones": 0,
        "restrictions": 0,
    }
    links = [line for line in lines if line["kind"] == "link"]
    assert {link["cuid"] for link in links} == set(exported.cuids)
    assert all(len(link["email_hash"] or "0" * 40) == 40 for link in links)
    raw = exported.file.read_text(encoding="utf-8")
    for person in demo_world.persons:
        assert person.email not in raw and person.phone not in raw and person.name not in raw
    assert exported.file.stat().st_mode & 0o077 == 0  # readable by its owner only


async def test_a_non_empty_store_is_refused_unless_replaced(
    exported: Exported, demo_systems: DemoSystems, tmp_path: Path
) -> None:
    config_path = write_config(demo_systems, tmp_path, f"sqlite+aiosqlite:///{tmp_path}/x.db")
    assert await cli("import", str(exported.file), "--config", str(config_path)) == 0
    # as a process: refused in one line, exit 1
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway.cli", "identity", "import", str(exported.file)),
        *("--config", str(config_path)),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode == 1
    message = stderr.decode()
    assert message.count("\n") == 1 and "not empty" in message and "--replace" in message
    assert await cli("import", str(exported.file), "--config", str(config_path), "--replace") == 0
    store = CrosswalkStore(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    try:
        assert len(await store.quality_runs()) == 1  # replaced, not added to
    finally:
        await store.close()
    bogus = tmp_path / "bogus.jsonl"
    bogus.write_text('{"kind": "link"}\n')
    with pytest.raises(CliError, match="line 1: not a crosswalk export"):
        await cli("import", str(bogus), "--config", str(config_path), "--replace")


def test_a_file_cut_short_altered_or_under_another_key_is_refused(exported: Exported) -> None:
    keys = IdentityKeys(exported.key)
    lines = exported.file.read_bytes().splitlines(keepends=True)
    whole = parse_lines(lines, keys)
    end = orjson.loads(lines[-1])
    assert whole.counts() == {name: end[name] for name in whole.counts()}
    with pytest.raises(BackupError, match="ends before its end line"):
        parse_lines(lines[:-1], keys)
    with pytest.raises(BackupError, match="ends before its end line"):
        parse_lines(lines[: len(lines) // 2], keys)
    with pytest.raises(BackupError, match="the end line counts"):
        parse_lines(lines[:3] + lines[4:], keys)
    with pytest.raises(BackupError, match=r"another identity\.key"):
        parse_lines(lines, IdentityKeys(b"another-identity-key-0123"))
    link = orjson.loads(lines[1])
    clear = {**link, "email_hash": "zhang.wei@example.com"}
    with pytest.raises(BackupError, match=r"line 2: link: a match key is not a keyed hash"):
        parse_lines([lines[0], orjson.dumps(clear), *lines[2:]], keys)
    with pytest.raises(BackupError, match="appears twice"):
        parse_lines([lines[0], lines[1], *lines[1:]], keys)
    with pytest.raises(BackupError, match="a line after the end line"):
        parse_lines([*lines, lines[1]], keys)


async def test_tombstones_and_restrictions_are_backed_up_and_restored(
    exported: Exported, tmp_path: Path
) -> None:
    """An erased person's records stay erased across a restore (a sync skips them), and a
    restricted person stays restricted."""
    keys = IdentityKeys(exported.key)
    crosswalk = parse_lines(exported.file.read_bytes().splitlines(), keys)
    crosswalk.tombstones.append(("sales", "99999", "2026-12-01T00:00:00Z"))
    restricted = (crosswalk.links[0].cuid, "2026-12-02T00:00:00Z")
    crosswalk.restrictions.append(restricted)
    stores = [CrosswalkStore(f"sqlite+aiosqlite:///{tmp_path}/{n}.db") for n in "ab"]
    try:
        for store in stores:
            await store.create()
        await stores[0].restore(
            crosswalk.links,
            crosswalk.cursors,
            crosswalk.issues,
            crosswalk.quality_runs,
            crosswalk.tombstones,
            crosswalk.restrictions,
        )
        lines = list(export_lines(await read_crosswalk(stores[0]), keys, dt.datetime.now(dt.UTC)))
        assert b'"kind":"tombstone"' in b"".join(lines)
        assert b'"kind":"restriction"' in b"".join(lines)
        again = parse_lines(lines, keys)
        await stores[1].restore(
            again.links,
            again.cursors,
            again.issues,
            again.quality_runs,
            again.tombstones,
            again.restrictions,
        )
        restored = await read_crosswalk(stores[1])
        assert restored.tombstones == [("sales", "99999", "2026-12-01T00:00:00Z")]
        assert restored.restrictions == [restricted]
        assert await stores[1].restricted() == {restricted[0]}
        # An export made before restrictions were kept (no count of them) still reads.
        old = [line for line in lines if b'"kind":"restriction"' not in line]
        end = orjson.loads(old[-1])
        del end["restrictions"]
        assert parse_lines([*old[:-1], orjson.dumps(end)], keys).restrictions == []
        assert restored.links == crosswalk.links
    finally:
        for store in stores:
            await store.close()


def test_the_commands_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("export", "import"):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(["identity", action, "--help"])
        assert exited.value.code == 0
    assert "--replace" in capsys.readouterr().out


async def test_an_export_is_of_one_moment_or_refused(tmp_path: Path) -> None:
    """A crosswalk changed while its parts are read is read again; one that never stops
    changing is refused, never written half old, half new."""
    store = CrosswalkStore(f"sqlite+aiosqlite:///{tmp_path}/moving.db")
    try:
        await store.create()
        epoch = store.epoch
        numbers = iter([1, 2, 2, 2])  # changed during the first read, not the second

        async def moving() -> int:
            return next(numbers)

        store.epoch = moving  # type: ignore[method-assign]
        assert (await read_crosswalk(store)).links == []
        assert next(numbers, None) is None  # read twice

        async def always_moving() -> int:
            return await epoch() + next(counter)

        counter = itertools.count()
        store.epoch = always_moving  # type: ignore[method-assign]
        with pytest.raises(BackupError, match="kept changing"):
            await read_crosswalk(store)
    finally:
        await store.close()
