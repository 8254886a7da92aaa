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
    summary="Load the CURRENT bundle now, if it changed",
    dependencies=[Admin],
    responses={**ERRORS, 409: {"description": "the new bundle was refused; the old one keeps serving"}},
)
async def reload(engine: EngineDep) -> dict[str, Any]:
    result = await engine.reload()
    return {"changed": result.changed, "version": result.version}
