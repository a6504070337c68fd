"""The shared service probe: a missing PostgreSQL or Redis skips locally and fails on CI."""

from __future__ import annotations

import pytest
from conftest import _require_service

from demo.systems import unused_port


def test_missing_service_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not reachable"):
        _require_service("PostgreSQL", "127.0.0.1", unused_port())


def test_missing_service_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        _require_service("Redis", "127.0.0.1", unused_port())
