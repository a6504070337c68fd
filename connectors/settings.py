"""Typed reading of a connector's settings table, with errors that name the key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connectors.base import ConnectorConfigError, EntitySpec, IdentityFields


class Settings:
    """A view on one TOML table (e.g. `sources.sales.entities.orders`) that knows its path,
    so every error says exactly which key is wrong."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConnectorConfigError(f"{path}: expected a table")
        self.data = data
        self.path = path

    def error(self, key: str, problem: str) -> ConnectorConfigError:
        return ConnectorConfigError(f"{self.path}.{key}: {problem}")

    def has(self, key: str) -> bool:
        return key in self.data

    def string(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise self.error(key, "is required")
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string")
        return value

    def opt_string(self, key: str) -> str | None:
        return self.string(key) if key in self.data else None

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"must be an integer >= {minimum}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.data.get(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}")
        return str(value)

    def table(self, key: str) -> Settings:
        if key not in self.data:
            raise self.error(key, "is required")
        return Settings(self.data[key], f"{self.path}.{key}")

    def opt_table(self, key: str) -> Settings | None:
        return self.table(key) if key in self.data else None

    def tables(self, key: str) -> dict[str, Settings]:
        raw = self.data.get(key, {})
        if not isinstance(raw, Mapping):
            raise self.error(key, "expected a table of tables")
        return {name: Settings(value, f"{self.path}.{key}.{name}") for name, value in raw.items()}

    def str_map(self, key: str) -> dict[str, str]:
        raw = self.data.get(key, {})
        if not isinstance(raw, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise self.error(key, "expected a table of strings")
        return dict(raw)

    def str_list(self, key: str) -> list[str]:
        raw = self.data.get(key, [])
        if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
            raise self.error(key, "expected a list of non-empty strings")
        return list(raw)

    def entity_spec(self, name: str) -> EntitySpec:
        return EntitySpec(name, self.string("key_field"), self.flag("many", False))

    def identity_fields(self) -> IdentityFields:
        return IdentityFields(
            id=self.string("id_field", "id"),
            email=self.string("email_field", "email"),
            phone=self.string("phone_field", "phone"),
        )

    def reject_unknown(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            raise self.error(unknown[0], f"unknown key (allowed: {', '.join(sorted(allowed))})")
