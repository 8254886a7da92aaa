"""Hot reload: watch models/<name>/CURRENT and swap in a new model once it is loaded and warm.

A new version is loaded (by the runtime factory: validated, its sessions opened), warmed and prepared
(the engine's hook: the registered label sets built for it) beside the old one, then swapped in with
one attribute assignment; a request holds the runtime it started
with, so requests in flight finish on their model. A version that fails to load is refused and
reported, and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from app.runtime.model import ModelRuntime, RuntimeFactory, warm_up
from app.settings import Settings
from model.bundle.format import BundleError, read_current

log = logging.getLogger(__name__)


@dataclass
class ReloadResult:
    changed: bool
    version: str | None
    error: str | None = None


class ModelHolder:
    """The runtime being served, swapped atomically; at most one load runs at a time."""

    def __init__(
        self,
        settings: Settings,
        factory: RuntimeFactory,
        prepare: Callable[[ModelRuntime], None] | None = None,
        swapped: Callable[[ModelRuntime], None] | None = None,
    ) -> None:
        self.settings, self.factory = settings, factory
        self.prepare, self.swapped = prepare, swapped  # before and after a new runtime is swapped in
        self.runtime: ModelRuntime | None = None
        self.error: str | None = "the model is still loading"
        self._lock = threading.Lock()

    @property
    def model_dir(self) -> Path:
        return self.settings.models_dir / self.settings.model_name

    def reload(self) -> ReloadResult:
        """Load CURRENT if it names a version other than the one served (blocking; call off the loop)."""
        with self._lock:
            try:
                version = read_current(self.model_dir)
            except BundleError as e:
                self.error = str(e)
                return ReloadResult(False, None, self.error)
            if self.runtime is not None and self.runtime.version == version:
                return ReloadResult(False, version)
            try:
                fresh = self.factory(self.settings, version)
                warm_up(fresh, self.settings.max_batch)
                if self.prepare is not None:
                    self.prepare(fresh)
            except Exception as e:  # a broken bundle must never take the serving model down
                self.error = f"version {version} refused: {e}"
                log.error("reload refused: %s", self.error)
                return ReloadResult(False, version, self.error)
            old, self.runtime, self.error = self.runtime, fresh, None
            log.info("now serving %s/%s (was %s)", fresh.name, version, old.version if old else "nothing")
            if self.swapped is not None:
                try:
                    self.swapped(fresh)
                except Exception:  # the new model serves whatever this hook fails at
                    log.exception("after the swap to %s", version)
            return ReloadResult(True, version)


async def watch(holder: ModelHolder, interval_s: float) -> None:
    """Poll CURRENT every interval_s seconds (cheap: one small file read) until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(holder.reload)
        except Exception:  # keep watching whatever happens
            log.exception("reload check failed")
