"""c360.toml: environment overrides, and errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from demo import GRAPH_FILE
from gateway.app import Gateway
from gateway.config import ConfigError, apply_env, load_config, parse_config
from gateway.demo import DEMO_TEMPLATE, to_toml


def template() -> dict[str, Any]:
    return tomllib.loads(DEMO_TEMPLATE.read_text(encoding="utf-8"))


def test_the_demo_template_is_a_valid_config(tmp_path: Path) -> None:
    config = parse_config(template(), base_dir=tmp_path)
    gateway = Gateway(config)  # builds connectors and checks every binding
    assert set(gateway.hub.connectors) == {"sales", "service", "marketing"}
    assert config.identity.dsn == f"sqlite+aiosqlite:///{tmp_path}/identity.db"


def test_environment_overrides_any_key() -> None:
    data = apply_env(
        template(),
        {
            "C360_SOURCES__SALES__DSN": "postgresql+asyncpg://postgres@127.0.0.1/test",
            "C360_SERVER__PORT": "9000",
            "C360_IDENTITY__KEY": "a-key-from-the-environment",
            "UNRELATED": "x",
        },
    )
    config = parse_config(data)
    assert config.sources["sales"]["dsn"].startswith("postgresql+asyncpg://")
    assert config.server.port == 9000
    assert config.identity.key == b"a-key-from-the-environment"


def test_generated_toml_round_trips() -> None:
    data = template()
    assert tomllib.loads(to_toml(data)) == data


def line_of(start: str) -> int:
    """The line of the demo declaration that starts with `start` (its first)."""
    lines = GRAPH_FILE.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if line.startswith(start))


def _broken(path: str, value: Any) -> dict[str, Any]:
    data = template()
    *parents, last = path.split(".")
    table = data
    for part in parents:
        table = table[part]
    if value is None:
        del table[last]
    else:
        table[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("identity.key", "short", "identity.key:"),
        ("identity.key", None, "identity.key:"),
        ("server.port", "eighty", "server.port:"),
        ("server.port", 70000, "server.port:"),
        ("server.colour", "red", "server.colour:"),
        ("identity.systems", ["sales", "billing"], "identity.systems:"),
        ("graph.Customer", {"name": "crm.customer.full_name"}, "graph.Customer: fields and"),
        (
            "sources.sales.entities.customer",
            None,
            f"{GRAPH_FILE}:{line_of('  name: String')}: Customer.name: source",
        ),
        (
            "sources.sales.entities.orders.many",
            False,
            f"{GRAPH_FILE}:{line_of('  orders(')}: Customer.orders: 'orders'",
        ),
        (
            "sources.marketing.entities.contact",
            None,
            f"{GRAPH_FILE}:{line_of('  segment: String')}: Customer.segment: source 'marketing' "
            "has no entity 'contact'",
        ),
        ("sources.service.base_url", None, "sources.service.base_url:"),
        ("sources.sales.kind", "mainframe", "sources.sales.kind:"),
    ],
)
def test_a_broken_config_names_the_key(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Gateway(parse_config(_broken(path, value)))
    assert str(raised.value).startswith(message), str(raised.value)


def test_the_config_names_its_graph_declaration(tmp_path: Path) -> None:
    declaration = tmp_path / "graph.graphql"
    declaration.write_text(GRAPH_FILE.read_text().replace('@policy(name: "customer.phone")', ""))
    data = template()
    data["graph"]["file"] = str(declaration)
    with pytest.raises(ConfigError) as raised:
        Gateway(parse_config(data))
    assert str(raised.value) == (
        f"{declaration}:{line_of('  phone: String')}: Customer.phone: "
        "carries personal data unless said otherwise: add @policy(name:) or @public"
    )


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_an_invalid_policy_file_stops_start_up(tmp_path: Path) -> None:
    broken = tmp_path / "policies.toml"
    broken.write_text(
        'version = 1\nroles = ["sales"]\ndefault_policy = "x"\n[policy.x]\nrules = []\n'
    )
    data = template()
    data["policies"]["file"] = str(broken)
    with pytest.raises(ConfigError) as raised:
        Gateway(parse_config(data))
    assert str(raised.value).startswith("policies.file:")
    missing = tmp_path / "partial.toml"
    missing.write_text(
        'version = 1\nroles = ["sales"]\ndefault_policy = "authenticated"\n'
        '[policy.authenticated]\nrules = [{ role = "*", effect = "allow" }]\n'
    )
    data["policies"]["file"] = str(missing)
    with pytest.raises(ConfigError, match=r"missing: .*customer\.email"):
        Gateway(parse_config(data))


def test_alert_windows_in_redis_need_a_secret_to_name_their_keys() -> None:
    data = template()  # its cache is in memory: no key secret to borrow
    data["audit"] = {"alerts": {"url": "redis://127.0.0.1:6379/0"}}
    with pytest.raises(ConfigError, match=r"^audit\.alerts\.key_secret: required with"):
        parse_config(data)
    data["audit"]["alerts"]["key_secret"] = "an alert windows secret"
    assert parse_config(data).audit.alerts.url == "redis://127.0.0.1:6379/0"
