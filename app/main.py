"""create_app(settings) -> FastAPI. Settings are made here, never at import time. Torch-free."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app.api import admin, classify, errors, health
from app.runtime.reload import ModelHolder, watch
from app.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    holder = ModelHolder(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        result = await run_in_threadpool(holder.reload)  # not ready until loaded and warm
        if result.error:
            log.error("no model loaded: %s", result.error)
        task = (
            asyncio.create_task(watch(holder, settings.reload_interval_s))
            if settings.reload_interval_s
            else None
        )
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="zeroshot",
        version="0.1.0",
        lifespan=lifespan,
        description="Zero-shot image classification with CLIP over ONNX model bundles.",
    )
    app.state.settings = settings
    app.state.holder = holder
    errors.install(app)
    app.include_router(health.router)
    app.include_router(classify.router)
    app.include_router(admin.router)
    return app
