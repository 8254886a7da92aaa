"""Tests for model.bundle.metrics, against brute-force references written here (no sklearn in the venv)."""

from __future__ import annotations

import numpy as np
import pytest

from model.bundle.metrics import (
    accuracy_at_coverage,
    auroc,
    best_f1_threshold,
    coverage_curve,
    expected_calibration_error,
    fpr_at_tpr,
    mean_average_precision,
    multilabel_f1,
    reliability_bins,
)


def pairwise_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """The definition itself: every (positive, negative) pair, ties counting 1/2."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def brute_average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """sum over distinct thresholds, highest first, of (R_k - R_{k-1}) * P_k."""
    ap, recall_before = 0.0, 0.0
    for v in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= v
        tp = (predicted & positive).sum()
        recall = tp / positive.sum()
        ap += (recall - recall_before) * tp / predicted.sum()
        recall_before = recall
    return ap


# --- AUROC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # rounding to a coarse grid makes ties common, within and across the two sides
    pos = np.round(rng.normal(0.5, 1.0, size=rng.integers(1, 300)), 1)
    neg = np.round(rng.normal(0.0, 1.0, size=rng.integers(1, 300)), 1)
    assert auroc(pos, neg) == pytest.approx(pairwise_auroc(pos, neg), abs=1e-12)


def test_auroc_extremes() -> None:
    low, high = np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8])
    assert auroc(high, low) == 1.0
    assert auroc(low, high) == 0.0
    same = np.full(4, 0.5)
    assert auroc(same, same[:3]) == 0.5


def test_auroc_names_the_empty_side() -> None:
    with pytest.raises(ValueError, match="negative"):
        auroc(np.array([1.0]), np.array([]))
    with pytest.raises(ValueError, match="positive"):
        auroc(np.array([]), np.array([1.0]))


# --- FPR at TPR -----------------------------------------------------------------------------------


def test_fpr_at_tpr_hand_example() -> None:
    pos = np.arange(1.0, 21.0)  # 1..20: 95% TPR keeps 19 of 20, so t = 2
    neg = np.array([0.0, 1.5, 2.0, 2.5, 30.0])  # at t = 2: 2.0, 2.5 and 30 pass
    assert fpr_at_tpr(pos, neg, 0.95) == pytest.approx(3 / 5)
    assert fpr_at_tpr(pos, neg, 1.0) == pytest.approx(4 / 5)  # t = 1: all but 0.0
    assert fpr_at_tpr(pos, neg, 0.05) == pytest.approx(1 / 5)  # t = 20: only 30


def test_fpr_at_tpr_with_tied_positives() -> None:
    # (pos >= 1).mean() = 1 and (pos >= 3).mean() = 0.5: 0.9 TPR needs t = 1
    pos, neg = np.array([1.0, 1.0, 3.0, 3.0]), np.array([0.0, 2.0])
    assert fpr_at_tpr(pos, neg, 0.9) == 0.5
    assert fpr_at_tpr(pos, neg, 0.5) == 0.0


def test_fpr_at_tpr_rejects_a_bad_rate() -> None:
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(np.array([1.0]), np.array([0.0]), 1.5)


# --- calibration ----------------------------------------------------------------------------------


def test_ece_of_calibrated_data_is_small_and_of_overconfident_data_large() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.0, 1.0, 200_000)
    calibrated = rng.uniform(size=confidence.shape) < confidence
    assert expected_calibration_error(confidence, calibrated) < 0.01
    overconfident = rng.uniform(size=confidence.shape) < confidence**3
    assert expected_calibration_error(confidence, overconfident) > 0.15


def test_ece_hand_example_and_confidence_one_in_last_bin() -> None:
    confidence = np.array([0.05, 0.15, 0.95, 1.0])
    correct = np.array([False, True, True, True])
    # bins of width 0.1: |0 - 0.05| + |1 - 0.15| + 2 * |1 - 0.975|, each over n = 4
    expected = (0.05 + 0.85 + 2 * 0.025) / 4
    assert expected_calibration_error(confidence, correct, bins=10) == pytest.approx(expected)
    bins = reliability_bins(confidence, correct, bins=10)
    assert [b["count"] for b in bins] == [1.0, 1.0, 2.0]
    assert bins[-1]["lo"] == pytest.approx(0.9) and bins[-1]["hi"] == 1.0
    assert bins[-1]["confidence"] == pytest.approx(0.975) and bins[-1]["accuracy"] == 1.0


def test_reliability_bins_weigh_up_to_the_ece() -> None:
    rng = np.random.default_rng(1)
    confidence = rng.uniform(size=1000)
    correct = rng.uniform(size=1000) < 0.6
    bins = reliability_bins(confidence, correct)
    assert sum(b["count"] for b in bins) == 1000
    ece = sum(b["count"] / 1000 * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert expected_calibration_error(confidence, correct) == pytest.approx(ece)


def test_calibration_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([1.2]), np.array([True]))
    with pytest.raises(ValueError, match="shape"):
        expected_calibration_error(np.array([0.2, 0.3]), np.array([True]))
    with pytest.raises(ValueError, match="empty"):
        expected_calibration_error(np.array([]), np.array([], bool))
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error(np.array([0.5]), np.array([True]), bins=0)


# --- selective classification ---------------------------------------------------------------------


def test_coverage_curve() -> None:
    confidence = np.array([0.2, 0.9, 0.5, 0.7])
    correct = np.array([True, True, False, False])
    coverage, accuracy = coverage_curve(confidence, correct)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(accuracy, [1.0, 0.5, 1 / 3, 0.5])  # order 0.9, 0.7, 0.5, 0.2
    assert accuracy[-1] == correct.mean()  # full coverage is plain accuracy
    assert accuracy_at_coverage(confidence, correct, 0.5) == 0.5
    assert accuracy_at_coverage(confidence, correct, 0.3) == 0.5  # ceil(1.2) = 2 answers
    assert accuracy_at_coverage(confidence, correct, 0.01) == 1.0  # at least one answer


def test_accuracy_at_coverage_does_not_round_up_float_noise() -> None:
    confidence = np.linspace(1.0, 0.1, 10)
    correct = np.array([True] * 3 + [False] * 7)
    assert accuracy_at_coverage(confidence, correct, 0.3) == 1.0  # 0.3 * 10 is 3.0000000000000004


def test_accuracy_at_coverage_rejects_zero() -> None:
    with pytest.raises(ValueError, match="coverage"):
        accuracy_at_coverage(np.array([0.5]), np.array([True]), 0.0)


# --- multi-label ----------------------------------------------------------------------------------


def test_multilabel_f1_hand_computation() -> None:
    probability = np.array([[0.9, 0.2, 0.6], [0.4, 0.8, 0.5]])
    truth = np.array([[True, False, False], [True, True, False]])
    # >= 0.5 predicts (0,0) (0,2) (1,1) (1,2): 2 right of 4 predicted, 2 of 3 true found
    got = multilabel_f1(probability, truth, 0.5)
    assert got["precision"] == pytest.approx(0.5)
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert got["threshold"] == 0.5


def test_multilabel_f1_with_no_predictions_counts_precision_zero() -> None:
    got = multilabel_f1(np.array([[0.1, 0.2]]), np.array([[True, False]]), 0.9)
    assert got == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "threshold": 0.9}


@pytest.mark.parametrize("seed", range(3))
def test_best_f1_threshold_beats_a_grid(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(size=(60, 8)) < 0.3
    probability = np.clip(0.35 * truth + rng.uniform(0.0, 0.7, truth.shape), 0, 1).round(2)
    threshold, f1 = best_f1_threshold(probability, truth)
    assert threshold in set(probability.ravel().tolist())
    assert f1 == multilabel_f1(probability, truth, threshold)["f1"]
    grid = [multilabel_f1(probability, truth, t)["f1"] for t in np.linspace(0.0, 1.0, 201)]
    assert f1 >= max(grid) - 1e-12
    every = [multilabel_f1(probability, truth, t)["f1"] for t in np.unique(probability)]
    assert f1 == pytest.approx(max(every), abs=1e-12)


def test_map_sklearn_doc_example() -> None:
    # sklearn's average_precision_score docstring: y_true [0, 0, 1, 1], scores [0.1, 0.4, 0.35, 0.8]
    probability = np.array([[0.1], [0.4], [0.35], [0.8]])
    truth = np.array([[0], [0], [1], [1]])
    assert mean_average_precision(probability, truth) == pytest.approx(0.8333333333)


@pytest.mark.parametrize("seed", range(3))
def test_map_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(size=(80, 6)) < 0.25
    truth[:, 5] = False  # a label with no positive is left out of the mean
    probability = (0.3 * truth + rng.uniform(size=truth.shape)).round(1)  # with ties
    expected = np.mean([brute_average_precision(probability[:, j], truth[:, j]) for j in range(5)])
    assert mean_average_precision(probability, truth) == pytest.approx(expected, abs=1e-12)


def test_map_without_ties_is_mean_precision_at_each_positive() -> None:
    rng = np.random.default_rng(7)
    scores = rng.uniform(size=50)
    positive = rng.uniform(size=50) < 0.4
    ranked = positive[np.argsort(-scores)]
    hits = np.flatnonzero(ranked)
    expected = np.mean(np.arange(1, len(hits) + 1) / (hits + 1))
    assert mean_average_precision(scores[:, None], positive[:, None]) == pytest.approx(expected)


def test_multilabel_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="2-D"):
        multilabel_f1(np.array([0.5]), np.array([True]), 0.5)
    with pytest.raises(ValueError, match="truth"):
        mean_average_precision(np.zeros((2, 2)), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="no positive"):
        mean_average_precision(np.zeros((2, 2)), np.zeros((2, 2), bool))
