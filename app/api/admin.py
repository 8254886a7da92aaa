"""Admin routes: disabled unless ZEROSHOT_ADMIN_TOKEN is set; the token is compared in constant time."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.api.auth import Admin
from app.api.errors import ApiError
from app.api.schemas import ERRORS

router = APIRouter()


@router.post(
    "/v1/admin/reload",
    summary="Load the CURRENT bundle now, if it changed",
    dependencies=[Admin],
    responses={**ERRORS, 409: {"description": "the new bundle was refused; the old one keeps serving"}},
)
async def reload(request: Request) -> dict[str, Any]:
    holder = request.app.state.holder
    result = await run_in_threadpool(holder.reload)
    if result.error:
        serving = holder.runtime.bundle.version if holder.runtime else None
        raise ApiError(409, "reload_failed", result.error, {"serving": serving})
    return {"changed": result.changed, "version": result.version}
