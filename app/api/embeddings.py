"""POST /v1/embeddings/images and /v1/embeddings/texts: normalized features, for retrieval on top."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.auth import ApiKey, client_id
from app.api.body import (
    JSON,
    MULTIPART,
    base64_images,
    body_kind,
    read_form,
    read_json,
    text_field,
    uploaded_images,
)
from app.api.deps import EngineDep, SettingsDep
from app.api.disconnect import unless_disconnected
from app.api.fields import check_labels
from app.api.schemas import (
    ERRORS,
    IMAGE_ENCODING,
    IMAGE_URL_DOC,
    MODEL_DOC,
    MODEL_NAME,
    EmbeddingsResponse,
    ImagesJson,
    TextsJson,
)
from app.runtime.engine import Embeddings

router = APIRouter(dependencies=[ApiKey])

IMAGES_MULTIPART = {
    "type": "object",
    "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "image_url": {"type": "array", "items": {"type": "string"}, "description": IMAGE_URL_DOC},
        "model": {"type": "string", **MODEL_NAME, "description": MODEL_DOC},
    },
}


@router.post(
    "/v1/embeddings/images",
    summary="L2-normalized image features",
    response_model=None,
    responses={200: {"model": EmbeddingsResponse}, **ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                MULTIPART: {"schema": IMAGES_MULTIPART, "encoding": IMAGE_ENCODING},
                JSON: {"schema": ImagesJson.model_json_schema()},
            },
        }
    },
)
async def image_embeddings(request: Request, engine: EngineDep, s: SettingsDep) -> dict[str, Any]:
    with engine.admit() as ticket:  # 503 at once when the queue is full, before the body is read
        if body_kind(request, MULTIPART, JSON) == MULTIPART:
            form = await read_form(request, s)
            files = await uploaded_images(form.getlist("image"), s, form.getlist("image_url"))
            model = text_field(form, "model")
        else:
            body = await read_json(request, ImagesJson)
            files, model = base64_images(body.images, s), body.model
        return to_json(await unless_disconnected(request, engine.embed_images(files, ticket, model)))


@router.post(
    "/v1/embeddings/texts",
    summary="L2-normalized text features (optionally prompt-ensembled over templates)",
    response_model=None,
    responses={200: {"model": EmbeddingsResponse}, **ERRORS},
    openapi_extra={
        "requestBody": {"required": True, "content": {JSON: {"schema": TextsJson.model_json_schema()}}}
    },
)
async def text_embeddings(request: Request, engine: EngineDep, s: SettingsDep) -> dict[str, Any]:
    body_kind(request, JSON)
    body = await read_json(request, TextsJson)
    texts = check_labels(body.texts, s.max_labels_per_request, what="text")
    work = engine.embed_texts(texts, body.templates, client_id(request), body.model)
    return to_json(await unless_disconnected(request, work))


def to_json(e: Embeddings) -> dict[str, Any]:
    return {"model": e.model, "dim": int(e.features.shape[1]), "embeddings": e.features.tolist()}
