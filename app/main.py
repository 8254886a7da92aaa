"""create_app(settings) -> FastAPI. Settings are made here, never at import time. Torch-free."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app.api import admin, classify, embeddings, errors, health, label_sets, metrics, page
from app.api.inputs import BodyLimitMiddleware, body_limit
from app.metrics import Metrics, MetricsMiddleware
from app.runtime.batcher import ImageBatcher
from app.runtime.label_sets import LabelSetStore
from app.runtime.reload import ModelHolder, watch
from app.runtime.service import LabelCache
from app.settings import Settings

log = logging.getLogger(__name__)


def limit_blas_threads() -> None:
    """One thread for numpy's BLAS in the server: onnxruntime's threads hold the cores.

    The only large matrix product here is features @ label_matrix.T. With 1,000 labels OpenBLAS
    runs it on its own thread pool, whose threads then spin-wait for more work and take the CPU from
    the image encoder: measured, a ViT-B/32 image took 105-111 ms instead of 53-59 ms after each such
    product (bench/README.md). One thread does that product in about a millisecond."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    cache = LabelCache(settings.label_cache_bytes)
    holder = ModelHolder(settings, cache)
    batcher = ImageBatcher(settings.max_batch, settings.max_wait_ms, settings.max_queue)
    telemetry = Metrics(holder, batcher, cache)
    batcher.on_batch = telemetry.on_batch

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_blas_threads()
        batcher.start()
        result = await run_in_threadpool(holder.reload)  # not ready until loaded and warm
        if result.error:
            log.error("no model loaded: %s", result.error)
        task = (
            asyncio.create_task(watch(holder, settings.reload_interval_s))
            if settings.reload_interval_s
            else None
        )
        yield
        app.state.draining = True  # /readyz answers 503 from now on
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await run_in_threadpool(batcher.close)  # answers what is queued, then stops

    app = FastAPI(
        title="zeroshot",
        version="0.1.0",
        lifespan=lifespan,
        description="Zero-shot image classification with CLIP over ONNX model bundles. "
        'Errors always have the body {"error": {"code", "message", "detail"}}.',
    )
    app.state.settings = settings
    app.state.holder = holder
    app.state.batcher = batcher
    app.state.metrics = telemetry
    app.state.label_sets = LabelSetStore(settings.label_sets_dir)
    app.state.draining = False
    errors.install(app)
    for module in (health, classify, embeddings, label_sets, admin, metrics, page):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, limit=body_limit(settings))
    app.add_middleware(MetricsMiddleware, metrics=lambda: telemetry)
    return app
