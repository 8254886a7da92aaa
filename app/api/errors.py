"""Domain errors -> HTTP, in one place, with one body shape: {"error": {"code", "message", "detail"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.runtime.batcher import DeadlineExceeded, QueueFull
from app.runtime.label_sets import NO_SPACE, LabelSetError
from model.preprocess import ImageError
from model.prompts import TemplateError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail
        self.headers = headers


class BodyTooLarge(Exception):
    """The request body passed the limit while it was being read."""


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail}}


def _json(
    status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, detail), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError) -> JSONResponse:
        return _json(e.status, e.code, e.message, e.detail, e.headers)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, e: QueueFull) -> JSONResponse:
        retry = str(request.app.state.settings.retry_after_s)
        return _json(503, "overloaded", f"the server is busy: {e}; retry later", None, {"Retry-After": retry})

    @app.exception_handler(DeadlineExceeded)
    async def _late(request: Request, e: DeadlineExceeded) -> JSONResponse:
        retry = str(request.app.state.settings.retry_after_s)
        return _json(
            503, "queue_timeout", f"the request was dropped unprocessed: {e}", None, {"Retry-After": retry}
        )

    @app.exception_handler(BodyTooLarge)
    async def _body(_: Request, e: BodyTooLarge) -> JSONResponse:
        return _json(413, "body_too_large", str(e), None, {"Connection": "close"})

    @app.exception_handler(LabelSetError)
    async def _label_set(_: Request, e: LabelSetError) -> JSONResponse:
        return _json(e.status, e.code, e.message)

    @app.exception_handler(ImageError)
    async def _image(_: Request, e: ImageError) -> JSONResponse:
        return _json(e.status, e.code, e.message)

    @app.exception_handler(TemplateError)
    async def _templates(_: Request, e: TemplateError) -> JSONResponse:
        return _json(422, e.code, e.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", "")} for err in e.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(x) for x in first["loc"][1:]) or "request"
        return _json(422, "invalid_request", f"{where}: {first['msg']}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _json(e.status_code, code, str(e.detail), None, getattr(e, "headers", None))

    @app.exception_handler(OSError)
    async def _os(_: Request, e: OSError) -> JSONResponse:
        # A full disk (or quota, or file-size limit) is an operator's problem, not a bug: say so (507)
        # wherever it strikes, e.g. while Starlette spools a large upload to a temporary file. Other
        # OS errors are unexpected (500).
        if e.errno in NO_SPACE:
            log.error("no space left on a disk: %s", e)
            return _json(507, "insufficient_storage", "the server has no disk space left for this request")
        log.exception("unhandled error")
        return _json(500, "internal_error", "internal server error")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _json(500, "internal_error", "internal server error")
