"""Errors -> HTTP, in one place, with one body shape: {"error": {"code", "message", "detail"}}.

Every error the service answers has a `code`; STATUS is the one table that turns a code into an HTTP
status. Domain errors (the engine's, app/runtime/errors.py; the core's ImageError and TemplateError)
say what went wrong and never choose a status; the API's own parse errors (ApiError) name a code too.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.runtime.errors import EngineError
from app.runtime.label_sets import NO_SPACE
from model.bundle.preprocess import ImageError
from model.bundle.prompts import TemplateError

log = logging.getLogger(__name__)

STATUS: dict[str, int] = {
    # the body cannot be read at all
    "invalid_json": 400,
    "invalid_multipart": 400,
    # who is asking
    "unauthorized": 401,
    "admin_disabled": 403,
    "url_fetch_disabled": 403,
    "url_refused": 403,  # an address the server does not fetch from (private, loopback, metadata...)
    # what is asked for
    "not_found": 404,
    "label_set_not_found": 404,
    "model_not_found": 404,
    "method_not_allowed": 405,
    "reload_failed": 409,
    "label_set_build_failed": 409,  # the set's build failed (the reason is said); register it again
    # too much
    "body_too_large": 413,
    "upload_too_large": 413,
    "too_many_images": 413,
    "too_many_fields": 413,
    "field_too_large": 413,
    "image_too_large": 413,
    "url_too_large": 413,
    "too_many_templates": 413,
    "too_many_prompts": 413,
    # the wrong kind
    "unsupported_media_type": 415,
    "unsupported_format": 415,
    # one key over its quota (with Retry-After)
    "quota_exceeded": 429,
    # readable, but not valid
    "invalid_request": 422,
    "invalid_image": 422,
    "invalid_base64": 422,
    "missing_image": 422,
    "invalid_labels": 422,
    "invalid_texts": 422,
    "too_many_labels": 422,
    "too_many_texts": 422,
    "duplicate_labels": 422,
    "duplicate_texts": 422,
    "label_too_long": 422,
    "invalid_templates": 422,
    "invalid_top_k": 422,
    "invalid_mode": 422,
    "invalid_threshold": 422,
    "invalid_calibration": 422,
    "invalid_label_set_name": 422,
    "invalid_url": 422,
    "invalid_input": 422,
    "unsupported_dimensions": 422,
    "unsupported_encoding_format": 422,
    "url_unreachable": 422,  # the URL's server: no answer, an error status, a broken response
    "url_timeout": 422,  # 4xx: the URL's server was slow, not this one (a 504 would blame us)
    # the client went away before its answer (nginx's code; nobody reads the body)
    "client_closed_request": 499,
    # the server's side
    "internal_error": 500,
    "model_unavailable": 503,
    "overloaded": 503,
    "queue_timeout": 503,
    "draining": 503,
    "encoder_stalled": 503,
    "encoder_out_of_memory": 503,
    "label_set_unreadable": 503,
    "label_set_building": 503,  # with Retry-After: about the build's ETA
    "label_sets_unwritable": 503,
    "insufficient_storage": 507,
}
RETRY = frozenset(
    {"model_unavailable", "overloaded", "queue_timeout", "encoder_out_of_memory"}
)  # 503s worth a Retry-After


class ApiError(Exception):
    """A request the API layer refuses while parsing it; `code` is a key of STATUS."""

    def __init__(self, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None):
        if code not in STATUS:
            raise ValueError(f"error code {code!r} has no HTTP status in app/api/errors.py STATUS")
        super().__init__(message)
        self.code, self.message, self.detail, self.headers = code, message, detail, headers


class BodyTooLarge(Exception):
    """The request body passed the limit while it was being read."""


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail}}


def respond(
    request: Request, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error response for a code: its status from STATUS, Retry-After where retrying helps."""
    if code in RETRY:
        headers = {**(headers or {}), "Retry-After": str(request.app.state.settings.retry_after_s)}
    return JSONResponse(error_body(code, message, detail), status_code=STATUS[code], headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, e: ApiError) -> JSONResponse:
        return respond(request, e.code, e.message, e.detail, e.headers)

    @app.exception_handler(EngineError)
    async def _engine(request: Request, e: EngineError) -> JSONResponse:
        wait = getattr(e, "retry_after_s", None)  # QuotaExceeded knows when the key may retry
        headers = None if wait is None else {"Retry-After": str(max(1, math.ceil(wait)))}
        return respond(request, e.code, e.message, e.detail, headers)

    @app.exception_handler(ImageError)
    async def _image(request: Request, e: ImageError) -> JSONResponse:
        return respond(request, e.code, e.message)

    @app.exception_handler(TemplateError)
    async def _templates(request: Request, e: TemplateError) -> JSONResponse:
        return respond(request, e.code, e.message)

    @app.exception_handler(BodyTooLarge)
    async def _body(request: Request, e: BodyTooLarge) -> JSONResponse:
        return respond(request, "body_too_large", str(e), None, {"Connection": "close"})

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, e: ClientDisconnect) -> JSONResponse:
        # The client's doing, not the server's: info, no traceback, counted as 499 (not 5xx)
        log.info("client disconnected before its answer: %s %s", request.method, request.url.path)
        return respond(request, "client_closed_request", "the client closed the connection")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", "")} for err in e.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(x) for x in first["loc"][1:]) or "request"
        return respond(request, "invalid_request", f"{where}: {first['msg']}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        # Starlette's own (unknown route, wrong method): their status is the one they come with
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        body = error_body(code, str(e.detail))
        return JSONResponse(body, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(OSError)
    async def _os(request: Request, e: OSError) -> JSONResponse:
        # A full disk (or quota, or file-size limit) is an operator's problem, not a bug: say so (507)
        # wherever it strikes, e.g. while Starlette spools a large upload to a temporary file. Other
        # OS errors are unexpected (500).
        if e.errno in NO_SPACE:
            log.error("no space left on a disk: %s", e)
            return respond(
                request, "insufficient_storage", "the server has no disk space left for this request"
            )
        log.exception("unhandled error")
        return respond(request, "internal_error", "internal server error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return respond(request, "internal_error", "internal server error")
