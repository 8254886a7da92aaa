"""Admin routes: disabled unless ZEROSHOT_ADMIN_TOKEN is set; the token is compared in constant time."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.auth import Admin
from app.api.deps import EngineDep
from app.api.schemas import ERRORS

router = APIRouter()


@router.post(
    "/v1/admin/reload",
    summary="Load each model's CURRENT bundle now, if it changed (`?model=` for one)",
    dependencies=[Admin],
    responses={**ERRORS, 409: {"description": "a new bundle was refused; the old one keeps serving"}},
)
async def reload(engine: EngineDep, model: str | None = None) -> dict[str, Any]:
    results = await engine.reload(model)
    first = next(iter(results.values()))  # the default's (or the one named): the one-model shape
    per_model = {n: {"changed": r.changed, "version": r.version} for n, r in results.items()}
    return {"changed": first.changed, "version": first.version, "models": per_model}
