"""create_app(settings, runtime_factory) -> FastAPI. Settings are made here, never at import time;
the runtime factory says how a model version is loaded (the bundle's ONNX files by default; the API
tests pass a fake encoder). Torch-free."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import admin, classify, embeddings, errors, health, label_sets, metrics, openai_compat, page
from app.api.body_limit import BodyLimitMiddleware, body_limit
from app.metrics import Metrics, MetricsMiddleware
from app.runtime.engine import Engine
from app.runtime.model import RuntimeFactory, load_runtime
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


def create_app(settings: Settings | None = None, runtime_factory: RuntimeFactory = load_runtime) -> FastAPI:
    settings = settings or Settings()
    engine = Engine(settings, runtime_factory)
    telemetry = Metrics(engine)
    for served in engine.models:  # batch histograms carry the model's name
        served.batcher.on_batch = functools.partial(telemetry.on_batch, served.name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_blas_threads()
        await engine.start()  # not ready until the model is loaded and warm
        yield
        await engine.stop()  # /readyz answers 503 from now on; what is queued is answered

    app = FastAPI(
        title="zeroshot",
        version="0.1.0",
        lifespan=lifespan,
        description="Zero-shot image classification with CLIP over ONNX model bundles. "
        'Errors always have the body {"error": {"code", "message", "detail"}}.',
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = telemetry
    errors.install(app)
    for module in (health, classify, embeddings, openai_compat, label_sets, admin, metrics, page):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, limit=body_limit(settings))
    app.add_middleware(MetricsMiddleware, metrics=lambda: telemetry)
    return app
