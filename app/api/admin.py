"""Admin routes: disabled unless ZEROSHOT_ADMIN_TOKEN is set; the token is compared in constant time."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.concurrency import run_in_threadpool

from app.api.errors import ApiError

router = APIRouter()


def require_admin(request: Request, authorization: str | None) -> None:
    token: str | None = request.app.state.settings.admin_token
    if not token:
        raise ApiError(
            404, "admin_disabled", "admin routes are disabled: set ZEROSHOT_ADMIN_TOKEN to enable them"
        )
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "unauthorized", "a valid admin token is required (Authorization: Bearer ...)")


@router.post("/v1/admin/reload", summary="Load the CURRENT bundle now, if it changed")
async def reload(request: Request, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    require_admin(request, authorization)
    result = await run_in_threadpool(request.app.state.holder.reload)
    if result.error:
        raise ApiError(
            409,
            "reload_failed",
            result.error,
            {"serving": request.app.state.holder.runtime and request.app.state.holder.runtime.bundle.version},
        )
    return {"changed": result.changed, "version": result.version}
