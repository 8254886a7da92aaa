"""Liveness, readiness and the model served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.classify import get_runtime

router = APIRouter()


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="A model is loaded and warm (503 otherwise)")
async def readyz(request: Request) -> dict[str, str]:
    get_runtime(request)  # 503 model_unavailable, with the reason, until a model is loaded and warm
    return {"status": "ready"}


@router.get("/v1/models", summary="The bundle served")
async def models(request: Request) -> dict[str, Any]:
    rt = get_runtime(request)
    b = rt.bundle
    return {
        "name": b.name,
        "version": b.version,
        "sha256": rt.sha,
        "architecture": {k: v for k, v in b.architecture.items() if k != "config"},
        "provider": rt.encoders.provider,
        "logit_scale": b.logit_scale,
        "eval": (b.eval_results() or {}).get("summary"),
        "label_cache": {"hits": rt.cache.hits, "misses": rt.cache.misses, "bytes": rt.cache.bytes},
        "reload_error": request.app.state.holder.error,
    }
