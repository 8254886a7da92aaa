"""Calibration fitted from a few labelled images. Torch-free (numpy only): the server fits these too.

- temperature scaling of the label softmax (Guo et al., 2017): one T for all labels, found by a
  golden-section search on log T, since NLL is unimodal in T (convex in 1/T);
- Platt scaling of one label's score into a probability, with an L2 pull toward a prior so that a
  label with one to three positive images still gets finite, sensible parameters;
- thresholds that hold a false-positive rate on negatives, or a precision on labelled answers.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "fit_platt",
    "fit_temperature",
    "nll",
    "sigmoid",
    "softmax",
    "threshold_for_fpr",
    "threshold_for_precision",
]

T_MIN, T_MAX = 0.05, 20.0  # the search range of fit_temperature
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...: the interval shrinks by this each step
_PLATT_ITERATIONS = 50


# --- input checks ---------------------------------------------------------------------------------


def _finite(x: np.ndarray, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def _flags(x: np.ndarray, name: str, size: int) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != (size,):
        raise ValueError(f"{name} has shape {a.shape}, expected ({size},)")
    if a.dtype != np.bool_:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans or 0/1")
        a = a.astype(bool)
    return a


def _rate(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def _classification(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = _finite(logits, "logits", ndim=2)  # [n, N]
    y = np.asarray(targets)
    if y.shape != (z.shape[0],):
        raise ValueError(f"targets has shape {y.shape}, expected ({z.shape[0]},)")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"targets must lie in [0, {z.shape[1]}), got [{y.min()}, {y.max()}]")
    return z, y


# --- softmax and temperature ----------------------------------------------------------------------


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)  # exp of at most 0: no overflow
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis (rows of [n, N]), float64, stable."""
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    return float(-_log_softmax(z / temperature)[np.arange(len(y)), y].mean())


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the targets [n] under softmax(logits [n, N] / temperature)."""
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    z, y = _classification(logits, targets)
    return _nll(z, y, temperature)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature scaling: the T in [0.05, 20] that minimises nll(logits, targets, T).

    logits are what the model softmaxes (CLIP's logit_scale * cosine, [n, N]); targets int [n].
    NLL is convex in 1/T, hence unimodal in log T, so a golden-section search on log T finds the
    minimum deterministically; it stops once the bracket is narrower than 1e-4 in log T.
    """
    z, y = _classification(logits, targets)
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = _nll(z, y, math.exp(a)), _nll(z, y, math.exp(b))
    while hi - lo > 1e-4:
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = _nll(z, y, math.exp(a))
        else:  # the minimum lies in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = _nll(z, y, math.exp(b))
    return float(min(max(math.exp((lo + hi) / 2.0), T_MIN), T_MAX))


# --- Platt scaling --------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in float64 without overflow for any finite x."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _platt_loss(s: np.ndarray, t: np.ndarray, ab: np.ndarray, prior: np.ndarray, strength: float) -> float:
    z = ab[0] * s + ab[1]
    # cross-entropy of target t against sigmoid(z) is softplus(z) - t z, stable for any z
    return float(np.sum(_softplus(z) - t * z) + 0.5 * strength * np.sum((ab - prior) ** 2))


def _platt_step(
    s: np.ndarray, t: np.ndarray, ab: np.ndarray, loss: float, prior: np.ndarray, strength: float
) -> tuple[np.ndarray, float] | None:
    """One damped Newton step from ab: the new (a, b) and loss, or None if no step lowers the loss."""
    p = sigmoid(ab[0] * s + ab[1])
    d = p - t
    grad = np.array([d @ s, d.sum()]) + strength * (ab - prior)
    w = p * (1.0 - p)  # IRLS weights
    ridge = strength + 1e-12  # keeps the Hessian invertible when all scores are equal and strength is 0
    hess = np.array([[w @ (s * s) + ridge, w @ s], [w @ s, w.sum() + ridge]])
    step = np.linalg.solve(hess, grad)
    decrease = float(grad @ step)  # > 0: the Hessian is positive definite
    size = 1.0
    while size >= 1e-10:  # halve the step until the loss drops enough (Armijo)
        candidate = ab - size * step
        new_loss = _platt_loss(s, t, candidate, prior, strength)
        if new_loss <= loss - 1e-4 * size * decrease:
            return candidate, new_loss
        size /= 2.0
    return None


def fit_platt(
    scores: np.ndarray,
    positive: np.ndarray,
    prior: tuple[float, float] = (1.0, 0.0),
    strength: float = 1.0,
) -> tuple[float, float]:
    """Platt scaling: (a, b) with p = sigmoid(a * score + b).

    Minimises the summed cross-entropy against Platt's smoothed targets ((n+ + 1) / (n+ + 2) for
    positives, 1 / (n- + 2) for negatives) plus (strength / 2) * |(a, b) - prior|^2, by Newton's
    method (IRLS) with a backtracking line search, as Lin, Lin and Weng (2007) make Platt's method
    robust. The smoothed targets keep the optimum finite even when the classes separate perfectly,
    and the pull toward the prior (the identity by default: the score is already a logit) keeps a
    label with 1-3 positives near it. Stops at convergence or after 50 iterations.
    """
    s = _finite(scores, "scores", ndim=1)
    pos = _flags(positive, "positive", len(s))
    if not (math.isfinite(strength) and strength >= 0.0):
        raise ValueError(f"strength must be finite and >= 0, got {strength}")
    prior_ab = np.asarray(prior, dtype=np.float64)
    if prior_ab.shape != (2,) or not np.isfinite(prior_ab).all():
        raise ValueError(f"prior must be two finite numbers (a, b), got {prior!r}")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    t = np.where(pos, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    # start where no score saturates (a = 0, b = the log-odds of the mean target, as Lin et al. do):
    # from a saturated start, such as the prior on scores of size 1e4, the Hessian is ~0
    mean_t = float(t.mean())
    ab = np.array([0.0, math.log(mean_t / (1.0 - mean_t))])
    loss = _platt_loss(s, t, ab, prior_ab, strength)
    for _ in range(_PLATT_ITERATIONS):
        moved = _platt_step(s, t, ab, loss, prior_ab, strength)
        if moved is None:
            break  # no step lowers the loss any more: at the optimum to rounding
        new_ab, new_loss = moved
        small = np.max(np.abs(new_ab - ab)) < 1e-10 * (1.0 + np.max(np.abs(ab)))
        flat = loss - new_loss <= 1e-12 * max(1.0, abs(loss))
        ab, loss = new_ab, new_loss
        if small or flat:
            break
    return float(ab[0]), float(ab[1])


# --- thresholds -----------------------------------------------------------------------------------


def threshold_for_fpr(negative_scores: np.ndarray, fpr: float) -> float:
    """The smallest t with (negative_scores >= t).mean() <= fpr, for "accept when score >= t".

    The rate only drops just above a negative's value, so t is np.nextafter(v, inf) for some
    negative v; with fpr = 0 that is just above the largest negative. With fpr = 1 every t
    qualifies and the answer is -inf (accept everything).
    """
    neg = np.sort(_finite(negative_scores, "negative_scores", ndim=1))
    _rate(fpr, "fpr")
    if fpr >= 1.0:
        return -math.inf
    values = np.unique(neg)
    above = (len(neg) - np.searchsorted(neg, values, side="right")) / len(neg)  # rate just above v
    v = values[np.argmax(above <= fpr)]  # the rate is non-increasing; the largest value reaches 0
    return float(np.nextafter(v, np.inf))


def threshold_for_precision(scores: np.ndarray, correct: np.ndarray, precision: float) -> float | None:
    """The smallest t (most coverage) whose accepted answers (scores >= t) have a precision (mean of
    correct among them) of at least `precision`; None when no threshold reaches it.

    Candidates are the distinct scores. Precision is not monotone in t, so every candidate is
    checked, not just the first that fails.
    """
    s = _finite(scores, "scores", ndim=1)
    ok = _flags(correct, "correct", len(s))
    _rate(precision, "precision")
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    last = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))  # end of each tie group
    reached = np.cumsum(ok[order])[last] / (last + 1) >= precision
    if not reached.any():
        return None
    return float(s_sorted[last[np.flatnonzero(reached)[-1]]])
