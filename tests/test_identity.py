"""The identity crosswalk: normalisation, linking, and the sync over the demo systems."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from connectors.base import IdentityRow
from connectors.identity.keys import IdentityKeys, is_cuid
from connectors.identity.normalize import normalize_email, normalize_phone
from connectors.identity.store import CrosswalkStore
from connectors.identity.sync import _Working, link_row, sync_identity
from demo.people import DemoWorld
from demo.systems import DemoSystems
from gateway.app import Gateway
from gateway.config import parse_config
from harness import gateway_config

KEYS = IdentityKeys(b"identity-test-key-0123456789")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Zhang.Wei@Example.COM ", "zhang.wei@example.com"),
        ("josé@correo.es", "josé@correo.es"),
        ("ＡＢＣ@example.com", "abc@example.com"),  # full-width, NFKC
        ("no-at-sign", None),
        ("a b@example.com", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_email(raw: str | None, expected: str | None) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+86 138 0013 8000", "+8613800138000"),
        ("138-0013-8000", "+8613800138000"),
        ("13800138000", "+8613800138000"),
        ("+8613800138000", "+8613800138000"),
        ("008613800138000", "+8613800138000"),
        ("8613800138000", "+8613800138000"),
        ("12", None),
        ("", None),
    ],
)
def test_normalize_phone(raw: str, expected: str | None) -> None:
    assert normalize_phone(raw) == expected


def test_linking_follows_email_and_reports_conflicts_and_duplicates() -> None:
    working = _Working()
    first, issues = link_row("sales", IdentityRow("1", "a@x.cn", "13800138000"), KEYS, working)
    working.add(first)
    assert issues == [] and is_cuid(first.cuid) and first.is_primary

    same, issues = link_row(
        "service", IdentityRow("r1", " A@X.CN", "+86 138 0013 8000"), KEYS, working
    )
    assert same.cuid == first.cuid and issues == []

    conflict, issues = link_row(
        "marketing", IdentityRow("m1", "a@x.cn", "13900000000"), KEYS, working
    )
    assert conflict.cuid == first.cuid
    assert [issue.kind for issue in issues] == ["conflict"]

    dup, issues = link_row("sales", IdentityRow("2", "A@x.cn", "138-0013-8000"), KEYS, working)
    assert dup.cuid == first.cuid and not dup.is_primary
    assert [issue.kind for issue in issues] == ["duplicate"]

    lone, issues = link_row("service", IdentityRow("r9", None, None), KEYS, working)
    assert lone.cuid != first.cuid and [issue.kind for issue in issues] == ["unlinkable"]


def test_cuids_are_stable_and_opaque() -> None:
    assert KEYS.cuid("sales", "10001") == KEYS.cuid("sales", "10001")
    assert KEYS.cuid("sales", "10001") != KEYS.cuid("sales", "10002")
    assert "10001" not in KEYS.cuid("sales", "10001")
    assert IdentityKeys(b"another-key-0123456789").cuid("sales", "10001") != KEYS.cuid(
        "sales", "10001"
    )


async def test_sync_links_the_demo_world_and_is_idempotent(
    demo_systems: DemoSystems, demo_world: DemoWorld, tmp_path: Path
) -> None:
    config = parse_config(gateway_config(demo_systems, tmp_path), base_dir=tmp_path)
    gateway = Gateway(config)
    try:
        await gateway.store.create()
        first = await gateway.sync()
        again = await gateway.sync()
        full_again = await gateway.sync(full=True)
        issues = await gateway.store.issues()
        index = gateway.identity
    finally:
        await gateway.stop()

    assert all(stats.error is None for stats in first.systems.values())
    assert first.systems["sales"].scanned == len(demo_world.sales.customers)
    assert again.linked == 0 and full_again.linked == 0
    # every person of the world is one customer, whatever systems know them
    expected = {p.index for p in demo_world.persons}
    assert len(index) == len(expected)
    for person in demo_world.persons:
        links = index.links(index.find_email(person.email) or "")
        assert links is not None, person.email
        if person.sales_ids:
            # duplicates: the record seen first (lowest id) is the one the graph reads
            assert links["sales"] == str(min(person.sales_ids))
        if person.requester_id:
            assert links.get("service") == person.requester_id
    kinds = {issue.kind for issue in issues}
    duplicated = sum(1 for p in demo_world.persons if len(p.sales_ids) > 1)
    assert sum(1 for issue in issues if issue.kind == "duplicate") == duplicated > 0
    assert "conflict" in kinds


async def test_sync_resumes_after_the_last_record(
    demo_systems: DemoSystems, demo_world: DemoWorld, tmp_path: Path
) -> None:
    store = CrosswalkStore(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    config = parse_config(gateway_config(demo_systems, tmp_path), base_dir=tmp_path)
    gateway = Gateway(config)
    sales = gateway.hub.connectors["sales"]
    try:
        first = await sync_identity(store, [sales], KEYS, page_size=100)
        cursors = await store.cursors()
        second = await sync_identity(store, [sales], KEYS, page_size=100)
    finally:
        await store.close()
        await gateway.stop()
    assert first.systems["sales"].linked == len(demo_world.sales.customers)
    assert cursors["sales"] == str(max(c.id for c in demo_world.sales.customers))
    assert second.systems["sales"].scanned == 0


async def test_the_crosswalk_holds_no_email_or_phone(
    demo_systems: DemoSystems, demo_world: DemoWorld, tmp_path: Path
) -> None:
    config = parse_config(gateway_config(demo_systems, tmp_path), base_dir=tmp_path)
    gateway = Gateway(config)
    try:
        await gateway.store.create()
        await gateway.sync()
    finally:
        await gateway.stop()
    rows = (
        sqlite3.connect(tmp_path / "identity.db")
        .execute("SELECT * FROM c360_identity_links")
        .fetchall()
    )
    dump = repr(rows)
    for person in demo_world.persons[:50]:
        assert person.email not in dump
        assert person.phone not in dump


async def test_stores_created_at_once_all_find_their_tables(tmp_path: Path) -> None:
    """`serve --workers N`: N processes create the crosswalk's tables at the same moment;
    the ones that lose the race (`table ... already exists`) must still start."""
    import sqlalchemy

    from connectors.identity import store as store_module

    real = store_module.metadata.create_all
    raced: list[bool] = []

    def losing_once(bind: Any, **kwargs: Any) -> None:
        if not raced:
            raced.append(True)
            real(bind, **kwargs)  # the other worker's tables, created first
            raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, Exception("already exists"))
        real(bind, **kwargs)

    store = CrosswalkStore(f"sqlite+aiosqlite:///{tmp_path}/race.db")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store_module.metadata, "create_all", losing_once)
            await store.create()
        assert raced and await store.links() == []
    finally:
        await store.close()


async def test_two_syncs_at_once_store_each_link_once(
    demo_systems: DemoSystems, demo_world: DemoWorld, tmp_path: Path
) -> None:
    """Workers started together sync together into one crosswalk; neither fails."""
    stores = [CrosswalkStore(f"sqlite+aiosqlite:///{tmp_path}/shared.db") for _ in range(2)]
    config = parse_config(gateway_config(demo_systems, tmp_path), base_dir=tmp_path)
    gateway = Gateway(config)
    sales = gateway.hub.connectors["sales"]
    try:
        await stores[0].create()
        await asyncio.gather(
            *(sync_identity(store, [sales], KEYS, page_size=50) for store in stores)
        )
        stored = await stores[0].links()
    finally:
        for store in stores:
            await store.close()
        await gateway.stop()
    assert len(stored) == len(demo_world.sales.customers)
    assert len({(link.system, link.system_id) for link in stored}) == len(stored)
