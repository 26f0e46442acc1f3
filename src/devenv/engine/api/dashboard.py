"""Routes of the telemetry address for dashboard (see engine/telemetry.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from devenv.engine.app import Environment


def add_routes(app: web.Application, env: Environment, token: str) -> None:
    """Nothing yet."""
