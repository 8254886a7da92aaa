"""POST /v1/classify: images + candidate labels -> labels ranked by cosine similarity."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.errors import ApiError
from app.runtime.service import ModelRuntime
from model.preprocess import preprocess_bytes
from model.prompts import resolve_templates

router = APIRouter()


def get_runtime(request: Request) -> ModelRuntime:
    """The runtime at the time of the call: a reload swaps the holder's, never this request's."""
    runtime: ModelRuntime | None = request.app.state.holder.runtime
    if runtime is None:
        raise ApiError(503, "model_unavailable", "no model is loaded", request.app.state.holder.error)
    return runtime


def parse_labels(raw: list[str], max_labels: int) -> list[str]:
    """Repeated `labels` fields, or one field holding a JSON array of strings."""
    labels = raw
    if len(raw) == 1 and raw[0].lstrip().startswith("["):
        try:
            labels = json.loads(raw[0])
        except ValueError as e:
            raise ApiError(422, "invalid_labels", f"labels is not a valid JSON array: {e}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ApiError(422, "invalid_labels", "labels must be a JSON array of strings")
    if not labels:
        raise ApiError(422, "invalid_labels", "at least one label is required")
    if len(labels) > max_labels:
        raise ApiError(422, "too_many_labels", f"{len(labels)} labels; at most {max_labels} per request")
    seen: set[str] = set()
    for lb in labels:
        if not lb.strip():
            raise ApiError(422, "invalid_labels", "labels must not be empty or blank")
        if any(ord(c) < 32 and c not in "\t" for c in lb):
            raise ApiError(422, "invalid_labels", f"label {lb[:40]!r} contains control characters")
        if lb in seen:
            raise ApiError(422, "duplicate_labels", f"label {lb[:80]!r} is given more than once")
        seen.add(lb)
    return labels


async def read_images(files: list[UploadFile], runtime: ModelRuntime) -> np.ndarray:
    s = runtime.settings
    if len(files) > s.max_images_per_request:
        raise ApiError(413, "too_many_images", f"{len(files)} images; at most {s.max_images_per_request}")
    out = []
    for i, f in enumerate(files):
        data = await f.read(s.max_upload_bytes + 1)
        if len(data) > s.max_upload_bytes:
            raise ApiError(413, "upload_too_large", f"image {i} is larger than {s.max_upload_bytes} bytes")
        out.append(
            await run_in_threadpool(
                preprocess_bytes,
                data,
                runtime.encoders.preprocess,
                allowed_formats=s.allowed_formats,
                max_pixels=s.max_image_pixels,
            )
        )
    return np.stack(out)


@router.post("/v1/classify", summary="Rank candidate labels for one or more images")
async def classify(
    request: Request,
    image: Annotated[list[UploadFile], File(description="one or more image files")],
    labels: Annotated[list[str], Form(description="repeated fields, or one field with a JSON array")],
    templates: Annotated[str | None, Form(description="a template set name or a JSON array")] = None,
    top_k: Annotated[int | None, Form(ge=1, le=100_000)] = None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    runtime = get_runtime(request)
    label_list = parse_labels(labels, runtime.settings.max_labels_per_request)
    tmpl = resolve_templates(templates)
    context = runtime.encoders.tokenizer.context_length
    for lb, n in zip(label_list, runtime.token_length(label_list, tmpl), strict=True):
        if n > context:
            raise ApiError(
                422, "label_too_long", f"label {lb[:60]!r} is {n} tokens with its template; max {context}"
            )
    pixels = await read_images(image, runtime)
    k = min(top_k or runtime.settings.default_top_k, len(label_list))
    t1 = time.perf_counter()
    results, timing = await run_in_threadpool(runtime.classify, pixels, label_list, tmpl, k)
    return {
        "model": {"name": runtime.bundle.name, "version": runtime.bundle.version},
        "results": [{"labels": [r.__dict__ for r in row]} for row in results],
        "timing_ms": {"decode_ms": 1000 * (t1 - t0), **timing, "total_ms": 1000 * (time.perf_counter() - t0)},
    }
