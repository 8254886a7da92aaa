"""Evaluation figures for open-set, calibration and multi-label answers. Torch-free (numpy only).

- open set: AUROC and FPR at a fixed TPR, with the in-set ("accept") side as the positives;
- calibration: expected calibration error and its reliability bins (Guo et al., 2017), and the
  accuracy-against-coverage curve of selective classification;
- multi-label: micro-averaged F1 at a threshold, the best such threshold, and macro mean average
  precision computed step-wise as sklearn's `average_precision_score` does.

Everything validates its inputs and raises ValueError with the name of the offending argument, so a
report built from a bad evaluation run fails loudly instead of printing a plausible number.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "accuracy_at_coverage",
    "auroc",
    "best_f1_threshold",
    "coverage_curve",
    "expected_calibration_error",
    "fpr_at_tpr",
    "mean_average_precision",
    "multilabel_f1",
    "reliability_bins",
]


# --- input checks ---------------------------------------------------------------------------------


def _scores(x: np.ndarray, name: str, ndim: int = 1) -> np.ndarray:
    """A finite float64 array of `ndim` dimensions, not empty."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def _flags(x: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A bool array of the given shape; accepts bools or 0/1 numbers (what a label column holds)."""
    a = np.asarray(x)
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    if a.dtype != np.bool_:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans or 0/1")
        a = a.astype(bool)
    return a


def _confidence(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = _scores(confidence, "confidence")
    if conf.min() < 0.0 or conf.max() > 1.0:
        raise ValueError("confidence must lie in [0, 1]")
    return conf, _flags(correct, "correct", conf.shape)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each group of equal values
    return (ends - (counts - 1) / 2.0)[inverse]


# --- open set -------------------------------------------------------------------------------------


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting 1/2.

    Positives are the in-set ("accept") side: higher score means more in-set. Computed as the
    Mann-Whitney U statistic from average ranks, O(n log n), so a million scores take no time.
    """
    pos = _scores(positive, "positive")
    neg = _scores(negative, "negative")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    n_pos, n_neg = len(pos), len(neg)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float:
    """The OOD literature's "FPR@95%TPR", with in-set as the positives.

    The threshold is the highest t with (positive >= t).mean() >= tpr; the answer is
    (negative >= t).mean(). With tpr = 0 any threshold qualifies, so t = +inf and the answer is 0.
    """
    pos = _scores(positive, "positive")
    neg = _scores(negative, "negative")
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"tpr must lie in [0, 1], got {tpr}")
    if tpr == 0.0:
        return 0.0
    # (positive >= t).mean() only changes at the positives' values, so the highest t is one of them
    sorted_pos = np.sort(pos)
    values = np.unique(sorted_pos)
    rate = (len(pos) - np.searchsorted(sorted_pos, values, side="left")) / len(pos)
    t = values[rate >= tpr].max()  # values[0] always qualifies: rate there is 1
    return float((neg >= t).mean())


# --- calibration and selective classification ------------------------------------------------------


def _bin_index(conf: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bins over [0, 1], each [lo, hi); confidence 1.0 falls into the last bin."""
    if not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.minimum(np.searchsorted(edges, conf, side="right") - 1, bins - 1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Guo et al. (2017): sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin|."""
    conf, ok = _confidence(confidence, correct)
    index = _bin_index(conf, bins)
    conf_sum = np.bincount(index, weights=conf, minlength=bins)
    ok_sum = np.bincount(index, weights=ok.astype(np.float64), minlength=bins)
    # |sum(correct) - sum(confidence)| / n per bin is (n_bin / n) * |acc - conf| without dividing by 0
    return float(np.abs(ok_sum - conf_sum).sum() / len(conf))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per non-empty bin of the ECE: {"lo", "hi", "count", "confidence", "accuracy"} for reports."""
    conf, ok = _confidence(confidence, correct)
    index = _bin_index(conf, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out: list[dict[str, float]] = []
    for b in np.unique(index):
        members = index == b
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": float(members.sum()),
                "confidence": float(conf[members].mean()),
                "accuracy": float(ok[members].mean()),
            }
        )
    return out


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy against coverage: answers sorted by confidence, most confident first (ties keep their
    input order); coverage[i] = (i + 1) / n and accuracy[i] = accuracy of the i + 1 most confident."""
    conf, ok = _confidence(confidence, correct)
    order = np.argsort(-conf, kind="stable")
    kept = np.arange(1, len(conf) + 1)
    return kept / len(conf), np.cumsum(ok[order]) / kept


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy of the ceil(coverage * n) most confident answers (at least one), coverage in (0, 1]."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    _, accuracy = coverage_curve(confidence, correct)
    n = len(accuracy)
    # the small slack keeps 0.3 * 10 = 3.0000000000000004 from asking for 4 answers
    k = min(n, max(1, math.ceil(coverage * n - 1e-9)))
    return float(accuracy[k - 1])


# --- multi-label ----------------------------------------------------------------------------------


def _multilabel(probability: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob = _scores(probability, "probability", ndim=2)
    return prob, _flags(truth, "truth", prob.shape)


def multilabel_f1(probability: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 of predicted = probability >= threshold.

    probability [n, L] float, truth [n, L] bool. Precision with no predictions counts as 0 (not as
    the vacuous 1), recall with no true labels counts as 0, and F1 is 0 when both are 0, so a
    threshold that predicts nothing can never look good.
    """
    prob, true = _multilabel(probability, truth)
    predicted = prob >= threshold
    tp = int((predicted & true).sum())
    n_pred, n_true = int(predicted.sum()), int(true.sum())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "threshold": float(threshold)}


def best_f1_threshold(probability: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The threshold among the distinct probabilities that maximises micro F1: (threshold, f1).

    Any other threshold predicts the same set as the smallest distinct probability above it (or
    nothing, F1 0), so this is the best threshold of all. Ties go to the highest threshold. One sort,
    O(nL log nL).
    """
    prob, true = _multilabel(probability, truth)
    p, t = prob.ravel(), true.ravel()
    order = np.argsort(-p, kind="stable")
    p_sorted = p[order]
    tp = np.cumsum(t[order])  # true positives when predicting the i + 1 highest
    # predicting "probability >= v" takes the whole group of values equal to v: use its last member
    last = np.flatnonzero(np.append(p_sorted[1:] != p_sorted[:-1], True))
    f1 = 2.0 * tp[last] / (last + 1 + t.sum())  # micro F1 = 2 TP / (predicted + true)
    best = float(p_sorted[last[int(np.argmax(f1))]])
    # report F1 exactly as multilabel_f1 computes it, so the two never disagree in the last digit
    return best, multilabel_f1(prob, true, best)["f1"]


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Step-wise area under the precision-recall curve: sum over distinct thresholds, highest first,
    of (recall gained) * precision, tied scores entering together (sklearn's definition)."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    tp = np.cumsum(positive[order])[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def mean_average_precision(probability: np.ndarray, truth: np.ndarray) -> float:
    """Macro mean, over the labels (columns) with at least one positive, of average precision."""
    prob, true = _multilabel(probability, truth)
    labels = np.flatnonzero(true.any(axis=0))
    if len(labels) == 0:
        raise ValueError("truth has no positive for any label, so mean average precision is undefined")
    return float(np.mean([_average_precision(prob[:, j], true[:, j]) for j in labels]))
