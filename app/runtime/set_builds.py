"""Label sets built in the background, and built for a new model before it is swapped in.

PUT stages a set's definition (app/runtime/label_sets.py) and starts its build here, on a thread of
its own; the prompts go through the text lane like every other, so requests are served meanwhile.
A build reports its progress (prompts done of all, rate, ETA) for GET. Once the matrix is built and
stored, the staged definition takes the name's place: the previous version of the set serves until
then, and nothing half-built is ever served. A restart finds the staged definitions and builds them
again (`resume`). A hot reload calls `prepare` with the new model before the swap: every registered
set's matrix (and the negative-label lexicon, when in use) is built or loaded for it first, so the
first requests on the new model find them ready instead of each waiting for a build.

With several models served, a set's definition is shared and its build covers every model loaded,
one after the other; the new definition takes the name's place once it is built for all of them.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.runtime.errors import LabelSetBuilding, LabelSetError
from app.runtime.label_sets import LabelSet, LabelSetStore
from app.runtime.labels import LabelMatrices
from app.runtime.lexicon import Lexicon
from app.runtime.model import ModelRuntime

log = logging.getLogger(__name__)

Status = Literal["building", "ready", "failed", "superseded"]
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0  # Retry-After for a request naming a set still building


class BuildCancelled(Exception):
    """Raised in a build's progress callback once a newer definition or a DELETE superseded it."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(eq=False)
class Build:
    """One set's build for the models served: its progress while it runs, its outcome after."""

    label_set: LabelSet
    runtimes: tuple[ModelRuntime, ...]  # built for each in turn, the default first; () once finished
    total: int = 0  # prompts to encode: labels x templates x models; fewer once the cache says what it holds
    done: int = 0
    status: Status = "building"
    source: str | None = None  # where the matrix came from: memory, disk or encoded
    error: LabelSetError | None = None
    cancelled: bool = False
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=_now)
    finished: float | None = None
    event: threading.Event = field(default_factory=threading.Event)
    step: int = 0  # the model being built: an index into runtimes
    _before: int = 0  # prompts encoded for the models already built
    _current: int = 0  # prompts the model being built encodes
    shas: tuple[str, ...] = ()  # of the runtimes, kept once they are let go
    models: list[dict[str, str]] = field(default_factory=list)  # their refs, for GET

    def __post_init__(self) -> None:
        self.total = self.per_model * len(self.runtimes)
        self.shas = tuple(rt.sha for rt in self.runtimes)
        self.models = [rt.ref for rt in self.runtimes]

    def progress(self, done: int, total: int) -> None:
        """Prompts done of `total` for the model being built (after those of the models before it)."""
        if self.cancelled:
            raise BuildCancelled
        self._current = total
        left = len(self.runtimes) - self.step - 1
        self.done, self.total = self._before + done, self._before + total + left * self.per_model

    def model_built(self) -> None:
        """The model being built is done: what it encoded counts, the next one starts."""
        self._before += self._current
        self._current, self.step = 0, self.step + 1
        self.done = self._before
        self.total = self._before + (len(self.runtimes) - self.step) * self.per_model

    @property
    def per_model(self) -> int:
        return len(self.label_set.labels) * len(self.label_set.templates)

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        return self.done / max(self.elapsed_s, 1e-9)

    @property
    def eta_s(self) -> float | None:
        if self.status != "building":
            return None
        return (self.total - self.done) / self.rate if self.done else None

    def retry_after_s(self) -> float:
        eta = self.eta_s
        return RETRY_MAX_S / 6 if eta is None else min(max(eta, RETRY_MIN_S), RETRY_MAX_S)

    def describe(self) -> dict[str, Any]:
        eta = self.eta_s
        return {
            "status": self.status,
            "model": self.models[0] if self.models else None,
            "models": self.models,
            "labels": len(self.label_set.labels),
            "templates": len(self.label_set.templates),
            "prompts_done": self.total if self.status == "ready" else self.done,
            "prompts_total": self.total,
            "prompts_per_s": round(self.rate, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "elapsed_s": round(self.elapsed_s, 2),
            "started_at": self.started_at,
            "source": self.source,
            "error": None if self.error is None else {"code": self.error.code, "message": self.error.message},
        }


@dataclass
class Preparation:
    """One model's reload preparation: the one under way, and the last one's figures (/v1/models)."""

    running: dict[str, Any] | None = None
    last: dict[str, Any] | None = None


@dataclass(frozen=True)
class SetView:
    label_set: LabelSet  # the definition served, or the staged one while there is none
    status: str  # ready, building or failed
    build: Build | None  # the latest build of the name, running or finished
    staged: LabelSet | None = None  # a newer definition being built while `label_set` serves


class SetBuilds:
    """The builds under way or last finished, one per set name. Thread-safe."""

    def __init__(
        self,
        store: LabelSetStore,
        matrices: LabelMatrices,
        lexicon: Lexicon,
        runtimes: Callable[[], list[ModelRuntime]],
    ) -> None:
        self.store, self.matrices, self.lexicon = store, matrices, lexicon
        self.runtimes = runtimes  # the models loaded now, the default first: what a build is for
        self._builds: dict[str, Build] = {}
        self._lock = threading.Lock()

    def start(self, ls: LabelSet) -> Build:
        """Build a staged set for every model loaded, on a thread of its own (the same build if it
        already runs for them)."""
        rts = tuple(self.runtimes())
        with self._lock:
            old = self._builds.get(ls.name)
            if old is not None and old.status == "building":
                if old.shas == tuple(rt.sha for rt in rts) and old.label_set.digest == ls.digest:
                    return old
                old.cancelled = True  # superseded: its next slice stops it
            b = Build(ls, rts)
            self._builds[ls.name] = b
        threading.Thread(target=self._run, args=(b,), name=f"label-set-{ls.name}", daemon=True).start()
        return b

    def _run(self, b: Build) -> None:
        name = b.label_set.name
        try:
            sources = []
            for rt in b.runtimes:
                _, source = self.matrices.for_set(rt, b.label_set, b.progress)
                sources.append(source)
                b.model_built()
            b.source = "encoded" if "encoded" in sources else ", ".join(sorted(set(sources))) or None
            if b.cancelled:
                raise BuildCancelled
            self.store.promote(b.label_set)
            b.status = "ready"
            log.info("label set %s: ready (%s, %.1f s)", name, b.source, b.elapsed_s)
        except BuildCancelled:
            b.status = "superseded"
        except LabelSetError as e:
            b.status, b.error = "failed", e
            log.error("label set %s: build failed: %s", name, e.message)
        except Exception as e:  # the server goes on; the set says why it is not served
            log.exception("label set %s: build failed", name)
            b.status = "failed"
            b.error = LabelSetError(
                f"building label set {name!r} failed: {type(e).__name__}: {str(e)[:200]}",
                code="label_set_build_failed",
            )
        finally:
            b.finished = time.monotonic()
            b.runtimes = ()  # a finished build must not keep a model a reload replaced alive
            b.event.set()

    def get(self, name: str) -> Build | None:
        with self._lock:
            return self._builds.get(name)

    def served(self, name: str) -> LabelSet:
        """The definition a request naming the set is scored with: the one in the name's place.
        While only a staged one exists, LabelSetBuilding (503, retry after about its ETA), or why its
        build failed. Blocking (reads the store)."""
        try:
            return self.store.get(name)
        except LabelSetError as e:
            if e.code != "label_set_not_found":
                raise
            b = self.get(name)
            if b is not None and b.status == "failed" and b.error is not None:
                raise LabelSetError(
                    f"label set {name!r} is not served: {b.error.message}; register it again",
                    code="label_set_build_failed",
                ) from None
            if (b is not None and b.status == "building") or self.store.pending(name) is not None:
                wait = RETRY_MAX_S / 6 if b is None else b.retry_after_s()
                detail = None if b is None else b.describe()
                raise LabelSetBuilding(
                    f"label set {name!r} is still being built; retry in about {wait:.0f} s",
                    detail,
                    wait,
                ) from None
            raise

    def view(self, name: str) -> SetView:
        """What GET shows: the definition served (else the one staged) and its build's state."""
        try:
            served: LabelSet | None = self.store.get(name)
        except LabelSetError as e:
            if e.code != "label_set_not_found":
                raise
            served = None
        staged, b = self.store.pending(name), self.get(name)
        shown = served or staged or (b.label_set if b is not None else None)
        if shown is None:
            raise LabelSetError(f"no label set named {name!r}", code="label_set_not_found")
        status: str = "ready" if served is not None else "building"
        if b is not None and b.status == "building":
            status = "building"
        elif b is not None and b.status == "failed" and (served is None or served != b.label_set):
            status = "failed"  # its newest definition failed (a previous version may still serve)
        return SetView(shown, status, b, staged if served is not None else None)

    def views(self) -> list[SetView]:
        """Every set, served or still staged, by name."""
        names = {ls.name for ls in self.store.list()} | {ls.name for ls in self.store.pending_sets()}
        out = []
        for name in sorted(names):
            try:
                out.append(self.view(name))
            except LabelSetError:
                continue  # deleted meanwhile, or unreadable: reported when asked for by name
        return out

    def cancel(self, name: str) -> None:
        with self._lock:
            b = self._builds.pop(name, None)
        if b is not None:
            b.cancelled = True

    def resume(self, rt: ModelRuntime | None = None) -> None:
        """Start (again) the build of every staged set for the models loaded, `rt` (just swapped in)
        among them: after a restart, or after a reload (a build for the model before would give a
        matrix the new one cannot use)."""
        for ls in self.store.pending_sets():
            self.start(ls)

    def prepare(self, rt: ModelRuntime, report: Preparation) -> None:
        """Build or load, for a model about to be swapped in, every registered set's matrix, and the
        lexicon if the model served uses one. Blocking: the reload's thread runs it; the model
        served keeps serving meanwhile. A set that fails is logged and built on first use instead."""
        sets = self.store.list()
        p: dict[str, Any] = {"model": rt.ref, "sets_total": len(sets), "sets_done": 0, "failed": []}
        p |= {"prompts_done": 0, "started_at": _now()}
        report.running, t0, done_before = p, time.monotonic(), 0

        def progress(done: int, total: int) -> None:
            p["prompts_done"] = done_before + done

        for ls in sets:
            try:
                self.matrices.for_set(rt, ls, progress)
            except Exception as e:
                log.exception("label set %s: not prepared for %s/%s", ls.name, rt.name, rt.version)
                p["failed"].append({"name": ls.name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            p["sets_done"] += 1
            done_before = p["prompts_done"]
        if self.lexicon.in_use:
            try:
                self.lexicon.matrix(rt)
            except Exception as e:  # encoded on first use instead
                log.exception("the lexicon: not prepared for %s/%s", rt.name, rt.version)
                p["failed"].append({"name": ".lexicon", "error": f"{type(e).__name__}: {str(e)[:200]}"})
        p["seconds"] = round(time.monotonic() - t0, 2)
        report.running, report.last = None, p
