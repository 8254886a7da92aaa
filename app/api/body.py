"""Reading a request body: which kind it is, JSON into a model, a multipart form, image files.

Every problem becomes an ApiError with a message that says what was wrong; nothing here raises a 500.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from app.api.errors import ApiError
from app.runtime.errors import ImageFailure
from app.runtime.url_fetch import ImageUrl
from app.settings import Settings

M = TypeVar("M", bound=BaseModel)

MULTIPART, JSON = "multipart/form-data", "application/json"
URLENCODED = "application/x-www-form-urlencoded"


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def body_kind(request: Request, *accepted: str) -> str:
    """MULTIPART or JSON, whichever of `accepted` the request sends; 415 for anything else. A form
    without files arrives urlencoded: it counts as multipart, so the route can say what is missing."""
    kind = content_type(request)
    if kind == URLENCODED and MULTIPART in accepted:
        return MULTIPART
    if kind in accepted:
        return kind
    raise ApiError("unsupported_media_type", f"send {' or '.join(accepted)}, not {kind or 'no content type'}")


MAX_JSON_DEPTH = 200  # pydantic-core's parser refuses deeper nesting; no request needs more than 3


def parse_json(raw: bytes | str) -> Any:
    """JSON whose nesting is bounded: ValueError for bad or too deeply nested JSON. The standard
    library's json.loads recurses to the interpreter's limit and raises RecursionError (a 500 with a
    traceback, found with a body nested 100,000 arrays deep); pydantic-core's parser stops at
    MAX_JSON_DEPTH levels and is faster."""
    try:
        return from_json(raw)
    except ValueError as e:
        if "recursion limit" in str(e):
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
        raise


async def read_json(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data = parse_json(raw)
    except ValueError as e:
        raise ApiError("invalid_json", f"the body is not valid JSON: {e}") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errs = [{"loc": list(x["loc"]), "msg": x["msg"]} for x in e.errors(include_url=False)]
        where = ".".join(str(p) for p in errs[0]["loc"]) or "body"
        raise ApiError("invalid_request", f"{where}: {errs[0]['msg']}", errs) from None


def _parser_reason(e: BaseException) -> str | None:
    """python-multipart's own reason, which Starlette hides behind "Invalid multipart data."."""
    cause = e.__cause__ or e.__context__
    while cause is not None:
        if type(cause).__module__.startswith("python_multipart"):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    return None


async def read_form(request: Request, s: Settings) -> Any:
    try:
        return await request.form(
            max_files=s.max_images_per_request, max_fields=s.max_labels_per_request + 16
        )
    except HTTPException as e:  # starlette's MultiPartException, made a 400
        msg = str(e.detail)
        reason = _parser_reason(e)
        if reason and "Maximum header" in reason:  # python-multipart bounds each part's headers
            raise ApiError("field_too_large", f"a multipart part's headers are too large: {reason}") from None
        if reason:
            msg = f"{msg.rstrip('.')}: {reason}"
        if "Too many files" in msg:
            raise ApiError(
                "too_many_images", f"at most {s.max_images_per_request} images per request"
            ) from None
        if "Too many fields" in msg:
            raise ApiError("too_many_fields", f"{msg} (at most {s.max_labels_per_request} labels)") from None
        if "maximum size" in msg:
            raise ApiError("field_too_large", f"a form field is too large: {msg}") from None
        raise ApiError("invalid_multipart", f"the multipart body cannot be parsed: {msg}") from None


def text_field(form: Any, name: str) -> str | None:
    """A form field that must be text (not a file) when given."""
    v = form.get(name)
    if v is not None and not isinstance(v, str):
        raise ApiError("invalid_request", f"{name} must be a text field, not a file")
    return v


async def uploaded_images(
    items: list[Any], s: Settings, urls: list[Any] | None = None
) -> list[bytes | ImageUrl]:
    """The files of the multipart field 'image', checked for count and size, then the URLs of the
    fields 'image_url' (the engine fetches them)."""
    refs = _form_urls(urls or [])
    _present([*items, *refs], "send at least one image (multipart field 'image' or 'image_url')", s)
    files: list[bytes | ImageUrl] = [await _uploaded(i, f, s) for i, f in enumerate(items)]
    return files + refs


async def uploaded_images_or_failures(
    items: list[Any], s: Settings, urls: list[Any] | None = None
) -> list[bytes | ImageFailure | ImageUrl]:
    """on_error="skip": as uploaded_images, but a file that fails its own checks becomes an
    ImageFailure in its place and the request goes on."""
    refs = _form_urls(urls or [])
    _present([*items, *refs], "send at least one image (multipart field 'image' or 'image_url')", s)
    out: list[bytes | ImageFailure | ImageUrl] = []
    for i, f in enumerate(items):
        try:
            out.append(await _uploaded(i, f, s))
        except ApiError as e:
            out.append(ImageFailure(e.code, e.message))
    return out + refs


def _form_urls(values: list[Any]) -> list[ImageUrl]:
    if any(not isinstance(v, str) for v in values):
        raise ApiError("invalid_request", "image_url must be a text field holding a URL, not a file")
    return [ImageUrl(v) for v in values]


async def _uploaded(i: int, f: Any, s: Settings) -> bytes:
    if not isinstance(f, UploadFile):
        raise ApiError("invalid_image", f"image {i} is a text field; send it as a file")
    if f.size is not None and f.size > s.max_upload_bytes:
        raise ApiError("upload_too_large", f"image {i} is {f.size} bytes; at most {s.max_upload_bytes}")
    data = await f.read(s.max_upload_bytes + 1)
    if len(data) > s.max_upload_bytes:
        raise ApiError("upload_too_large", f"image {i} is larger than {s.max_upload_bytes} bytes")
    return data


def base64_images(items: list[Any], s: Settings) -> list[bytes | ImageUrl]:
    """JSON images: base64 strings (a data: URL prefix is accepted) -> the files, checked for count
    and size; {"url": ...} -> an ImageUrl (a data: URL in it is decoded here)."""
    _present(items, 'images: send at least one image (base64, or {"url": ...})', s)
    return [_json_image(i, item, s) for i, item in enumerate(items)]


def base64_images_or_failures(items: list[Any], s: Settings) -> list[bytes | ImageFailure | ImageUrl]:
    """on_error="skip": as base64_images, but one that fails becomes an ImageFailure in its place."""
    _present(items, 'images: send at least one image (base64, or {"url": ...})', s)
    out: list[bytes | ImageFailure | ImageUrl] = []
    for i, item in enumerate(items):
        try:
            out.append(_json_image(i, item, s))
        except ApiError as e:
            out.append(ImageFailure(e.code, e.message))
    return out


def _json_image(i: int, item: Any, s: Settings) -> bytes | ImageUrl:
    if isinstance(item, str):
        return _base64(i, item, s)
    url = item.url  # an ImageRef of app/api/schemas.py
    return _base64(i, url, s) if url.startswith("data:") else ImageUrl(url)


def base64_image(i: int, text: str, s: Settings) -> bytes:
    """One base64 image (images[i]), checked for size; the caller bounds the count."""
    return _base64(i, text, s)


def _base64(i: int, text: str, s: Settings) -> bytes:
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if not head.endswith(";base64"):
            raise ApiError("invalid_base64", f"images[{i}]: a data: URL must be ';base64,' encoded")
    if len(text) * 3 // 4 > s.max_upload_bytes + 3:
        raise ApiError("upload_too_large", f"images[{i}] is larger than {s.max_upload_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("invalid_base64", f"images[{i}] is not valid base64") from None


def _present(items: list[Any], missing: str, s: Settings) -> None:
    """At least one image, and no more than a request may carry (the whole request fails)."""
    if not items:
        raise ApiError("missing_image", missing)
    n = len(items)
    if n > s.max_images_per_request:
        raise ApiError("too_many_images", f"{n} images; at most {s.max_images_per_request} per request")
