"""Settings for the reliability tests; the live server itself is tests/servers.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.settings import Settings
from tests.servers import live_server, service_settings

__all__ = ["ADMIN_TOKEN", "live_server", "server_settings"]

ADMIN_TOKEN = "reliability-admin-token"


def server_settings(tmp: Path, **kw: Any) -> Settings:
    return service_settings(tmp, **{"admin_token": ADMIN_TOKEN, **kw})
