"""create_app(settings) -> FastAPI. Settings are made here, never at import time. Torch-free."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import classify, errors, health
from app.runtime.service import ModelRuntime
from app.settings import Settings
from model.bundle import BundleError

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            app.state.runtime = ModelRuntime(settings)
        except BundleError as e:  # not ready: /readyz says why, /healthz still answers
            log.error("no model loaded: %s", e)
            app.state.load_error = str(e)
        yield

    app = FastAPI(
        title="zeroshot",
        version="0.1.0",
        lifespan=lifespan,
        description="Zero-shot image classification with CLIP over ONNX model bundles.",
    )
    app.state.settings = settings
    app.state.runtime = None
    app.state.load_error = "the model is still loading"
    errors.install(app)
    app.include_router(health.router)
    app.include_router(classify.router)
    return app
