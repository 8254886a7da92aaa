"""PUT/GET/DELETE /v1/label-sets/{name}: label sets registered once, embeddings persisted on disk.

Changes need the admin token; reading needs an API key (when keys are configured).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.api import deps
from app.api.auth import Admin, ApiKey
from app.api.classify import check_token_lengths
from app.api.errors import ApiError
from app.api.inputs import JSON, check_labels, content_type, read_json
from app.api.schemas import ERRORS, ErrorResponse, LabelSetPut
from app.runtime.label_sets import check_name
from model.prompts import TEMPLATE_SETS, resolve_templates

router = APIRouter()


@router.get(
    "/v1/label-sets", summary="List the registered label sets", dependencies=[ApiKey], responses=ERRORS
)
async def list_sets(request: Request) -> dict[str, Any]:
    sets = await run_in_threadpool(deps.label_sets(request).list)
    return {"label_sets": [ls.summary() for ls in sets]}


@router.get(
    "/v1/label-sets/{name}", summary="One label set, with its labels", dependencies=[ApiKey], responses=ERRORS
)
async def get_set(request: Request, name: str) -> dict[str, Any]:
    ls = await run_in_threadpool(deps.label_sets(request).get, name)
    return ls.to_json()


@router.put(
    "/v1/label-sets/{name}",
    summary="Register or replace a label set; its embeddings are computed now and kept on disk",
    description="Needs the admin token. Encoding 1,000 labels x 80 templates takes a while on a large "
    "model on CPU: the call returns when the embeddings are ready; other requests are served meanwhile.",
    dependencies=[Admin],
    responses={
        **ERRORS,
        507: {"model": ErrorResponse, "description": "no disk space left to store the set; nothing changed"},
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {JSON: {"schema": LabelSetPut.model_json_schema()}}}
    },
)
async def put_set(request: Request, name: str) -> dict[str, Any]:
    check_name(name)
    if content_type(request) != JSON:
        raise ApiError(415, "unsupported_media_type", f"send {JSON}")
    body = await read_json(request, LabelSetPut)
    s = deps.settings(request)
    labels = check_labels(body.labels, s.max_labels_per_request)
    templates = resolve_templates(body.templates)
    set_name = body.templates if isinstance(body.templates, str) and body.templates in TEMPLATE_SETS else None
    if body.templates is None:
        set_name = "default"
    rt = deps.get_runtime(request)
    check_token_lengths(rt, labels, templates)
    store = deps.label_sets(request)
    t = time.perf_counter()
    ls = await run_in_threadpool(store.put, name, labels, templates, set_name)
    _, source = await run_in_threadpool(store.matrix, rt, ls)
    return {
        **ls.summary(),
        "embeddings": {
            "model": deps.model_ref(rt),
            "source": source,
            "build_ms": round(1000 * (time.perf_counter() - t), 1),
        },
    }


@router.delete("/v1/label-sets/{name}", summary="Delete a label set", dependencies=[Admin], responses=ERRORS)
async def delete_set(request: Request, name: str) -> dict[str, Any]:
    await run_in_threadpool(deps.label_sets(request).delete, name)
    return {"deleted": name}
