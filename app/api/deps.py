"""What routes take from the app: the runtime of this request, the batcher, the label-set store."""

from __future__ import annotations

from fastapi import Request

from app.api.errors import ApiError
from app.runtime.batcher import ImageBatcher
from app.runtime.label_sets import LabelSetStore
from app.runtime.service import ModelRuntime
from app.settings import Settings


def get_runtime(request: Request) -> ModelRuntime:
    """The runtime at the time of the call: a reload swaps the holder's, never this request's."""
    runtime: ModelRuntime | None = request.app.state.holder.runtime
    if runtime is None:
        raise ApiError(
            503,
            "model_unavailable",
            "no model is loaded",
            request.app.state.holder.error,
            {"Retry-After": str(request.app.state.settings.retry_after_s)},
        )
    return runtime


def settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


def batcher(request: Request) -> ImageBatcher:
    b: ImageBatcher = request.app.state.batcher
    return b


def label_sets(request: Request) -> LabelSetStore:
    store: LabelSetStore = request.app.state.label_sets
    return store


def model_ref(rt: ModelRuntime) -> dict[str, str]:
    return {"name": rt.bundle.name, "version": rt.bundle.version}
