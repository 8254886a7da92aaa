"""Liveness, readiness and the model served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.auth import ApiKey
from app.api.deps import EngineDep
from app.api.schemas import ERRORS

router = APIRouter()


@router.get(
    "/healthz", summary="The process is alive (503 when its image encoder is stuck)", responses=ERRORS
)
async def healthz(engine: EngineDep) -> dict[str, str]:
    engine.alive()  # 503 encoder_stalled: the orchestrator's liveness probe restarts the replica
    return {"status": "ok"}


@router.get("/readyz", summary="A model is loaded and warm (503 otherwise)", responses=ERRORS)
async def readyz(engine: EngineDep) -> dict[str, str]:
    engine.ready()  # 503 draining, or model_unavailable with the reason until a model is loaded and warm
    return {"status": "ready"}


@router.get("/v1/models", summary="The bundle served", dependencies=[ApiKey], responses=ERRORS)
async def models(engine: EngineDep) -> dict[str, Any]:
    return engine.describe()
