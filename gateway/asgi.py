"""An app factory for `uvicorn --factory` (used by `c360 serve --workers N`)."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette

from gateway.app import Gateway, build_app
from gateway.config import load_config
from gateway.serving import settle_heap
from gateway.telemetry import configure_telemetry


def create_app() -> Starlette:
    path = Path(os.environ.get("C360_CONFIG", "c360.toml"))
    config = load_config(path)
    # Each worker process has its own tracer provider (OTEL_* from the environment).
    app = build_app(config, Gateway(config, path, configure_telemetry("c360", os.environ)))
    settle_heap()  # modules, schema and policies (the identity index loads at startup)
    return app
