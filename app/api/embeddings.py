"""POST /v1/embeddings/images and /v1/embeddings/texts: normalized features, for retrieval on top."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.api import deps
from app.api.auth import ApiKey
from app.api.classify import check_token_lengths
from app.api.errors import ApiError
from app.api.inputs import (
    JSON,
    MULTIPART,
    URLENCODED,
    ImagesIn,
    check_labels,
    content_type,
    read_form,
    read_json,
)
from app.api.schemas import ERRORS, IMAGE_ENCODING, EmbeddingsResponse, ImagesJson, TextsJson
from model.prompts import resolve_templates

router = APIRouter(dependencies=[ApiKey])


@router.post(
    "/v1/embeddings/images",
    summary="L2-normalized image features",
    response_model=None,
    responses={200: {"model": EmbeddingsResponse}, **ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                MULTIPART: {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {
                            "image": {"type": "array", "items": {"type": "string", "format": "binary"}}
                        },
                    },
                    "encoding": IMAGE_ENCODING,
                },
                JSON: {"schema": ImagesJson.model_json_schema()},
            },
        }
    },
)
async def image_embeddings(request: Request) -> dict[str, Any]:
    rt = deps.get_runtime(request)
    s = deps.settings(request)
    batcher = deps.batcher(request)
    with batcher.announce() as coming:  # admission: 503 at once when full, body unread
        kind = content_type(request)
        if kind in (MULTIPART, URLENCODED):
            images = await ImagesIn.from_uploads((await read_form(request, s)).getlist("image"), s)
        elif kind == JSON:
            images = ImagesIn.from_base64((await read_json(request, ImagesJson)).images, s)
        else:
            raise ApiError(
                415, "unsupported_media_type", f"send {MULTIPART} or {JSON}, not {kind or 'nothing'}"
            )
        pixels = await images.pixels(rt.encoders.preprocess, s)
        items = batcher.submit(rt, pixels, s.queue_timeout_s, coming)
    feats = await batcher.wait(items)
    return {"model": deps.model_ref(rt), "dim": int(feats.shape[1]), "embeddings": feats.tolist()}


@router.post(
    "/v1/embeddings/texts",
    summary="L2-normalized text features (optionally prompt-ensembled over templates)",
    response_model=None,
    responses={200: {"model": EmbeddingsResponse}, **ERRORS},
    openapi_extra={
        "requestBody": {"required": True, "content": {JSON: {"schema": TextsJson.model_json_schema()}}}
    },
)
async def text_embeddings(request: Request) -> dict[str, Any]:
    rt = deps.get_runtime(request)
    s = deps.settings(request)
    if content_type(request) != JSON:
        raise ApiError(415, "unsupported_media_type", f"send {JSON}")
    body = await read_json(request, TextsJson)
    texts = check_labels(body.texts, s.max_labels_per_request, what="text")
    if body.templates is None:
        check_token_lengths(rt, texts, ("{}",))
        feats = await run_in_threadpool(rt.encoders.encode_texts, texts)
    else:
        tmpl = resolve_templates(body.templates)
        check_token_lengths(rt, texts, tmpl)
        feats = await run_in_threadpool(rt.label_matrix, texts, tmpl)
    return {"model": deps.model_ref(rt), "dim": int(feats.shape[1]), "embeddings": feats.tolist()}
