"""Builds connectors from configuration: the one place that maps a source's `kind` to code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from connectors.base import Connector, ConnectorConfigError
from connectors.graphql import GraphQLConnector
from connectors.rest import RestConnector
from connectors.settings import Settings
from connectors.sql import SqlConnector

KINDS: dict[str, Callable[[str, Settings], Connector]] = {
    "sql": SqlConnector.from_settings,
    "rest": RestConnector.from_settings,
    "graphql": GraphQLConnector.from_settings,
}


def build_connector(name: str, settings: dict[str, Any]) -> Connector:
    table = Settings(settings, f"sources.{name}")
    kind = table.data.get("kind")
    if kind not in KINDS:
        raise ConnectorConfigError(f"sources.{name}.kind: must be one of {', '.join(KINDS)}")
    return KINDS[kind](name, table)
