"""The engine: the one object the routes call.

It owns the models served (app/runtime/served.py: each with its hot reload and its image
micro-batcher), the label-embedding cache and the label-set store they share, and runs every request
from parsed input to a typed result: routes parse HTTP, call one method here and map what it returns
(or raises: app/runtime/errors.py) to HTTP. Nothing here knows HTTP. See docs/architecture.md for one
request's path through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.runtime.batcher import Announcement
from app.runtime.calibrations import CalibrationStore
from app.runtime.errors import (
    Draining,
    ImageFailure,
    InvalidRequest,
    ReloadFailed,
)
from app.runtime.images import DecodePool
from app.runtime.label_cache import LabelCache
from app.runtime.label_sets import LabelSet, LabelSetStore, check_name
from app.runtime.labels import (
    LabelMatrices,
    LabelPlan,
    LabelQuery,
    PromptBudget,
    check_distinct,
    check_token_lengths,
)
from app.runtime.lexicon import Lexicon
from app.runtime.model import ModelRuntime, RuntimeFactory, load_runtime
from app.runtime.quotas import ANONYMOUS, Quotas
from app.runtime.reload import ReloadResult
from app.runtime.served import ModelSet, ServedModel
from app.runtime.set_builds import Build, SetBuilds, SetView
from app.runtime.text_lane import TextLane
from app.runtime.url_fetch import ImageUrl, UrlFetcher, policy_from
from app.settings import Settings
from model.bundle.answers import Answer, AnswerOptions, answer, needs_lexicon
from model.bundle.calibration_fit import CalibrationInputError, Target, fit_set
from model.bundle.calibration_store import Calibration, Fit
from model.bundle.prompts import DEFAULT_SET, TEMPLATE_SETS, resolve_templates

log = logging.getLogger(__name__)


@dataclass
class Ticket:
    """A request admitted at the door: the model it runs on from now to its answer, and its place
    among the requests on their way to that model's batcher. Admitted before its body is read, on the
    model with the most room; moved to the model the body names once it is parsed (`Engine._route`)."""

    served: ServedModel
    runtime: ModelRuntime
    announcement: Announcement


OnError = Literal["fail", "skip"]
ON_ERROR: tuple[OnError, ...] = ("fail", "skip")


@dataclass(frozen=True)
class ClassifyRequest:
    # encoded image files, as uploaded, or URLs the engine fetches; with on_error="skip", a failure
    # in place of one that could not be read from the body
    images: Sequence[bytes | ImageFailure | ImageUrl]
    labels: LabelQuery
    top_k: int | None = None  # >= 1; None: the default; more than there are labels: all of them
    on_error: OnError = "fail"  # fail: one bad image fails the request; skip: it gets a failure
    client: str = ANONYMOUS  # who asks: a key id (app/runtime/quotas.py), for its prompt budget
    answer: AnswerOptions = field(
        default_factory=AnswerOptions
    )  # mode and abstain thresholds (model/bundle/answers.py)
    model: str | None = None  # the model served to run it on; None: the default (the first configured)


@dataclass(frozen=True)
class ClassifyResult:
    model: dict[str, str]
    results: list[Answer | ImageFailure]  # per image: the top_k labels and whether to abstain
    timing_ms: dict[str, float]
    mode: str = "single"
    calibration: Calibration | None = None  # of the label set named, for the model served


@dataclass(frozen=True)
class Embeddings:
    model: dict[str, str]
    features: np.ndarray  # [N, E], L2-normalized
    tokens: int = 0  # of the texts as encoded, start and end tokens included (OpenAI's usage)


@dataclass(frozen=True)
class LabelSetStored:
    label_set: LabelSet
    build: Build  # ready (then the set serves), or still building in the background


class Engine:
    def __init__(self, settings: Settings, factory: RuntimeFactory = load_runtime) -> None:
        self.settings = settings
        self.cache = LabelCache(settings.label_cache_bytes)
        self.text_lane = TextLane(settings.text_slice_ms)  # every prompt encoded goes through it
        self.label_sets = LabelSetStore(settings.label_sets_dir)
        self.budget = PromptBudget(settings.max_templates_per_request, settings.max_prompts_per_request)
        self.set_budget = PromptBudget(
            settings.max_templates_per_request, settings.max_prompts_per_label_set, "label set"
        )
        self.matrices = LabelMatrices(self.cache, self.label_sets, self.budget, self.text_lane)
        self.lexicon = Lexicon(settings.label_sets_dir, self.text_lane)  # negative labels, per bundle
        self.calibrations = CalibrationStore(settings.label_sets_dir)
        # background set builds, for every model loaded
        self.builds = SetBuilds(self.label_sets, self.matrices, self.lexicon, lambda: self.models.loaded())
        self.models = ModelSet(settings, factory, self.builds)
        self.quotas = Quotas(settings)
        self.urls = UrlFetcher(policy_from(settings))  # images given by URL (off unless turned on)
        self.decoder = DecodePool(settings.decode_workers)  # every model's uploads, one task per image
        self.draining = False  # set on SIGTERM and at shutdown: readiness fails from then on
        self.ruled = self.abstained = 0  # answers an abstain rule judged, and those it refused (/metrics)

    # --- lifecycle ---
    async def start(self) -> None:
        """Load and warm every model, the default first (not ready before), and watch their CURRENT."""
        for m in self.models:
            await m.start()

    async def stop(self) -> None:
        """Fail readiness, stop watching, answer what is queued, stop the batchers."""
        self.draining = True
        for m in self.models:
            await m.stop()
        self.decoder.close()  # after the batchers: what they answered has been decoded

    # --- the models served ---
    def runtime(self, model: str | None = None) -> ModelRuntime:
        """The runtime of the model named (None: the default) at the time of the call: a reload swaps
        the holder's, never a request's. ModelNotFound or ModelUnavailable otherwise."""
        return self.models.get(model).runtime()

    def ready(self) -> None:
        """Raise unless the server should be sent work: every model loaded and warm, not draining, no
        image encoder stuck in one call for longer than watchdog_ready_s."""
        if self.draining:
            raise Draining("the server is shutting down")
        self.models.ready(self.settings.watchdog_ready_s)

    def alive(self) -> None:
        """Raise if the process should be restarted: a batcher's worker is gone, or one encoder call
        has run longer than watchdog_live_s (a hung call never gives its thread back)."""
        self.models.alive(self.settings.watchdog_live_s)

    def describe(self) -> dict[str, Any]:
        """GET /v1/models: the default model at the top (as with one model), every model under
        `models`, and what they share: the label cache and the text encoder's lane."""
        return {
            **self.models.default.describe(),
            "label_cache": self.cache.stats(),
            "text_encoder": self.text_lane.stats(),
            "models": [m.describe() for m in self.models],
        }

    async def reload(self, model: str | None = None) -> dict[str, ReloadResult]:
        """Load each model's CURRENT now if it changed (or only `model`'s); ReloadFailed if one was
        refused (the others' outcomes in its detail: each model reloads on its own)."""
        chosen = [self.models.get(model)] if model is not None else list(self.models)
        results = {m.name: await m.reload() for m in chosen}
        failed = {n: r.error for n, r in results.items() if r.error}
        if failed:
            serving = {m.name: m.holder.runtime.version if m.holder.runtime else None for m in chosen}
            raise ReloadFailed("; ".join(f"{n}: {e}" for n, e in failed.items()), {"serving": serving})
        return results

    # --- requests with images ---
    @contextlib.contextmanager
    def admit(self, model: str | None = None) -> Iterator[Ticket]:
        """Admit a request before its body is read: 503 at once (QueueFull) when the queue is full,
        so the work a server accepts is bounded end to end. `model`: the model, when known before
        the body is read; else the loaded one with the most room (the body may name another: the
        engine moves the ticket then). Call from the event loop only."""
        served = self.models.get(model) if model is not None else self.models.door()
        rt = served.runtime()
        ticket = Ticket(served, rt, served.batcher.admit())
        try:
            yield ticket
        finally:
            ticket.served.batcher.release(ticket.announcement)

    def _route(self, ticket: Ticket, model: str | None) -> None:
        """Move a ticket to the model its request names, now that the body has been read: admitted
        there (QueueFull if its queue is full), released at the door."""
        served = self.models.get(model)
        if served is ticket.served:
            return
        rt, admitted = served.runtime(), served.batcher.admit()
        admitted.started = ticket.announcement.started
        ticket.served.batcher.release(ticket.announcement)
        ticket.served, ticket.runtime, ticket.announcement = served, rt, admitted

    async def classify(self, req: ClassifyRequest, ticket: Ticket) -> ClassifyResult:
        self._route(ticket, req.model)
        rt, s = ticket.runtime, self.settings
        req.labels.check()
        named = req.labels.label_set
        ls = None if named is None else await run_in_threadpool(self.builds.served, named)
        cal = None if ls is None else await run_in_threadpool(self.calibrations.get, ls, rt.sha)
        fit = cal.fit if cal is not None else None  # only a fit for this bundle and this definition
        q = self.quotas  # the key's prompt budget, when one is set
        charge = functools.partial(q.spend_prompts, req.client) if q.counts_prompts else None
        plan = self.matrices.plan(rt, req.labels, ls, charge)
        k = min(req.top_k or s.default_top_k, len(plan.labels))
        images = await self.urls.fetch_all(req.images, req.on_error == "skip")  # after the cheap checks
        pixels, failed = await self._decode(images, req.on_error, rt)
        t1 = time.perf_counter()
        answers: list[Answer] = []
        if len(pixels):  # with on_error="skip" every image may have failed: nothing to encode
            encode = self._encode(rt, pixels, ticket)
            if plan.matrix is None:  # encode the labels and the images side by side
                (matrix, _), feats = await asyncio.gather(
                    run_in_threadpool(self.matrices.build, rt, plan), encode
                )
            else:
                matrix, feats = plan.matrix, await encode
            lex = neg = None
            if any(needs_lexicon(req.answer, fit, rt.logit_bias)):  # no thread hop for a plain ranking
                lex, neg = await run_in_threadpool(self._lexicon_for, rt, plan, matrix, req.answer, fit)
            answers = answer(
                feats, plan.labels, matrix, rt.logit_scale, k, req.answer, fit, lex, neg, rt.logit_bias
            )
        t2 = time.perf_counter()
        self.ruled += sum(a.decision is not None for a in answers)  # on the event loop: no lock needed
        self.abstained += sum(a.abstained for a in answers)
        rows = iter(answers)
        results = [failed[i] if i in failed else next(rows) for i in range(len(req.images))]
        t0 = ticket.announcement.started
        timing = {
            "decode_ms": round(1000 * (t1 - t0), 3),
            "encode_ms": round(1000 * (t2 - t1), 3),
            "total_ms": round(1000 * (time.perf_counter() - t0), 3),
        }
        return ClassifyResult(rt.ref, results, timing, req.answer.mode, cal)

    async def _encode_files(self, rt: ModelRuntime, files: list[bytes]) -> AsyncIterator[np.ndarray]:
        """Features of many files, a batch at a time (the pixels of a thousand images at once would be
        gigabytes); beside the batcher, as admin work bounded by its image count."""
        step, pre = self.settings.max_batch, rt.encoders.preprocess
        for i in range(0, len(files), step):
            pixels = await self.decoder.decode_images(files[i : i + step], pre, self.settings)
            yield await run_in_threadpool(rt.encode_images, pixels)

    def _lexicon_for(
        self,
        rt: ModelRuntime,
        plan: LabelPlan,
        matrix: np.ndarray,
        options: AnswerOptions,
        fit: Fit | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The lexicon and the negative labels, when the answer needs them. Blocking (the first call
        for a bundle encodes its lexicon)."""
        need_lexicon, need_negatives = needs_lexicon(options, fit, rt.logit_bias)
        lex = self.lexicon.matrix(rt) if need_lexicon else None
        neg = self.lexicon.negatives(rt, plan.labels, plan.templates, matrix) if need_negatives else None
        return lex, neg

    async def _decode(
        self, images: Sequence[bytes | ImageFailure], on_error: OnError, rt: ModelRuntime
    ) -> tuple[np.ndarray, dict[int, ImageFailure]]:
        """The pixels of the images to encode, and a failure per image that is skipped."""
        pre, s = rt.encoders.preprocess, self.settings
        if on_error == "skip":
            return await self.decoder.decode_some(images, pre, s)
        files = [f for f in images if isinstance(f, bytes)]  # "fail": the API put no failure in
        return await self.decoder.decode_images(files, pre, s), {}

    async def embed_images(
        self, items: Sequence[bytes | ImageUrl], ticket: Ticket, model: str | None = None
    ) -> Embeddings:
        self._route(ticket, model)
        rt = ticket.runtime
        files = [f for f in await self.urls.fetch_all(items, skip=False) if isinstance(f, bytes)]
        pixels = await self.decoder.decode_images(files, rt.encoders.preprocess, self.settings)
        return Embeddings(rt.ref, await self._encode(rt, pixels, ticket))

    def _encode(self, rt: ModelRuntime, pixels: np.ndarray, ticket: Ticket) -> Awaitable[np.ndarray]:
        """Queue the images now; the awaitable of their features, [n, E]."""
        batcher = ticket.served.batcher
        items = batcher.submit(rt, pixels, self.settings.queue_timeout_s, ticket.announcement)
        return batcher.wait(items)

    # --- texts and label sets ---
    async def embed_texts(
        self,
        texts: list[str],
        templates: str | list[str] | None,
        client: str = ANONYMOUS,
        model: str | None = None,
    ) -> Embeddings:
        """Each text as it is, or (with templates) as a label put into every template and averaged."""
        rt = self.runtime(model)
        if templates is None:
            self.quotas.spend_prompts(client, len(texts))  # before any tokenizing
            tokens = sum(check_token_lengths(rt, texts, ("{}",)))
            feats = await run_in_threadpool(self.text_lane.job(rt.encoders).encode_texts, texts)
            return Embeddings(rt.ref, feats, tokens)
        tmpl = resolve_templates(templates)
        self.budget.check(len(texts), len(tmpl))
        if self.quotas.counts_prompts:
            self.quotas.spend_prompts(client, self.cache.missing(rt.sha, texts, tmpl) * len(tmpl))
        check_token_lengths(rt, texts, tmpl)
        job = self.text_lane.job(rt.encoders)
        feats = await run_in_threadpool(self.cache.get_or_build, job, rt.sha, texts, tmpl)
        return Embeddings(rt.ref, feats)

    async def put_label_set(
        self, name: str, labels: list[str], templates: str | list[str] | None, wait: bool = False
    ) -> LabelSetStored:
        """Register (or replace) a set: checked and staged now, built in the background for every
        model loaded. Returns once built, or after label_set_wait_s with the build still running (or
        with `wait`, when it ends however long); until then the previous version, if any, serves."""
        check_name(name)
        tmpl = resolve_templates(templates)
        set_name = templates if isinstance(templates, str) and templates in TEMPLATE_SETS else None
        runtimes = self.models.loaded() or [self.runtime()]  # none loaded: ModelUnavailable
        self.set_budget.check(len(labels), len(tmpl))
        for rt in runtimes:  # each model's tokenizer must read every label
            check_distinct(rt, labels)
            check_token_lengths(rt, labels, tmpl)
        ls = self.label_sets.define(name, labels, tmpl, DEFAULT_SET if templates is None else set_name)
        await run_in_threadpool(self.label_sets.stage, ls)
        build = self.builds.start(ls)
        await run_in_threadpool(build.event.wait, None if wait else self.settings.label_set_wait_s)
        if build.status == "failed" and build.error is not None:
            raise build.error
        return LabelSetStored(ls, build)

    async def get_label_set(self, name: str, model: str | None = None) -> tuple[SetView, Calibration]:
        """The set (served, or staged and building), and its calibration for the model named."""
        view, rt = await run_in_threadpool(self.builds.view, name), self.models.get(model).holder.runtime
        if rt is None:  # the set is still shown while no model is loaded; its calibration cannot be judged
            return view, Calibration("none", reason="no model is loaded")
        return view, await run_in_threadpool(self.calibrations.get, view.label_set, rt.sha)

    async def list_label_sets(self) -> list[SetView]:
        return await run_in_threadpool(self.builds.views)

    async def delete_label_set(self, name: str) -> None:
        self.builds.cancel(name)
        await run_in_threadpool(self.label_sets.delete, name)
        await run_in_threadpool(self.calibrations.delete, name)

    async def calibrate(
        self,
        name: str,
        files: list[bytes],
        truth: list[str | None],
        target: Target,
        model: str | None = None,
    ) -> Fit:
        """Fit the set's calibration for the model named (None: the default) from labelled images
        (None: an image that is none of the labels) and store it; requests naming the set on that
        model use it from then on."""
        rt = self.runtime(model)
        ls = await run_in_threadpool(self.builds.served, name)
        index = {lb: i for i, lb in enumerate(ls.labels)}
        strangers = sorted({t for t in truth if t is not None and t not in index})
        if strangers:
            raise InvalidRequest(
                f"{len(strangers)} label(s) are not in label set {name!r}: "
                + ", ".join(repr(t[:60]) for t in strangers[:5]),
                {"not_in_set": strangers[:50]},
                code="invalid_calibration",
            )
        feats = np.concatenate([f async for f in self._encode_files(rt, files)])
        matrix, _ = await run_in_threadpool(self.matrices.for_set, rt, ls)
        lex = await run_in_threadpool(self.lexicon.matrix, rt)
        neg = await run_in_threadpool(self.lexicon.negatives, rt, ls.labels, ls.templates, matrix)
        y = np.array([-1 if t is None else index[t] for t in truth])
        try:
            fit = fit_set(
                feats, y, ls.labels, matrix, rt.logit_scale, lex, neg, target, rt.sha, rt.ref, ls.digest,
                rt.logit_bias,
            )  # fmt: skip
        except CalibrationInputError as e:
            raise InvalidRequest(str(e), code="invalid_calibration") from None
        await run_in_threadpool(self.calibrations.put, ls, fit)
        return fit
