"""POST /v1/embeddings in OpenAI's shapes, so the official `openai` package (and anything built on
it) works against this server unchanged: `OpenAI(base_url="http://host:8000/v1").embeddings.create`.

`input` is a string or a list of strings. A string that is a data: URL of an image, or (where
ZEROSHOT_URL_FETCH is on) an http(s) URL and nothing else, is an image; every other string is a text,
encoded as it is (no templates). Images and texts come back in the order sent, in one shared space.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import ApiKey, client_id
from app.api.body import JSON, base64_image, body_kind, read_json
from app.api.deps import EngineDep, SettingsDep
from app.api.disconnect import unless_disconnected
from app.api.errors import ApiError
from app.api.schemas import ERRORS
from app.runtime.engine import Embeddings, ImageUrl
from app.settings import Settings

router = APIRouter(dependencies=[ApiKey])

_URL = re.compile(r"https?://\S+\Z", re.IGNORECASE)


class OpenAIEmbeddingsJson(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "default", "input": ["a red circle", "a blue square"]}]},
    )
    model: str = Field(description="the model served (GET /v1/models: its name)")
    input: str | list[Any] = Field(
        description="a string or a list of strings: texts, or images as data: URLs "
        "(data:image/png;base64,...) or http(s) URLs where the server fetches them"
    )
    encoding_format: str | None = Field(
        default=None,
        description="float (default) or base64 (little-endian float32)",
        json_schema_extra={"enum": ["float", "base64"]},
    )
    dimensions: int | None = Field(default=None, description="accepted only when equal to the model's own")
    user: str | None = Field(default=None, description="accepted and ignored")


class EmbeddingItem(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: str = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


@router.post(
    "/v1/embeddings",
    summary="OpenAI-compatible embeddings of texts and images",
    description="OpenAI's request and response shapes: the `openai` package's embeddings.create works "
    "with base_url pointing at this server's /v1. usage counts the texts' tokens (start and end "
    "included); images count none.",
    response_model=None,
    responses={200: {"model": OpenAIEmbeddingsResponse}, **ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": OpenAIEmbeddingsJson.model_json_schema()}},
        }
    },
)
async def embeddings(request: Request, engine: EngineDep, s: SettingsDep) -> JSONResponse:
    body_kind(request, JSON)
    body = await read_json(request, OpenAIEmbeddingsJson)
    fmt = body.encoding_format or "float"
    if fmt not in ("float", "base64"):
        raise ApiError("unsupported_encoding_format", f"encoding_format must be float or base64, not {fmt!r}")
    dim = engine.runtime(body.model).encoders.embed_dim
    if body.dimensions is not None and body.dimensions != dim:
        raise ApiError(
            "unsupported_dimensions",
            f"dimensions={body.dimensions}: the model's embeddings have {dim} dimensions; "
            "send that or none (they are not truncated)",
        )
    texts, images = split_inputs(body.input, s)
    rows: list[np.ndarray | None] = [None] * (len(texts) + len(images))
    tokens = 0
    if texts:
        t = await unless_disconnected(
            request, engine.embed_texts(list(texts.values()), None, client_id(request), body.model)
        )
        tokens = t.tokens
        place(rows, list(texts), t)
    if images:
        with engine.admit(body.model) as ticket:
            work = engine.embed_images(list(images.values()), ticket, body.model)
            i = await unless_disconnected(request, work)
        place(rows, list(images), i)
    data = [{"object": "embedding", "index": n, "embedding": encode(r, fmt)} for n, r in enumerate(rows)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})


def split_inputs(raw: str | list[Any], s: Settings) -> tuple[dict[int, str], dict[int, bytes | ImageUrl]]:
    """The texts and the images of `input`, each by its position; ApiError for anything else."""
    items = [raw] if isinstance(raw, str) else raw
    if not items:
        raise ApiError("invalid_input", "input is empty: send a string or a list of strings")
    if len(items) > s.max_labels_per_request:
        raise ApiError(
            "too_many_texts", f"{len(items)} inputs; at most {s.max_labels_per_request} per request"
        )
    texts: dict[int, str] = {}
    images: dict[int, bytes | ImageUrl] = {}
    for i, item in enumerate(items):
        if not isinstance(item, str):
            what = "token ids" if isinstance(item, int | list) else type(item).__name__
            raise ApiError(
                "invalid_input", f"input[{i}] is {what}: send text, or an image as a data: or http(s) URL"
            )
        if not item.strip():
            raise ApiError("invalid_input", f"input[{i}] is empty")
        if item[:5].lower() == "data:":
            if item[5:11].lower() != "image/":
                raise ApiError(
                    "invalid_input", f"input[{i}]: a data: URL must hold an image (data:image/...)"
                )
            images[i] = base64_image(i, item, s)
        elif _URL.match(item):
            images[i] = ImageUrl(item)
        else:
            texts[i] = item
    if len(images) > s.max_images_per_request:
        raise ApiError(
            "too_many_images", f"{len(images)} images; at most {s.max_images_per_request} per request"
        )
    return texts, images


def place(rows: list[np.ndarray | None], where: list[int], e: Embeddings) -> None:
    for n, row in zip(where, e.features, strict=True):
        rows[n] = row


def encode(row: np.ndarray | None, fmt: str) -> list[float] | str:
    assert row is not None  # every position is a text or an image
    if fmt == "base64":  # what the openai package asks for by default, and decodes with numpy
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return list(row.tolist())
