"""Fitting a label set's calibration from a few labelled images. Torch-free.

Input: normalized image features, each with the index of its label in the set or -1 for an image that
is none of them. Output: a `Fit` (model/bundle/calibration_store.py):
- the temperature of the single-mode softmax (temperature scaling, Guo et al. 2017), fitted on the
  images of the set's labels, with the expected calibration error before and after;
- per label, Platt's sigmoid of `multi` answers, pulled toward the uncalibrated sigmoid so that a label
  with one or two images stays sane; a label with no image keeps that prior. On a CLIP bundle the
  sigmoid reads (cosine - reference), prior (logit_scale, 0); on a sigmoid-loss bundle (SigLIP, a
  `logit_bias`) it reads the cosine itself, prior the model's own (logit_scale, logit_bias), so the fit
  corrects the model's sigmoid rather than replacing it with the lexicon's;
- the abstain rule: of the scores mcm, cosine and neglabel, the one that best separates right answers
  from wrong ones and unknowns (AUROC), with the threshold that reaches the target precision of the
  answers kept, or the target false-positive rate on the unknown images.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.bundle.calibration import fit_platt, fit_temperature, threshold_for_fpr, threshold_for_precision
from model.bundle.calibration_store import Fit
from model.bundle.metrics import auroc, expected_calibration_error
from model.bundle.openset import (
    Rule,
    Score,
    multi_probability,
    neglabel_score,
    reference,
    softmax_probability,
)

DEFAULT_PRECISION = 0.95
PLATT_STRENGTH = 1.0  # the pull toward the uncalibrated sigmoid (a = logit_scale, b = 0)


class CalibrationInputError(ValueError):
    """Images and labels that cannot be calibrated on; the message says what to change."""


@dataclass(frozen=True)
class Target:
    """Where to put the abstain threshold: at a precision of the answers kept (default 0.95), or at a
    false-positive rate on the images that are none of the labels (needs some)."""

    precision: float | None = None
    fpr: float | None = None

    def check(self, unknown: int) -> None:
        if self.precision is not None and self.fpr is not None:
            raise CalibrationInputError("give a target precision or a target false-positive rate, not both")
        for name, v in (("precision", self.precision), ("false-positive rate", self.fpr)):
            if v is not None and not 0.0 <= v <= 1.0:
                raise CalibrationInputError(f"the target {name} must be in [0, 1], not {v}")
        if self.fpr is not None and unknown == 0:
            raise CalibrationInputError(
                "a target false-positive rate needs images that are none of the labels (an unknown folder)"
            )


def check_inputs(truth: np.ndarray, labels: Sequence[str]) -> None:
    """At least two of the set's labels with images: temperature and thresholds need a choice to make."""
    present = sorted({int(t) for t in truth if t >= 0})
    if len(present) < 2:
        have = ", ".join(repr(labels[i]) for i in present) or "none"
        raise CalibrationInputError(
            f"calibration needs images of at least 2 of the set's labels; got images of {have}"
        )


def fit_set(
    features: np.ndarray,
    truth: np.ndarray,
    labels: Sequence[str],
    matrix: np.ndarray,
    logit_scale: float,
    lexicon: np.ndarray,
    negatives: np.ndarray,
    target: Target,
    sha: str,
    model: dict[str, str],
    labels_digest: str,
    logit_bias: float | None = None,
) -> Fit:
    """features [n, E] normalized, truth [n] (label index, -1 = none of them), matrix [N, E];
    `logit_bias` for a sigmoid-loss bundle."""
    truth = np.asarray(truth, dtype=np.int64)
    check_inputs(truth, labels)
    known = truth >= 0
    target.check(int((~known).sum()))
    cosine = features @ matrix.T  # [n, N]
    logits = logit_scale * cosine.astype(np.float64)
    temperature = fit_temperature(logits[known], truth[known])
    before = softmax_probability(cosine, logit_scale)
    after = softmax_probability(cosine, logit_scale, temperature)
    correct = known & (cosine.argmax(axis=1) == truth)  # the answers one would keep
    figures: dict[str, Any] = {
        "images": len(truth),
        "unknown_images": int((~known).sum()),
        "images_per_label": {labels[i]: int((truth == i).sum()) for i in range(len(labels))},
        "top1": float(correct[known].mean()),
        "temperature": temperature,
        "ece_before": expected_calibration_error(before[known].max(axis=1), correct[known]),
        "ece_after": expected_calibration_error(after[known].max(axis=1), correct[known]),
    }
    a, b = _platt_per_label(cosine, features @ lexicon.T, truth, logit_scale, logit_bias, figures)
    figures["labels_without_images"] = [lb for i, lb in enumerate(labels) if not (truth == i).any()]
    scores: dict[Score, np.ndarray] = {
        "mcm": after.max(axis=1),
        "cosine": cosine.max(axis=1),
        "neglabel": neglabel_score(cosine, features @ lexicon[negatives].T, logit_scale),
    }
    rule, rule_figures = _rule(scores, correct, known, target)
    figures.update(rule_figures)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return Fit(sha, model, labels_digest, now, temperature, tuple(a), tuple(b), rule, figures)


def _platt_per_label(
    cosine: np.ndarray,
    cos_lexicon: np.ndarray,
    truth: np.ndarray,
    logit_scale: float,
    logit_bias: float | None,
    figures: dict[str, Any],
) -> tuple[list[float], list[float]]:
    """Per label (a, b) of multi's sigmoid; adds what it reads and the binary cross-entropy of the
    multi probabilities over every (image, label) pair, before and after, to `figures`."""
    if logit_bias is None:
        z, prior, on = cosine - reference(cos_lexicon)[:, None], (logit_scale, 0.0), "cosine - reference"
    else:
        z, prior, on = cosine, (logit_scale, logit_bias), "cosine"  # the model's own logit, unshifted
    a, b = [], []
    for i in range(cosine.shape[1]):
        pos = truth == i
        ai, bi = fit_platt(z[:, i], pos, prior=prior, strength=PLATT_STRENGTH) if pos.any() else prior
        a.append(float(ai))
        b.append(float(bi))
    onehot = truth[:, None] == np.arange(cosine.shape[1])[None, :]  # images of none: negatives for all
    zero = np.zeros(len(z))
    before = multi_probability(z, zero, prior[0], None, np.full(len(a), prior[1]))
    after = multi_probability(z, zero, 1.0, np.array(a), np.array(b))
    figures["multi_on"] = on
    figures["multi_bce_before"] = _bce(before, onehot)
    figures["multi_bce_after"] = _bce(after, onehot)
    return a, b


def _bce(p: np.ndarray, positive: np.ndarray) -> float:
    q = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.where(positive, np.log(q), np.log1p(-q)).mean())


def _rule(
    scores: dict[Score, np.ndarray], correct: np.ndarray, known: np.ndarray, target: Target
) -> tuple[Rule | None, dict[str, Any]]:
    """The best-separating score and its threshold; no rule when every answer is right and there are
    no unknown images (nothing to separate)."""
    if not correct.any():
        raise CalibrationInputError("the model answered none of the images right: nothing to calibrate on")
    if correct.all():
        return None, {"abstain": None, "abstain_note": "every image was answered right: no rule fitted"}
    # float64: a float32 score equal to a threshold just above it would round onto it and be kept, as
    # the server compares Python floats (model/bundle/openset.py decide)
    scores = {k: v.astype(np.float64) for k, v in scores.items()}
    separation = {s: auroc(v[correct], v[~correct]) for s, v in scores.items()}
    best = max(separation, key=separation.__getitem__)
    v = scores[best]
    if target.fpr is not None:
        threshold = threshold_for_fpr(v[~known], target.fpr)
        aim = {"fpr": target.fpr}
    else:
        precision = DEFAULT_PRECISION if target.precision is None else target.precision
        reached = threshold_for_precision(v, correct, precision)
        aim = {"precision": precision}
        # out of reach: abstain on everything, and say so in the figures (coverage 0)
        threshold = float(np.nextafter(v.max(), np.inf)) if reached is None else reached
    if not np.isfinite(threshold):  # "accept every unknown" (fpr 1): the lowest score, kept finite for JSON
        threshold = float(v.min())
    kept = v >= threshold
    achieved = {
        "precision": float(correct[kept].mean()) if kept.any() else None,
        "coverage": float(kept[known].mean()),
        "fpr": float(kept[~known].mean()) if (~known).any() else None,
    }
    figures = {"abstain": {"score": best, "threshold": threshold, "target": aim, "achieved": achieved},
               "auroc": separation}  # fmt: skip
    return Rule(best, threshold, "calibration"), figures
