"""Which labels a request is scored against, and where their matrix comes from.

A request names either its own labels (with templates) or a registered label set. `plan` turns that
into a LabelPlan: the labels, the templates, and the matrix when memory already holds it (one lookup,
cheap enough for the event loop). `build` makes a missing matrix (blocking): a label set's from its
stored file when there is one, else by encoding only the labels the cache lacks; a label set's new
matrix is stored for a restart or another replica.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.runtime.errors import InvalidRequest
from app.runtime.label_cache import LabelCache
from app.runtime.label_sets import LabelSet, LabelSetStore
from app.runtime.model import ModelRuntime
from app.runtime.text_lane import TextLane
from model.bundle.prompts import resolve_templates
from model.bundle.zeroshot import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelQuery:
    """What a request asked for: its own labels (and a template spec), or a registered set's name."""

    labels: list[str] | None = None
    label_set: str | None = None
    templates: str | list[str] | None = None

    def check(self) -> None:
        """Exactly one of labels and label_set; a set brings its own templates."""
        if self.label_set is not None:
            if self.labels is not None or self.templates is not None:
                raise InvalidRequest("give label_set alone: the set has its own labels and templates")
        elif self.labels is None:
            raise InvalidRequest("give labels (the candidate labels) or label_set", code="invalid_labels")


@dataclass(frozen=True)
class LabelPlan:
    """The labels to score against, for one runtime: `matrix` is None until built."""

    labels: tuple[str, ...]
    templates: tuple[str, ...]
    matrix: np.ndarray | None
    label_set: LabelSet | None = None


@dataclass(frozen=True)
class PromptBudget:
    """The text-encoder work one request (or one label set) may ask for: every label is encoded in
    every template, so the cost is labels x templates prompts. Without a bound, 20,000 custom
    templates and 2 labels were accepted and encoded (minutes of both cores on a ViT-B/32)."""

    max_templates: int
    max_prompts: int
    what: str = "request"

    def check(self, n_labels: int, n_templates: int) -> None:
        if n_templates > self.max_templates:
            raise InvalidRequest(
                f"{n_templates:,} templates; at most {self.max_templates:,} per {self.what}",
                {"templates": n_templates, "limit": self.max_templates},
                code="too_many_templates",
            )
        prompts = n_labels * n_templates
        if prompts > self.max_prompts:
            hint = " (register a label set for more)" if self.what == "request" else ""
            raise InvalidRequest(
                f"{n_labels:,} labels x {n_templates:,} templates = {prompts:,} prompts; at most "
                f"{self.max_prompts:,} per {self.what}{hint}",
                {"prompts": prompts, "limit": self.max_prompts},
                code="too_many_prompts",
            )


def check_token_lengths(rt: ModelRuntime, labels: Sequence[str], templates: Sequence[str]) -> list[int]:
    """Refuse a label that, with its longest template, is longer than the model reads; the lengths."""
    context = rt.encoders.tokenizer.context_length
    lengths = rt.token_lengths(labels, templates)
    for lb, n in zip(labels, lengths, strict=True):
        if n > context:
            raise InvalidRequest(
                f"label {lb[:60]!r} is {n} tokens with its template; the model reads at most {context}",
                {"label": lb[:200], "tokens": n, "context_length": context},
                code="label_too_long",
            )
    return lengths


def check_distinct(rt: ModelRuntime, labels: Sequence[str]) -> None:
    """Refuse two labels the model cannot tell apart: the same token ids once the tokenizer has cleaned
    them (case, spacing, HTML entities, Unicode look-alikes). Comparing raw strings lets
    ["yellow cross", "Yellow Cross"] through and answers 0.5 / 0.5 with identical cosines."""
    tok = rt.encoders.tokenizer
    seen: dict[tuple[int, ...], int] = {}
    for i, lb in enumerate(labels):
        j = seen.setdefault(tuple(tok.encode(lb)), i)
        if j != i:
            first = labels[j]
            cleaned = tok.clean(lb)
            raise InvalidRequest(
                f"labels {first[:60]!r} and {lb[:60]!r} are the same text to the model "
                f"({cleaned[:60]!r}); give each label once",
                {"labels": [first[:200], lb[:200]], "cleaned": cleaned[:200]},
                code="duplicate_labels",
            )


class LabelMatrices:
    def __init__(self, cache: LabelCache, store: LabelSetStore, budget: PromptBudget, lane: TextLane) -> None:
        self.cache, self.store, self.budget, self.lane = cache, store, budget, lane

    def plan(
        self,
        rt: ModelRuntime,
        query: LabelQuery,
        label_set: LabelSet | None,
        charge: Callable[[int], None] | None = None,
    ) -> LabelPlan:
        """The plan of a checked query (`query.check()`); `label_set` is the set it names, already
        read from the store. One cache lookup; ad-hoc labels not cached are first charged to
        `charge` (the prompts they would encode: the key's quota, which may refuse them before any
        tokenizing), then checked against the tokenizer and the context."""
        if label_set is not None:
            m = self.cache.cached_set(rt.sha, label_set.labels, label_set.templates)
            return LabelPlan(label_set.labels, label_set.templates, m, label_set)
        assert query.labels is not None
        templates = resolve_templates(query.templates)
        labels = tuple(query.labels)
        self.budget.check(len(labels), len(templates))
        m = self.cache.cached_set(rt.sha, labels, templates)
        if m is None:  # a list the cache holds passed these checks when it was built
            if charge is not None:
                charge(self.cache.missing(rt.sha, labels, templates) * len(templates))
            check_distinct(rt, labels)
            check_token_lengths(rt, labels, templates)
        return LabelPlan(labels, templates, m)

    def build(
        self, rt: ModelRuntime, plan: LabelPlan, progress: Progress | None = None
    ) -> tuple[np.ndarray, str]:
        """The plan's matrix and where it came from: memory, disk or encoded. Blocking (may encode;
        `progress` hears of the prompts encoded)."""
        if plan.matrix is not None:
            return plan.matrix, "memory"
        ls = plan.label_set
        if ls is None:
            return self.cache.build(
                self.lane.job(rt.encoders), rt.sha, plan.labels, plan.templates
            ), "encoded"
        m = self.store.load_matrix(ls, rt.sha, rt.encoders.embed_dim)
        if m is not None:
            self.cache.put_set(rt.sha, ls.labels, ls.templates, m)
            return m, "disk"
        log.info(
            "label set %s: encoding %d labels x %d templates", ls.name, len(ls.labels), len(ls.templates)
        )
        m = self.cache.build(self.lane.job(rt.encoders), rt.sha, ls.labels, ls.templates, progress)
        self.store.save_matrix(ls, rt.sha, m)
        return m, "encoded"

    def for_set(
        self, rt: ModelRuntime, ls: LabelSet, progress: Progress | None = None
    ) -> tuple[np.ndarray, str]:
        """A registered set's matrix, from wherever it is (blocking)."""
        plan = LabelPlan(ls.labels, ls.templates, self.cache.cached_set(rt.sha, ls.labels, ls.templates), ls)
        return self.build(rt, plan, progress)
