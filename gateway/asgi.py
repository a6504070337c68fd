"""An app factory for `uvicorn --factory` (used by `c360 serve --workers N`)."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette

from gateway.app import build_app
from gateway.config import load_config


def create_app() -> Starlette:
    return build_app(load_config(Path(os.environ.get("C360_CONFIG", "c360.toml"))))
