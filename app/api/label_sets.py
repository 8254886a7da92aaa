"""PUT/GET/DELETE /v1/label-sets/{name}: label sets registered once, embeddings persisted on disk.

Changes need the admin token; reading needs an API key (when keys are configured).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.auth import Admin, ApiKey
from app.api.body import JSON, base64_image, body_kind, read_json
from app.api.deps import EngineDep, SettingsDep
from app.api.errors import ApiError
from app.api.fields import check_labels, parse_threshold
from app.api.schemas import ERRORS, CalibrationPost, ErrorResponse, LabelSetPut
from model.bundle.calibration_fit import Target

router = APIRouter()


@router.get(
    "/v1/label-sets", summary="List the registered label sets", dependencies=[ApiKey], responses=ERRORS
)
async def list_sets(engine: EngineDep) -> dict[str, Any]:
    return {"label_sets": [ls.summary() for ls in await engine.list_label_sets()]}


@router.get(
    "/v1/label-sets/{name}", summary="One label set, with its labels", dependencies=[ApiKey], responses=ERRORS
)
async def get_set(name: str, engine: EngineDep) -> dict[str, Any]:
    ls, calibration = await engine.get_label_set(name)
    return {**ls.to_json(), "calibration": calibration.describe()}


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
async def put_set(request: Request, name: str, engine: EngineDep, s: SettingsDep) -> dict[str, Any]:
    body_kind(request, JSON)
    body = await read_json(request, LabelSetPut)
    labels = check_labels(body.labels, s.max_labels_per_request)
    stored = await engine.put_label_set(name, labels, body.templates)
    return {
        **stored.label_set.summary(),
        "embeddings": {"model": stored.model, "source": stored.source, "build_ms": stored.build_ms},
    }


@router.delete("/v1/label-sets/{name}", summary="Delete a label set", dependencies=[Admin], responses=ERRORS)
async def delete_set(name: str, engine: EngineDep) -> dict[str, Any]:
    await engine.delete_label_set(name)
    return {"deleted": name}


@router.post(
    "/v1/label-sets/{name}/calibration",
    summary="Calibrate a label set for the model served, from labelled images",
    description="Needs the admin token. Fits the softmax temperature, each label's multi-mode sigmoid and "
    "the abstain rule, stores them beside the set and uses them for every request naming it; a new model "
    "makes them stale until the set is calibrated again. `zeroshot calibrate` does the same from a folder.",
    dependencies=[Admin],
    responses=ERRORS,
    openapi_extra={
        "requestBody": {"required": True, "content": {JSON: {"schema": CalibrationPost.model_json_schema()}}}
    },
)
async def calibrate(request: Request, name: str, engine: EngineDep, s: SettingsDep) -> dict[str, Any]:
    body_kind(request, JSON)
    body = await read_json(request, CalibrationPost)
    if not body.images:
        raise ApiError("missing_image", "images: send labelled images to calibrate on")
    if len(body.images) > s.max_calibration_images:
        raise ApiError(
            "too_many_images",
            f"{len(body.images)} images; at most {s.max_calibration_images} per calibration",
        )
    files = [base64_image(i, x.image, s) for i, x in enumerate(body.images)]
    target = Target(
        parse_threshold(body.target_precision, "target_precision", 0.0, 1.0),
        parse_threshold(body.target_fpr, "target_fpr", 0.0, 1.0),
    )
    fit = await engine.calibrate(name, files, [x.label for x in body.images], target)
    return {"name": name, "calibration": {"status": "fitted", **fit.to_json()}}
