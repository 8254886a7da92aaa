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


@router.get(
    "/readyz", summary="Every model served is loaded and warm (503 naming those not)", responses=ERRORS
)
async def readyz(engine: EngineDep) -> dict[str, str]:
    # 503 draining; model_unavailable, detail.not_ready naming each model not loaded and why; encoder_stalled
    engine.ready()
    return {"status": "ready"}


@router.get(
    "/v1/models",
    summary="The models served: the default's fields at the top, every model under `models`",
    dependencies=[ApiKey],
    responses=ERRORS,
)
async def models(engine: EngineDep) -> dict[str, Any]:
    return engine.describe()
