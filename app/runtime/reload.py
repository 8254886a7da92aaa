"""Hot reload: watch models/<name>/CURRENT and swap in a new model once it is loaded and warm.

A new version is loaded (by the runtime factory: validated, its sessions opened), warmed and prepared
(the engine's hook: the registered label sets built for it) beside the old one, then swapped in with
one attribute assignment; a request holds the runtime it started
with, so requests in flight finish on their model. A version that fails to load is refused and
reported, and the old model keeps serving.

Each model served has its own holder. Loads of different models never overlap (one process-wide
lock around loading and warming), so the resident memory a load adds can be read around it: the
figure a user sizes replicas by, shown per model in /v1/models. Once the model a reload replaced is
gone (the last request on it answered), the heap pages it freed are given back to the system:
glibc keeps them otherwise, and each ViT-B/32 reload left ~500 MB more resident (bench/README.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from app.runtime.model import ModelRuntime, RuntimeFactory, warm_up
from app.settings import Settings
from model.bundle.format import BundleError, read_current

log = logging.getLogger(__name__)

_LOADING = threading.Lock()  # one model load at a time in the process, so its RSS growth is its own


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc; not on musl or macOS
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return the heap pages freed so far to the system (glibc's malloc_trim); False where unavailable."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def rss_bytes() -> int | None:
    """This process's resident set size, from /proc (None where there is no /proc: not Linux)."""
    try:
        with open(f"/proc/{os.getpid()}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


@dataclass
class ReloadResult:
    changed: bool
    version: str | None
    error: str | None = None


class ModelHolder:
    """The runtime being served, swapped atomically; at most one load runs at a time."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        factory: RuntimeFactory,
        prepare: Callable[[ModelRuntime], None] | None = None,
        swapped: Callable[[ModelRuntime], None] | None = None,
    ) -> None:
        self.name, self.settings, self.factory = name, settings, factory
        self.prepare, self.swapped = prepare, swapped  # before and after a new runtime is swapped in
        self.runtime: ModelRuntime | None = None
        self.error: str | None = "the model is still loading"
        self.memory: dict[str, int | str | None] | None = None  # what the last load added to the RSS
        self._retired: list[weakref.ref[ModelRuntime]] = []  # replaced, perhaps still answering requests
        self._lock = threading.Lock()

    @property
    def model_dir(self) -> Path:
        return self.settings.models_dir / self.name

    def _load(self, version: str) -> tuple[ModelRuntime, dict[str, int | str | None]]:
        """Load and warm `version`; the resident memory it added (blocking)."""
        with _LOADING:
            before = rss_bytes()
            fresh = self.factory(self.settings, self.name, version)
            warm_up(fresh, self.settings.max_batch)
            after = rss_bytes()
        grown = None if before is None or after is None else max(after - before, 0)
        # glibc may reuse memory freed earlier, so a reload can add less than a first load did
        return fresh, {"version": version, "rss_growth_bytes": grown, "rss_after_bytes": after}

    def reload(self) -> ReloadResult:
        """Load CURRENT if it names a version other than the one served (blocking; call off the loop)."""
        with self._lock:
            self._release_retired()  # every check (the watcher's, every few seconds) looks again
            try:
                version = read_current(self.model_dir)
            except BundleError as e:
                self.error = str(e)
                return ReloadResult(False, None, self.error)
            if self.runtime is not None and self.runtime.version == version:
                return ReloadResult(False, version)
            try:
                fresh, memory = self._load(version)
                if self.prepare is not None:
                    self.prepare(fresh)
            except Exception as e:  # a broken bundle must never take the serving model down
                self.error = f"version {version} refused: {e}"
                log.error("model %s: reload refused: %s", self.name, self.error)
                return ReloadResult(False, version, self.error)
            old, self.runtime, self.error, self.memory = self.runtime, fresh, None, memory
            log.info("now serving %s/%s (was %s)", fresh.name, version, old.version if old else "nothing")
            if self.swapped is not None:
                try:
                    self.swapped(fresh)
                except Exception:  # the new model serves whatever this hook fails at
                    log.exception("after the swap to %s", version)
            if old is not None:
                self._retired.append(weakref.ref(old))
                del old  # with no request on it, the old model is freed here and released at once
                self._release_retired()
            return ReloadResult(True, version)

    def _release_retired(self) -> None:
        """Once no model a reload replaced is referenced any more, give its freed memory back."""
        if self._retired and all(r() is None for r in self._retired):
            self._retired.clear()
            if release_freed_memory():
                log.info("model %s: memory of the replaced version released", self.name)


async def watch(holder: ModelHolder, interval_s: float) -> None:
    """Poll CURRENT every interval_s seconds (cheap: one small file read) until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(holder.reload)
        except Exception:  # keep watching whatever happens
            log.exception("reload check failed")
