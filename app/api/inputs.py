"""Request parsing shared by the routes: multipart or JSON bodies, base64 images, labels, top_k.

Every problem becomes an ApiError with a message that says what was wrong; nothing here raises a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import ApiError, BodyTooLarge, error_body
from app.settings import Settings
from model.preprocess import ImageError, PreprocessConfig, preprocess_bytes

M = TypeVar("M", bound=BaseModel)

MULTIPART, JSON = "multipart/form-data", "application/json"
URLENCODED = "application/x-www-form-urlencoded"
FIELDS_BYTES = 2 * 1024 * 1024  # room for labels and other fields beside the images
MAX_LABEL_CHARS = 1000  # 77 tokens are a few hundred characters at most; longer is refused unread


def body_limit(s: Settings) -> int:
    """The largest body any route accepts: every image at its limit, base64-encoded, plus fields."""
    return s.max_images_per_request * (s.max_upload_bytes * 4 // 3 + 4) + FIELDS_BYTES


class BodyLimitMiddleware:
    """Refuse an over-long body before reading it (Content-Length) or as soon as it passes the limit
    (chunked uploads), so no request can make the server buffer more than the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                body = json.dumps(
                    error_body("body_too_large", f"the request body is {int(v)} bytes; at most {self.limit}")
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(f"the request body passed {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errs = [{"loc": list(x["loc"]), "msg": x["msg"]} for x in e.errors(include_url=False)]
        where = ".".join(str(p) for p in errs[0]["loc"]) or "body"
        raise ApiError(422, "invalid_request", f"{where}: {errs[0]['msg']}", errs) from None


async def read_form(request: Request, s: Settings) -> Any:
    try:
        return await request.form(
            max_files=s.max_images_per_request, max_fields=s.max_labels_per_request + 16
        )
    except HTTPException as e:  # starlette's MultiPartException, made a 400
        msg = str(e.detail)
        if "Too many files" in msg:
            raise ApiError(
                413, "too_many_images", f"at most {s.max_images_per_request} images per request"
            ) from None
        if "Too many fields" in msg:
            raise ApiError(
                413, "too_many_fields", f"{msg} (at most {s.max_labels_per_request} labels)"
            ) from None
        if "maximum size" in msg:
            raise ApiError(413, "field_too_large", f"a form field is too large: {msg}") from None
        raise ApiError(400, "invalid_multipart", f"the multipart body cannot be parsed: {msg}") from None


@dataclass
class ImagesIn:
    """Encoded image files from either body kind, checked for count and size."""

    files: list[bytes] = field(default_factory=list)

    @classmethod
    async def from_uploads(cls, items: list[Any], s: Settings) -> ImagesIn:
        if not items:
            raise ApiError(422, "missing_image", "send at least one image (multipart field 'image')")
        _count(len(items), s)
        files = []
        for i, f in enumerate(items):
            if not isinstance(f, UploadFile):
                raise ApiError(422, "invalid_image", f"image {i} is a text field; send it as a file")
            if f.size is not None and f.size > s.max_upload_bytes:
                raise ApiError(
                    413, "upload_too_large", f"image {i} is {f.size} bytes; at most {s.max_upload_bytes}"
                )
            data = await f.read(s.max_upload_bytes + 1)
            if len(data) > s.max_upload_bytes:
                raise ApiError(
                    413, "upload_too_large", f"image {i} is larger than {s.max_upload_bytes} bytes"
                )
            files.append(data)
        return cls(files)

    @classmethod
    def from_base64(cls, items: list[str], s: Settings) -> ImagesIn:
        if not items:
            raise ApiError(422, "missing_image", "images: send at least one base64-encoded image")
        _count(len(items), s)
        files = []
        for i, text in enumerate(items):
            if text.startswith("data:"):
                head, _, text = text.partition(",")
                if not head.endswith(";base64"):
                    raise ApiError(
                        422, "invalid_base64", f"images[{i}]: a data: URL must be ';base64,' encoded"
                    )
            if len(text) * 3 // 4 > s.max_upload_bytes + 3:
                raise ApiError(
                    413, "upload_too_large", f"images[{i}] is larger than {s.max_upload_bytes} bytes"
                )
            try:
                files.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise ApiError(422, "invalid_base64", f"images[{i}] is not valid base64") from None
        return cls(files)

    async def pixels(self, pre: PreprocessConfig, s: Settings) -> np.ndarray:
        """Decode and preprocess every image off the event loop: [n, 3, S, S] float32."""

        def run() -> np.ndarray:
            out = np.empty((len(self.files), 3, pre.image_size, pre.image_size), np.float32)
            for i, data in enumerate(self.files):
                try:
                    out[i] = preprocess_bytes(
                        data,
                        pre,
                        allowed_formats=s.allowed_formats,
                        max_pixels=s.max_image_pixels,
                        jpeg_draft=s.jpeg_draft,
                    )
                except ImageError as e:
                    if len(self.files) > 1:
                        e.message = f"image {i}: {e.message}"  # say which image, when there are several
                    raise
            return out

        return await run_in_threadpool(run)


def _count(n: int, s: Settings) -> None:
    if n > s.max_images_per_request:
        raise ApiError(413, "too_many_images", f"{n} images; at most {s.max_images_per_request} per request")


def parse_labels(raw: list[str], max_labels: int, what: str = "label") -> list[str]:
    """Repeated fields, or one field holding a JSON array of strings; non-empty, unique, printable."""
    labels: Any = raw
    if len(raw) == 1 and raw[0].lstrip().startswith("["):
        try:
            labels = json.loads(raw[0])
        except ValueError as e:
            raise ApiError(422, f"invalid_{what}s", f"{what}s is not a valid JSON array: {e}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ApiError(422, f"invalid_{what}s", f"{what}s must be a JSON array of strings")
    return check_labels(labels, max_labels, what)


def check_labels(labels: list[str], max_labels: int, what: str = "label") -> list[str]:
    if not labels:
        raise ApiError(422, f"invalid_{what}s", f"at least one {what} is required")
    if len(labels) > max_labels:
        raise ApiError(422, f"too_many_{what}s", f"{len(labels)} {what}s; at most {max_labels} per request")
    seen: set[str] = set()
    for i, lb in enumerate(labels):
        if len(lb) > MAX_LABEL_CHARS:  # far past any context length: refuse before tokenizing it
            raise ApiError(
                422, "label_too_long", f"{what} {i} is {len(lb):,} characters; at most {MAX_LABEL_CHARS:,}"
            )
        if not lb.strip():
            raise ApiError(422, f"invalid_{what}s", f"{what} {i} is empty or blank")
        if any(ord(c) < 32 or ord(c) == 127 for c in lb):
            raise ApiError(422, f"invalid_{what}s", f"{what} {lb[:40]!r} contains control characters")
        if lb in seen:
            raise ApiError(422, f"duplicate_{what}s", f"{what} {lb[:80]!r} is given more than once")
        seen.add(lb)
    return labels


def parse_top_k(raw: Any, default: int, n_labels: int) -> int:
    """top_k >= 1; larger than the label count means all labels."""
    if raw is None or raw == "":
        return min(default, n_labels)
    if isinstance(raw, bool):
        raise ApiError(422, "invalid_top_k", "top_k must be a whole number >= 1")
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise ApiError(
            422, "invalid_top_k", f"top_k must be a whole number >= 1, not {str(raw)[:20]!r}"
        ) from None
    if k < 1:
        raise ApiError(422, "invalid_top_k", f"top_k must be >= 1, not {k}")
    return min(k, n_labels)
