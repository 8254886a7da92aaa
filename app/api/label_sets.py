"""PUT/GET/DELETE /v1/label-sets/{name}: label sets registered once, embeddings persisted on disk.

Changes need the admin token; reading needs an API key (when keys are configured).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

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
    views = await engine.list_label_sets()
    return {"label_sets": [{**v.label_set.summary(), "status": v.status} for v in views]}


@router.get(
    "/v1/label-sets/{name}",
    summary="One label set, with its labels (and its calibration for `?model=`, default the first)",
    dependencies=[ApiKey],
    responses=ERRORS,
)
async def get_set(name: str, engine: EngineDep, model: str | None = None) -> dict[str, Any]:
    view, calibration = await engine.get_label_set(name, model)
    staged = None if view.staged is None else view.staged.summary()
    return {
        **view.label_set.to_json(),
        "status": view.status,  # ready: served; building: not yet (or a previous version serves); failed
        "build": None if view.build is None else view.build.describe(),
        "staged": staged,  # a newer definition being built while this one serves
        "calibration": calibration.describe(),
    }


@router.put(
    "/v1/label-sets/{name}",
    summary="Register or replace a label set; its embeddings are built in the background and kept on disk",
    description="Needs the admin token. Answers 200 when the set's embeddings are built within "
    "ZEROSHOT_LABEL_SET_WAIT_S (a second by default), else 202 with a Location to poll: GET shows the "
    "build's progress and status (building, ready, failed). Until it is ready, requests naming the set "
    "are scored with its previous version, or get 503 label_set_building with a Retry-After when there "
    "is none. `?wait=true` holds the call until the build ends instead.",
    dependencies=[Admin],
    status_code=200,
    responses={
        **ERRORS,
        202: {"description": "accepted: the set is building in the background (GET its Location)"},
        507: {"model": ErrorResponse, "description": "no disk space left to store the set; nothing changed"},
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {JSON: {"schema": LabelSetPut.model_json_schema()}}}
    },
)
async def put_set(
    request: Request, response: Response, name: str, engine: EngineDep, s: SettingsDep, wait: bool = False
) -> dict[str, Any]:
    body_kind(request, JSON)
    body = await read_json(request, LabelSetPut)
    labels = check_labels(body.labels, s.max_labels_per_request)
    stored = await engine.put_label_set(name, labels, body.templates, wait)
    build = stored.build.describe()
    out = {**stored.label_set.summary(), "status": build["status"], "build": build}
    if build["status"] == "superseded":  # a newer PUT (or a DELETE) took the name's place since
        pass
    elif build["status"] == "ready":
        out["embeddings"] = {
            "model": build["model"],
            "source": build["source"],
            "build_ms": 1000 * build["elapsed_s"],
        }
    else:  # still building: where to follow it
        response.status_code = 202
        response.headers["Location"] = out["status_url"] = f"/v1/label-sets/{stored.label_set.name}"
    return out


@router.delete("/v1/label-sets/{name}", summary="Delete a label set", dependencies=[Admin], responses=ERRORS)
async def delete_set(name: str, engine: EngineDep) -> dict[str, Any]:
    await engine.delete_label_set(name)
    return {"deleted": name}


@router.post(
    "/v1/label-sets/{name}/calibration",
    summary="Calibrate a label set for a model served (`model`, default the first), from labelled images",
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
    fit = await engine.calibrate(name, files, [x.label for x in body.images], target, body.model)
    return {"name": name, "calibration": {"status": "fitted", **fit.to_json()}}
