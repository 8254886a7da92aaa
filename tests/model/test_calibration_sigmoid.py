"""Calibrating a sigmoid-loss bundle (SigLIP): the per-label Platt fit reads the model's own logit
(logit_scale x cosine + logit_bias) instead of the lexicon's reference, starts from it, and is what
mode=multi answers once fitted; a fit of the lexicon's kind is never applied to such a bundle."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from model.bundle.answers import AnswerOptions, answer, needs_lexicon
from model.bundle.calibration_fit import Target, fit_set
from model.bundle.calibration_store import Fit

SCALE, BIAS = 10.0, 4.0  # a bias far too high: every label looks likely, the sigmoid is overconfident


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def world(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """3 labels in 16 dimensions, 30 images of each of the first two near their label, 10 of none;
    the third label has no image. Returns features, truth, label matrix, lexicon."""
    rng = np.random.default_rng(seed)
    matrix = unit(rng.normal(size=(3, 16)))
    feats = [unit(matrix[i] + 0.6 * rng.normal(size=(30, 16))) for i in range(2)]
    feats.append(unit(rng.normal(size=(10, 16))))
    truth = np.concatenate([np.zeros(30), np.ones(30), -np.ones(10)]).astype(np.int64)
    return (
        np.concatenate(feats).astype(np.float32),
        truth,
        matrix.astype(np.float32),
        unit(rng.normal(size=(50, 16))),
    )


def fit(logit_bias: float | None) -> Fit:
    feats, truth, matrix, lex = world()
    labels = ["a", "b", "c"]
    return fit_set(
        feats, truth, labels, matrix, SCALE, lex, np.arange(10), Target(), "sha", {}, "d", logit_bias
    )


def test_the_fit_reads_the_models_own_logit_and_improves_on_it() -> None:
    f = fit(BIAS)
    assert f.figures["multi_on"] == "cosine"
    assert (f.a[2], f.b[2]) == (SCALE, BIAS)  # the label without images keeps the model's own sigmoid
    assert f.b[0] < BIAS and f.b[1] < BIAS  # the overconfident bias is pulled down where there are images
    assert f.figures["multi_bce_after"] < 0.5 * f.figures["multi_bce_before"]
    clip = fit(None)  # the same images on a CLIP bundle: the lexicon's reference, prior (scale, 0)
    assert clip.figures["multi_on"] == "cosine - reference" and (clip.a[2], clip.b[2]) == (SCALE, 0.0)


def test_multi_answers_the_fitted_sigmoid_and_ignores_a_fit_of_the_other_kind() -> None:
    feats, _, matrix, _ = world(1)
    f = fit(BIAS)
    opts = AnswerOptions(mode="multi")
    assert needs_lexicon(opts, f, BIAS) == (False, False)  # still no lexicon needed
    cos = feats[:5] @ matrix.T

    def probs(the_fit: Fit | None) -> np.ndarray:
        out = answer(feats[:5], ["a", "b", "c"], matrix, SCALE, 3, opts, the_fit, logit_bias=BIAS)
        return np.array([[{x.label: x.probability for x in a.labels}[k] for k in "abc"] for a in out])

    expected = 1 / (1 + np.exp(-(cos * np.array(f.a) + np.array(f.b))))
    np.testing.assert_allclose(probs(f), expected, atol=1e-5)
    own = 1 / (1 + np.exp(-(SCALE * cos + BIAS)))
    np.testing.assert_allclose(probs(None), own, atol=1e-5)
    old = replace(f, figures={k: v for k, v in f.figures.items() if k != "multi_on"})
    np.testing.assert_allclose(probs(old), own, atol=1e-5)  # a lexicon-kind fit: the model's own sigmoid
    assert not np.allclose(probs(f), own, atol=1e-3)  # and the fitted one does differ


def test_the_temperature_and_rule_do_not_depend_on_the_scoring() -> None:
    f, g = fit(BIAS), fit(None)
    assert f.temperature == pytest.approx(g.temperature) and f.rule == g.rule
