"""One answer per image: ranked labels with probabilities in the mode asked, and whether to abstain.

The server (app/runtime/engine.py) and `zeroshot eval` both answer through `answer`, so what the eval
measures is what a request gets. Torch-free.
- single: softmax(logit_scale x cosine / T) over the labels sent (T = 1 unless calibrated); ranked by
  cosine, as CLIP does.
- multi: an independent probability per label (model/bundle/openset.py); ranked by it. A model trained
  with the sigmoid loss (SigLIP: the manifest's scoring has a logit_bias) has one by construction,
  sigmoid(logit_scale x cosine + logit_bias), and that is what it answers, with no lexicon; a label
  set calibrated on it answers sigmoid(a_i x cosine + b_i), its per-label Platt fit of that logit
  (model/bundle/calibration_fit.py). A fit of another kind (the lexicon's, made before calibration
  read the model's own logit) is not applied to it.
Abstention: the rules of the request (its thresholds) or, when it gives none, the calibrated rule of
the label set it names; each answer says which rule decided, with the score and the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.bundle.calibration_store import Fit
from model.bundle.openset import (
    Decision,
    Mode,
    Rule,
    Score,
    decide,
    multi_probability,
    neglabel_score,
    reference,
    sigmoid_probability,
    softmax_probability,
)
from model.bundle.zeroshot import LabelScore, top_k_order


@dataclass(frozen=True)
class AnswerOptions:
    mode: Mode = "single"
    min_probability: float | None = None  # of the top label, in the mode asked
    min_cosine: float | None = None
    min_neglabel: float | None = None

    def rules(self) -> tuple[Rule, ...]:
        out = []
        if self.min_probability is not None:
            out.append(Rule("mcm" if self.mode == "single" else "multi", self.min_probability))
        if self.min_cosine is not None:
            out.append(Rule("cosine", self.min_cosine))
        if self.min_neglabel is not None:
            out.append(Rule("neglabel", self.min_neglabel))
        return tuple(out)


@dataclass(frozen=True)
class Answer:
    labels: list[LabelScore]
    decision: Decision | None  # None: no rule applied (no thresholds asked, no calibrated rule)

    @property
    def abstained(self) -> bool:
        return self.decision is not None and self.decision.abstained


def rules_for(options: AnswerOptions, fit: Fit | None) -> tuple[Rule, ...]:
    asked = options.rules()
    if asked:
        return asked  # the request's own thresholds win over the set's calibrated one
    return (fit.rule,) if fit is not None and fit.rule is not None else ()


def needs_lexicon(
    options: AnswerOptions, fit: Fit | None, logit_bias: float | None = None
) -> tuple[bool, bool]:
    """(lexicon, negatives): whether answering needs the lexicon's matrix, and the negative labels."""
    scores = {r.score for r in rules_for(options, fit)}
    multi = logit_bias is None and (options.mode == "multi" or "multi" in scores)
    return multi or "neglabel" in scores, "neglabel" in scores


def answer(
    features: np.ndarray,
    labels: Sequence[str],
    matrix: np.ndarray,
    logit_scale: float,
    top_k: int,
    options: AnswerOptions = AnswerOptions(),
    fit: Fit | None = None,
    lexicon: np.ndarray | None = None,
    negatives: np.ndarray | None = None,
    logit_bias: float | None = None,
) -> list[Answer]:
    """Image features [B, E] against a label matrix [N, E]; `lexicon` [W, E] and `negatives` (row
    indices into it) when `needs_lexicon` says so; `logit_bias` for a sigmoid-loss model."""
    cosine = features @ matrix.T  # [B, N]
    single = softmax_probability(cosine, logit_scale, fit.temperature if fit is not None else 1.0)
    cos_lex = None if lexicon is None else features @ lexicon.T  # [B, W]
    rules = rules_for(options, fit)
    multi = None
    if options.mode == "multi" or any(r.score == "multi" for r in rules):
        multi = _multi(cosine, cos_lex, logit_scale, fit, logit_bias)
    prob = multi if multi is not None and options.mode == "multi" else single
    values: dict[Score, np.ndarray] = {}
    for r in rules:
        values[r.score] = _score(r.score, cosine, single, multi, cos_lex, negatives, logit_scale)
    decisions = decide(rules, values, len(features))
    out = []
    for i in range(len(features)):
        order = (
            top_k_order(cosine[i], top_k)
            if options.mode == "single"
            else _by_probability(prob[i], cosine[i], top_k)
        )
        ranked = [LabelScore(labels[j], float(prob[i, j]), float(cosine[i, j])) for j in order]
        out.append(Answer(ranked, decisions[i]))
    return out


def _multi(
    cosine: np.ndarray,
    cos_lex: np.ndarray | None,
    logit_scale: float,
    fit: Fit | None,
    logit_bias: float | None,
) -> np.ndarray:
    """The independent probability per label [B, N]: the model's own sigmoid when it has a bias."""
    if logit_bias is not None:
        if fit is not None and fit.figures.get("multi_on") == "cosine":
            return multi_probability(cosine, np.zeros(len(cosine)), 1.0, np.array(fit.a), np.array(fit.b))
        return sigmoid_probability(cosine, logit_scale, logit_bias)
    if cos_lex is None:
        raise ValueError("multi answers need the lexicon")
    a, b = (np.array(fit.a), np.array(fit.b)) if fit is not None else (None, None)
    return multi_probability(cosine, reference(cos_lex), logit_scale, a, b)


def _by_probability(p: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Highest probability first; cosine breaks the ties of probabilities saturated at 0 or 1."""
    return np.lexsort((-c, -p))[:k]


def _score(
    score: Score,
    cosine: np.ndarray,
    single: np.ndarray,
    multi: np.ndarray | None,
    cos_lex: np.ndarray | None,
    negatives: np.ndarray | None,
    logit_scale: float,
) -> np.ndarray:
    if score == "mcm":
        return single.max(axis=1)
    if score == "cosine":
        return cosine.max(axis=1)
    if score == "multi" and multi is not None:
        return multi.max(axis=1)
    if cos_lex is None or negatives is None:
        raise ValueError("the neglabel score needs the lexicon and the negative labels")
    return neglabel_score(cosine, cos_lex[:, negatives], logit_scale)
