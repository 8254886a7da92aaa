"""Tests for model.bundle.calibration: temperature and Platt scaling, and the operating thresholds."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from model.bundle.calibration import (
    fit_platt,
    fit_temperature,
    nll,
    sigmoid,
    softmax,
    threshold_for_fpr,
    threshold_for_precision,
)


def sample_targets(rng: np.random.Generator, probability: np.ndarray) -> np.ndarray:
    """One class per row drawn from its probabilities (inverse CDF)."""
    cdf = probability.cumsum(axis=1)
    u = rng.uniform(size=(len(probability), 1))
    return np.minimum((cdf < u).sum(axis=1), probability.shape[1] - 1)


# --- softmax and temperature ----------------------------------------------------------------------


def test_softmax_is_stable_and_float64() -> None:
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = softmax(logits)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-7)
    np.testing.assert_allclose(softmax(np.array([[0.0, 2.0]]), 2.0), softmax(np.array([[0.0, 1.0]])))


def test_nll_hand_value_and_checks() -> None:
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    assert nll(logits, np.array([0, 0]), 1.0) == pytest.approx(-(np.log(0.5) + np.log(0.75)) / 2)
    with pytest.raises(ValueError, match="targets"):
        nll(logits, np.array([0, 2]), 1.0)
    with pytest.raises(ValueError, match="targets"):
        nll(logits, np.array([0.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        nll(logits, np.array([0, 1]), 0.0)


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 4.0, size=(5000, 10))  # like logit_scale * cosine: a few units apart
    targets = sample_targets(rng, softmax(z, 2.5))
    t = fit_temperature(z, targets)
    assert abs(t - 2.5) < 0.15
    assert nll(z, targets, t) < nll(z, targets, 1.0)
    # it is the minimum: a little either side is no better
    assert nll(z, targets, t) <= min(nll(z, targets, t * 1.05), nll(z, targets, t / 1.05))


def test_fit_temperature_is_deterministic_and_stays_in_range() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(300, 5))
    targets = z.argmax(axis=1)  # always right: the sharpest softmax wins, at the low end
    t = fit_temperature(z, targets)
    assert t == fit_temperature(z, targets)
    assert 0.05 <= t < 0.06
    # logits that point the wrong way: NLL rises with 1/T, so the flattest softmax wins
    assert 19.9 < fit_temperature(z, z.argmin(axis=1)) <= 20.0


# --- Platt scaling --------------------------------------------------------------------------------


def test_sigmoid_is_stable() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = sigmoid(np.array([-1e6, -30.0, 0.0, 30.0, 1e6]))
    np.testing.assert_allclose(y, [0.0, 1 / (1 + np.exp(30.0)), 0.5, 1 / (1 + np.exp(-30.0)), 1.0])


def test_fit_platt_recovers_known_parameters() -> None:
    rng = np.random.default_rng(2)
    scores = rng.normal(0.0, 2.0, 100_000)
    positive = rng.uniform(size=scores.shape) < sigmoid(1.7 * scores - 0.8)
    a, b = fit_platt(scores, positive)
    assert a == pytest.approx(1.7, abs=0.05)
    assert b == pytest.approx(-0.8, abs=0.05)


@pytest.mark.parametrize("strength", [0.0, 1.0])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_fit_platt_is_finite_on_separable_classes(strength: float, scale: float) -> None:
    scores = np.array([-3.0, -2.0, -1.5, -1.0, 1.0, 2.0, 3.0]) * scale
    positive = scores > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would raise here
        a, b = fit_platt(scores, positive, strength=strength)
    assert np.isfinite([a, b]).all()
    p = sigmoid(a * scores + b)
    assert a > 0 and p[positive].min() > 0.5 > p[~positive].max()
    # the smoothed targets bound how sure it gets: (n+ + 1) / (n+ + 2) = 0.8 for three positives
    assert p.max() < 0.99


def test_fit_platt_with_one_positive_stays_near_the_prior() -> None:
    rng = np.random.default_rng(3)
    scores = np.append(rng.normal(-4.0, 1.0, 40), 2.0)  # logits: negatives low, one positive high
    positive = np.append(np.zeros(40, bool), True)
    a, b = fit_platt(scores, positive)
    assert np.isfinite([a, b]).all()
    assert 0.2 < a < 3.0 and abs(b) < 5.0
    assert sigmoid(a * 2.0 + b) > sigmoid(a * -4.0 + b)
    # a stronger pull lands nearer the prior
    a_strong, b_strong = fit_platt(scores, positive, strength=1e4)
    assert abs(a_strong - 1.0) + abs(b_strong) < abs(a - 1.0) + abs(b)
    assert a_strong == pytest.approx(1.0, abs=0.05)


def test_fit_platt_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="empty"):
        fit_platt(np.array([]), np.array([], bool))
    with pytest.raises(ValueError, match="shape"):
        fit_platt(np.array([0.1, 0.2]), np.array([True]))
    with pytest.raises(ValueError, match="strength"):
        fit_platt(np.array([0.1]), np.array([True]), strength=-1.0)


# --- thresholds -----------------------------------------------------------------------------------


def test_threshold_for_fpr_hand_examples() -> None:
    negative = np.array([0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    t = threshold_for_fpr(negative, 0.2)  # two of ten may pass: just above 0.7
    assert t == np.nextafter(0.7, np.inf)
    assert (negative >= t).mean() <= 0.2 and (negative >= 0.7).mean() > 0.2
    assert threshold_for_fpr(negative, 0.0) == np.nextafter(0.9, np.inf)
    assert threshold_for_fpr(negative, 0.75) == np.nextafter(0.2, np.inf)  # 7/10 above 0.2
    assert threshold_for_fpr(negative, 0.85) == np.nextafter(0.2, np.inf)
    assert threshold_for_fpr(negative, 0.9) == np.nextafter(0.1, np.inf)
    assert threshold_for_fpr(negative, 1.0) == -np.inf
    with pytest.raises(ValueError, match="fpr"):
        threshold_for_fpr(negative, -0.1)


@pytest.mark.parametrize("seed", range(3))
def test_threshold_for_fpr_is_the_smallest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    negative = rng.normal(size=200).round(1)
    fpr = float(rng.uniform(0.0, 0.5))
    t = threshold_for_fpr(negative, fpr)
    assert (negative >= t).mean() <= fpr
    assert (negative >= np.nextafter(t, -np.inf)).mean() > fpr


def test_threshold_for_precision_hand_example() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([True, True, False, True, False, False])
    # precision at t = each score: 1, 1, 2/3, 3/4, 3/5, 1/2; precision is not monotone in t
    assert threshold_for_precision(scores, correct, 0.75) == 0.6
    assert threshold_for_precision(scores, correct, 0.7) == 0.6
    assert threshold_for_precision(scores, correct, 0.6) == 0.5
    assert threshold_for_precision(scores, correct, 1.0) == 0.8
    assert threshold_for_precision(scores, correct, 0.0) == 0.4


def test_threshold_for_precision_ties_enter_together_and_none_when_unreachable() -> None:
    scores = np.array([0.9, 0.5, 0.5])
    correct = np.array([False, True, True])
    assert threshold_for_precision(scores, correct, 0.6) == 0.5  # 2/3 at t = 0.5, 0 at t = 0.9
    assert threshold_for_precision(scores, correct, 0.7) is None
    assert threshold_for_precision(np.array([0.3, 0.2]), np.array([False, False]), 0.1) is None
    with pytest.raises(ValueError, match="precision"):
        threshold_for_precision(scores, correct, 1.5)
