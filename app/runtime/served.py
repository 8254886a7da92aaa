"""The models served: one ServedModel per folder named by ZEROSHOT_MODELS, the default first.

Each model has its own hot reload (a ModelHolder watching models/<name>/CURRENT), its own image
batcher - with its own worker thread, so one model's batches never queue behind another's - its own
reload preparation of the registered label sets, and the figure of the memory its load added. What
every model shares stays in the engine: the label cache (keyed by bundle sha, so two models never
mix), the text lane (one text encoder runs at a time, whichever model it belongs to), the label-set
definitions, the quotas and the URL fetcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from app.runtime.batcher import ImageBatcher
from app.runtime.errors import ModelNotFound, ModelUnavailable, Stalled
from app.runtime.model import ModelRuntime, RuntimeFactory
from app.runtime.reload import ModelHolder, ReloadResult, watch
from app.runtime.set_builds import Preparation, SetBuilds
from app.settings import Settings

log = logging.getLogger(__name__)


class ServedModel:
    def __init__(self, name: str, settings: Settings, factory: RuntimeFactory, builds: SetBuilds) -> None:
        self.name, self.settings, self.builds = name, settings, builds
        self.batcher = ImageBatcher(settings.max_batch, settings.max_wait_ms, settings.max_queue)
        self.preparation = Preparation()
        # a new version is swapped in once the registered sets are built for it; staged ones then build
        self.holder = ModelHolder(name, settings, factory, self._prepare, builds.resume)
        self._watcher: asyncio.Task[None] | None = None

    def _prepare(self, rt: ModelRuntime) -> None:
        self.builds.prepare(rt, self.preparation)

    async def start(self) -> None:
        """Start the batcher, load and warm the model, start watching its CURRENT."""
        self.batcher.start()
        result = await run_in_threadpool(self.holder.reload)
        if result.error:
            log.error("model %s: nothing loaded: %s", self.name, result.error)
        if self.settings.reload_interval_s:
            self._watcher = asyncio.create_task(watch(self.holder, self.settings.reload_interval_s))

    async def stop(self) -> None:
        """Stop watching, answer what is queued, stop the batcher."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await run_in_threadpool(self.batcher.close)

    async def reload(self) -> ReloadResult:
        return await run_in_threadpool(self.holder.reload)

    def runtime(self) -> ModelRuntime:
        """The runtime at the time of the call: a reload swaps the holder's, never a request's."""
        rt = self.holder.runtime
        if rt is None:
            raise ModelUnavailable(f"model {self.name!r} is not loaded", self.holder.error)
        return rt

    def stalled(self, limit_s: float) -> Stalled | None:
        """Why the image encoder counts as stuck (one call running longer than limit_s), or None."""
        running = self.batcher.running()
        if not limit_s or running is None or running[0] <= limit_s:
            return None
        seconds, images = running
        return Stalled(
            f"model {self.name!r}: the image encoder has been running one batch of {images} images for "
            f"{seconds:.0f} s (limit {limit_s:g} s)",
            {"model": self.name, "running_s": round(seconds, 1), "images": images, "limit_s": limit_s},
        )

    def describe(self) -> dict[str, Any]:
        """This model's part of GET /v1/models."""
        rt = self.holder.runtime
        shown = {"name": self.name, "loaded": False} if rt is None else {**rt.describe(), "loaded": True}
        return {
            **shown,
            "memory": self.holder.memory,
            "batcher": self.batcher.stats(),
            "reload_error": self.holder.error,
            "reload_preparation": {"running": self.preparation.running, "last": self.preparation.last},
        }


class ModelSet:
    """Every model served, by name; the first configured is the default a request without `model` gets."""

    def __init__(self, settings: Settings, factory: RuntimeFactory, builds: SetBuilds) -> None:
        names = settings.served_models
        # each model's own backend and precision (model_options), checked like the settings themselves
        self.by_name = {n: ServedModel(n, settings.for_model(n), factory, builds) for n in names}
        self.default = self.by_name[names[0]]

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, name: str | None) -> ServedModel:
        """The model a request names (None: the default); ModelNotFound listing those served."""
        if name is None:
            return self.default
        served = self.by_name.get(name)
        if served is None:
            known = list(self.by_name)
            raise ModelNotFound(
                f"model {name[:100]!r} is not served here; served: {', '.join(known)}", {"models": known}
            )
        return served

    def door(self) -> ServedModel:
        """Where a request is admitted before its body says which model it wants: the loaded model
        with the most room in its queue (ties: the first, so with one model always that one)."""
        loaded = [m for m in self if m.holder.runtime is not None] or [self.default]
        return max(loaded, key=lambda m: m.batcher.room)

    def loaded(self) -> list[ModelRuntime]:
        """The runtimes loaded now, the default first: what a label set is built for."""
        return [m.holder.runtime for m in self if m.holder.runtime is not None]

    def ready(self, watchdog_s: float) -> None:
        """Raise unless every model is ready: ModelUnavailable naming each one not loaded (and why),
        or Stalled naming one whose image encoder is stuck past watchdog_s."""
        waiting = {m.name: m.holder.error or "not loaded" for m in self if m.holder.runtime is None}
        if waiting:
            why = "; ".join(f"{n}: {r}" for n, r in waiting.items())
            raise ModelUnavailable(
                f"{len(waiting)} of {len(self)} models not ready ({why[:400]})", {"not_ready": waiting}
            )
        for m in self:
            stuck = m.stalled(watchdog_s)
            if stuck is not None:
                raise stuck

    def alive(self, watchdog_s: float) -> None:
        """Raise Stalled if one model's image-encoder worker is gone or stuck past watchdog_s."""
        for m in self:
            if not m.batcher.alive:
                raise Stalled(f"model {m.name!r}: the image-encoder worker thread has stopped")
            stuck = m.stalled(watchdog_s)
            if stuck is not None:
                raise stuck
