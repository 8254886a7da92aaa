"""What routes take from the app, as `Annotated` dependencies: the engine and the settings.

Both are `async def` reading app.state: FastAPI would run a plain `def` in a worker thread."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.runtime.engine import Engine
from app.settings import Settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
