"""Changing the graph safely: a reload (SIGHUP) swaps the declaration atomically, a request
in flight finishes on the graph it started with, a bad declaration keeps the old one."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from demo import GRAPH_FILE
from demo.systems import DemoSystems
from harness import running_gateway

SEGMENT = "{ customers(first: 3) { edges { node { id segment } } } }"
RENAMED = "{ customers(first: 3) { edges { node { id audience } } } }"


async def test_a_reload_swaps_the_graph_and_requests_in_flight_keep_theirs(
    demo_systems: DemoSystems, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    declaration = tmp_path / "graph.graphql"
    original = GRAPH_FILE.read_text()
    declaration.write_text(original)
    async with running_gateway(demo_systems, tmp_path, {"graph.file": str(declaration)}) as gw:
        before = await gw.query(SEGMENT)
        assert not before.errors
        segments = [e["node"]["segment"] for e in before.data["customers"]["edges"]]

        # A request held at the marketing system while the graph changes under it.
        hub = gw.gateway.hub
        held, release = asyncio.Event(), asyncio.Event()
        fetch = hub.fetch

        async def slow_fetch(source: str, *args: Any, **kwargs: Any) -> Any:
            if source == "marketing":
                held.set()
                await release.wait()
            return await fetch(source, *args, **kwargs)

        hub.fetch = slow_fetch  # type: ignore[method-assign]
        in_flight = asyncio.ensure_future(gw.query(SEGMENT))
        await asyncio.wait_for(held.wait(), 10)
        declaration.write_text(
            original.replace("  segment: String @from", "  audience: String @from")
        )
        assert gw.gateway.reload()
        release.set()
        old = await in_flight
        hub.fetch = fetch  # type: ignore[method-assign]
        assert not old.errors, old.errors
        assert [e["node"]["segment"] for e in old.data["customers"]["edges"]] == segments

        renamed = await gw.query(RENAMED)
        assert not renamed.errors
        assert [e["node"]["audience"] for e in renamed.data["customers"]["edges"]] == segments
        gone = await gw.query(SEGMENT)
        assert gone.status == 200 and gone.data is None
        assert "Cannot query field 'segment'" in gone.errors[0]["message"]

        # A declaration that does not check is refused, naming the line; the graph stays.
        declaration.write_text(original.replace('@policy(name: "customer.phone")', ""))
        with caplog.at_level(logging.ERROR, logger="c360.app"):
            assert not gw.gateway.reload()
        reasons = [getattr(r, "reason", "") for r in caplog.records]
        line = next(n for n, text in enumerate(original.splitlines(), 1) if "  phone: " in text)
        assert any(
            f"{declaration}:{line}: Customer.phone: carries personal data" in r for r in reasons
        )
        still = await gw.query(RENAMED)
        assert not still.errors and still.data == renamed.data

        # So is one whose field names a policy the policy file lacks.
        declaration.write_text(
            original.replace('"customer.segment")\n  consents', '"x.y")\n  consents')
        )
        with caplog.at_level(logging.ERROR, logger="c360.app"):
            assert not gw.gateway.reload()
        assert "missing: x.y" in str(getattr(caplog.records[-1], "reason", ""))
        assert (await gw.query(RENAMED)).data == renamed.data
