"""Liveness, readiness and the model served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api import deps
from app.api.auth import ApiKey
from app.api.errors import ApiError
from app.api.schemas import ERRORS

router = APIRouter()


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="A model is loaded and warm (503 otherwise)", responses=ERRORS)
async def readyz(request: Request) -> dict[str, str]:
    if request.app.state.draining:
        raise ApiError(503, "draining", "the server is shutting down")
    deps.get_runtime(request)  # 503 model_unavailable, with the reason, until a model is loaded and warm
    return {"status": "ready"}


@router.get("/v1/models", summary="The bundle served", dependencies=[ApiKey], responses=ERRORS)
async def models(request: Request) -> dict[str, Any]:
    rt = deps.get_runtime(request)
    b, s = rt.bundle, deps.settings(request)
    batcher, cache = deps.batcher(request), rt.cache
    return {
        "name": b.name,
        "version": b.version,
        "sha256": rt.sha,
        "created_at": b.manifest.get("created_at"),
        "architecture": {k: v for k, v in b.architecture.items() if k != "config"},
        "provider": rt.encoders.provider,
        "image_precision": rt.encoders.image_precision,
        "int8": b.manifest.get("int8"),
        "logit_scale": b.logit_scale,
        "parity": b.manifest.get("parity"),
        "eval": (b.eval_results() or {}).get("summary"),
        "batcher": {
            "max_batch": s.max_batch,
            "max_wait_ms": s.max_wait_ms,
            "max_queue": s.max_queue,
            "queued": batcher.pending,
            "batches": batcher.batches,
            "images": batcher.images,
            "largest_batch": batcher.largest_batch,
            "rejected": batcher.rejected,
            "expired": batcher.expired,
        },
        "label_cache": {
            "hits": cache.hits,
            "misses": cache.misses,
            "encoded_prompts": cache.encoded_prompts,
            "entries": len(cache),
            "bytes": cache.bytes,
            "max_bytes": cache.max_bytes,
        },
        "reload_error": request.app.state.holder.error,
    }
