"""API keys for /v1 and the admin token, compared in constant time.

Keys come as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Without ZEROSHOT_API_KEYS, /v1 is
open; without ZEROSHOT_ADMIN_TOKEN the admin routes (reload, label-set changes) are disabled, not open.
The admin token is also accepted wherever an API key is.

Both checks are `async def` taking only the request: FastAPI runs a plain `def` dependency in a worker
thread (a thread hop and GIL hand-off on every request, about 9% of the server's GIL time under load),
and declared Header parameters cost a validation pass; these checks do no I/O, so they run on the event
loop and read the two headers themselves.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

from fastapi import Depends, Request

from app.api.errors import ApiError
from app.runtime.engine import Engine
from app.runtime.quotas import ANONYMOUS, key_id
from app.settings import Settings


def _given(request: Request) -> str:
    """The key the request carries: X-API-Key, else an `Authorization: Bearer` token, else ""."""
    x_api_key = request.headers.get("x-api-key")
    if x_api_key:
        return x_api_key.strip()
    auth = (request.headers.get("authorization") or "").strip()
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def _matches(given: str, secrets: list[str]) -> bool:
    """Compare against every secret (no early exit), each in constant time."""
    ok = False
    for s in secrets:
        ok |= hmac.compare_digest(given.encode(), s.encode())
    return ok


def _check_key(request: Request, s: Settings) -> str:
    """The key id of a request that may use /v1 (ANONYMOUS while /v1 is open); 401 otherwise."""
    if not s.api_keys:
        return ANONYMOUS
    secrets = [*s.api_keys, *([s.admin_token] if s.admin_token else [])]
    given = _given(request)
    if not given:
        raise ApiError(
            "unauthorized", "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'"
        )
    if not _matches(given, secrets):
        raise ApiError("unauthorized", "the API key is not valid")
    return key_id(given)


async def require_api_key(request: Request) -> AsyncIterator[None]:
    """The key, then its quotas for the whole request (429 + Retry-After beyond them). The key id
    is left in request.state for the routes (prompt budget) and the metrics (requests by key)."""
    s: Settings = request.app.state.settings
    kid = request.state.key_id = _check_key(request, s)
    engine: Engine = request.app.state.engine
    with engine.quotas.request(kid):
        yield


def client_id(request: Request) -> str:
    """The key id that require_api_key found for this request."""
    return str(getattr(request.state, "key_id", ANONYMOUS))


async def require_admin(request: Request) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        raise ApiError(
            "admin_disabled",
            "this route needs the admin token, and none is configured: set ZEROSHOT_ADMIN_TOKEN",
        )
    if not _matches(_given(request), [token]):
        raise ApiError("unauthorized", "a valid admin token is required (Authorization: Bearer ...)")


ApiKey = Depends(require_api_key)
Admin = Depends(require_admin)
