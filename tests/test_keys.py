"""Keys that rotate without a restart, and `c360 keys status`."""

from __future__ import annotations

import asyncio
import logging
import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet, InvalidToken

from demo.systems import DemoSystems
from gateway.auth import AuthConfig, mint_token
from gateway.demo import to_toml
from gateway.invalidation import signed_headers
from harness import RunningGateway, running_gateway

PAGE = "query($n: Int) { customers(first: $n) { edges { node { id name phone } } } }"


def rewrite(gateway: RunningGateway, change: Any) -> None:
    """Edit the running gateway's config file the way an operator would."""
    path = gateway.gateway.config_path
    assert path is not None
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(to_toml(data), encoding="utf-8")


async def load(gateway: RunningGateway, headers: dict[str, str], stop: asyncio.Event) -> list[int]:
    statuses = []
    while not stop.is_set():
        reply = await gateway.query(PAGE, {"n": 3}, headers)
        statuses.append(reply.status if not reply.errors else -reply.status)
    return statuses


async def test_token_keys_rotate_under_load(demo_systems: DemoSystems, tmp_path: Path) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:
        old_token = {"authorization": "Bearer " + gateway.token()}
        stop = asyncio.Event()
        running = [asyncio.create_task(load(gateway, old_token, stop)) for _ in range(4)]
        await asyncio.sleep(0.2)

        def add_key(data: dict[str, Any]) -> None:
            data["auth"]["hs256"]["dev-2027"] = "a-new-development-secret-of-enough-bytes"
            data["auth"]["dev_key"] = "dev-2027"

        rewrite(gateway, add_key)
        assert gateway.gateway.reload()
        new_auth = AuthConfig.parse(
            tomllib.loads(gateway.gateway.config_path.read_text())["auth"]  # type: ignore[union-attr]
        )
        new_token = {
            "authorization": "Bearer " + mint_token(new_auth, "alice", ["sales"], ["sales"])
        }
        with_new = await gateway.query(PAGE, {"n": 3}, new_token)
        await asyncio.sleep(0.2)
        stop.set()
        statuses = [s for task in running for s in await task]

        def retire_old(data: dict[str, Any]) -> None:
            del data["auth"]["hs256"]["dev"]

        rewrite(gateway, retire_old)
        assert gateway.gateway.reload()
        old_after = await gateway.query(PAGE, {"n": 3}, old_token)
        new_after = await gateway.query(PAGE, {"n": 3}, new_token)
    assert statuses and set(statuses) == {200}  # not one request failed during the rotation
    assert with_new.status == 200
    assert old_after.status == 401
    assert new_after.status == 200


async def test_a_broken_reload_keeps_everything(demo_systems: DemoSystems, tmp_path: Path) -> None:
    async with running_gateway(demo_systems, tmp_path) as gateway:

        def break_it(data: dict[str, Any]) -> None:
            data["auth"]["hs256"]["dev"] = "short"

        rewrite(gateway, break_it)
        assert not gateway.gateway.reload()
        reply = await gateway.query(PAGE, {"n": 1})
    assert reply.status == 200


async def test_webhook_secrets_and_pseudonym_keys_rotate(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    async with running_gateway(demo_systems, tmp_path, {"cache.enabled": True}) as gateway:
        body = orjson.dumps({"source": "sales", "entity": "customer", "keys": ["10001"]})

        async def invalidate(secret_id: str, secret: str) -> int:
            async with gateway.http.post(
                gateway.url + "/cache/invalidate",
                data=body,
                headers=signed_headers(secret_id, secret, body),
            ) as response:
                return response.status

        new_secret = "the-new-webhook-secret-for-the-helpdesk-team"
        assert await invalidate("ops-2027", new_secret) == 401
        pseudonym_before = gateway.gateway.masks["hash"]("zhang.wei@example.com")

        def rotate(data: dict[str, Any]) -> None:
            data["cache"]["webhook_secrets"]["ops-2027"] = new_secret
            data["policies"]["hash_key"] = "a-new-pseudonym-key-2027"
            data["policies"]["hash_key_id"] = "k2"

        rewrite(gateway, rotate)
        assert gateway.gateway.reload()
        assert await invalidate("ops-2027", new_secret) == 200
        old_id, old_secret = "demo", "c360-demo-webhook-secret-not-for-production"
        assert await invalidate(old_id, old_secret) == 200  # both active until the old goes
        pseudonym_after = gateway.gateway.masks["hash"]("zhang.wei@example.com")
    assert pseudonym_before.startswith("h1:k1:")
    assert pseudonym_after.startswith("h1:k2:")  # the key id shows: no silent change


@pytest.mark.redis
async def test_cache_keys_rotate_without_restart_or_flush(
    demo_systems: DemoSystems, tmp_path: Path, redis_url: str
) -> None:
    import uuid

    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    overrides = {
        "cache.enabled": True,
        "cache.url": redis_url,
        "cache.key_secret": "rotation-" + uuid.uuid4().hex,
        "cache.encryption_keys": [old_key],
    }
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        await gateway.query(PAGE, {"n": 5})
        calls = gateway.source_calls("sales")

        def rotate(data: dict[str, Any]) -> None:
            data["cache"]["encryption_keys"] = [new_key, old_key]

        rewrite(gateway, rotate)
        stop = asyncio.Event()
        running = asyncio.create_task(load(gateway, {}, stop))
        assert gateway.gateway.reload()
        again = await gateway.query(PAGE, {"n": 5})
        assert gateway.source_calls("sales") == calls  # old entries still read
        await gateway.query(PAGE, {"n": 9})  # new entries written with the new key
        stop.set()
        statuses = await running
        serializer = gateway.gateway.hub.store.backend.serializer  # type: ignore[union-attr]
        written = serializer.dumps(["probe", 1.0])
    assert not again.errors
    assert set(statuses) == {200}
    Fernet(new_key.encode()).decrypt(written)  # encrypted with the new key
    with pytest.raises(InvalidToken):
        Fernet(old_key.encode()).decrypt(written)


async def test_keys_status_lists_ids_and_ages_never_secrets(
    demo_systems: DemoSystems, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(demo_systems, tmp_path, {"cache.enabled": True}) as gateway:
        path = gateway.gateway.config_path
        assert path is not None

        def age(data: dict[str, Any]) -> None:
            import datetime as dt

            data["keys"]["created"]["auth.hs256.dev"] = dt.date(2020, 1, 1)

        rewrite(gateway, age)
        with caplog.at_level(logging.DEBUG):
            assert gateway.gateway.reload()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "keys",
            "status",
            "--config",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        as_json = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "keys",
            "status",
            "--config",
            str(path),
            "--json",
            stdout=asyncio.subprocess.PIPE,
        )
        rows = [orjson.loads(line) for line in (await as_json.communicate())[0].splitlines()]
        config = tomllib.loads(path.read_text())
    text = out.decode() + err.decode() + "\n".join(str(r.__dict__) for r in caplog.records)
    assert process.returncode == 0
    ids = {row["id"]: row for row in rows}
    assert ids["auth.hs256.dev"]["too_old"] is True
    assert ids["cache.webhook_secrets.demo"]["age_days"] is not None
    assert any(key.startswith("cache.encryption_keys.") for key in ids)
    assert "policies.hash_key.k1" in ids
    assert "warning: auth.hs256.dev is" in err.decode()
    secrets = [
        *config["auth"]["hs256"].values(),
        *config["cache"]["encryption_keys"],
        *config["cache"]["webhook_secrets"].values(),
        config["cache"]["key_secret"],
        config["policies"]["hash_key"],
        config["identity"]["key"],
    ]
    for secret in secrets:
        assert secret not in text


def test_the_alert_windows_secret_is_listed_by_its_use() -> None:
    import datetime as dt

    from gateway.config import parse_config
    from gateway.keys import KeyPolicy, inventory

    base = {
        "identity": {"key": "x" * 32},
        "auth": {"issuer": "i", "audience": "a", "hs256": {"k": "s" * 32}},
        "policies": {"hash_key": "h" * 16},
        "sources": {"s": {"kind": "rest", "base_url": "http://127.0.0.1:1", "entities": {}}},
    }
    own = {"url": "redis://127.0.0.1:6379/0", "key_secret": "alert-windows-" + "k" * 16}
    config = parse_config({**base, "audit": {"alerts": own}})
    uses = {key.id: key.use for key in inventory(config, KeyPolicy(), dt.date.today())}
    assert uses["audit.alerts.key_secret"] == "alert window key names (keyed hash)"
    cache = {"url": "redis://127.0.0.1:6379/0", "encryption_keys": [Fernet.generate_key().decode()]}
    cache["key_secret"] = "cache-key-secret-" + "c" * 16
    config = parse_config({**base, "cache": cache})  # the windows go to the cache's Redis
    uses = {key.id: key.use for key in inventory(config, KeyPolicy(), dt.date.today())}
    assert "audit.alerts.key_secret" not in uses
    assert uses["cache.key_secret"].endswith("; alert window key names (keyed hash)")
