"""Answers that can say "none of these": open-set scores and per-label probabilities. Torch-free.

A zero-shot softmax always picks one of the labels sent, however poorly the image matches them. Three
ways out, none of which needs labelled data:
- MCM (Ming et al., NeurIPS 2022): the top softmax probability; low when no label stands out.
- NegLabel (Jiang et al., ICLR 2024): add many "negative" labels, words far from the user's, and take
  the share of the softmax mass that stays on the user's labels; an image of something else drifts to
  the negatives. The words are the commonest whole words of the bundle's own BPE vocabulary, so every
  bundle has a lexicon without shipping another file.
- Thresholds on the top cosine or probability, chosen by the user or fitted by calibration.
`multi` answers give each label a probability of its own, from how far its cosine stands above what
arbitrary words score on the same image, so adding or removing other labels cannot change it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model.bundle.tokenizer import TextTokenizer

LEXICON_WORDS = 10_000  # whole words mined from the vocabulary
LEXICON_TEMPLATE = "a photo of a {}."
NEGATIVES = 3_000  # words kept as negative labels: those farthest from the label set
# The multi reference: the cosine of the image's REFERENCE_RANK-th most similar lexicon word. A rank,
# not the maximum, so that the few lexicon words that name the label itself ("circle") do not count.
REFERENCE_RANK = 10

Mode = Literal["single", "multi"]
MODES: tuple[Mode, ...] = ("single", "multi")
# mcm: the top single-mode probability; multi: the top multi-mode probability; cosine: the top cosine;
# neglabel: the NegLabel score. Every score is "higher = more in-set"; an answer abstains below.
Score = Literal["mcm", "multi", "cosine", "neglabel"]
SCORES: tuple[Score, ...] = ("mcm", "multi", "cosine", "neglabel")


def lexicon(tokenizer: TextTokenizer, n: int = LEXICON_WORDS) -> list[str]:
    """The n commonest whole words of the vocabulary: lower-case ASCII letters, three or more.

    CLIP's BPE marks a word's end ("dog</w>") and its ids follow merge order; SentencePiece (SigLIP)
    marks a word's start ("▁dog") and its ids follow the pieces' scores. Either way lower ids are the
    more frequent words of the tokenizer's corpus."""
    words = []
    for t, i in tokenizer.vocab().items():
        w = t[:-4] if t.endswith("</w>") else t[1:] if t.startswith("▁") else ""
        if len(w) >= 3 and w.isascii() and w.isalpha() and w.islower():
            words.append((i, w))
    return [w for _, w in sorted(words)[:n]]


def select_negatives(lexicon_matrix: np.ndarray, labels_matrix: np.ndarray, m: int = NEGATIVES) -> np.ndarray:
    """NegMining: indices of the m lexicon words least similar to any label ([W, E] x [N, E] -> [m]).

    A word close to a label (a synonym, the label's own noun) would pull in-set images away from it,
    so only the far ones are kept; NegRefine (ICCV 2025) filters such lists the same way."""
    m = min(m, len(lexicon_matrix))
    nearest = (lexicon_matrix @ labels_matrix.T).max(axis=1)  # [W]
    return np.sort(np.argpartition(nearest, m - 1)[:m]) if m < len(nearest) else np.arange(len(nearest))


def neglabel_score(cos_labels: np.ndarray, cos_negatives: np.ndarray, logit_scale: float) -> np.ndarray:
    """NegLabel: sum_i e^(s c_i) / (sum_i e^(s c_i) + sum_j e^(s c_j)), per image ([B, N], [B, M] -> [B])."""
    zi = logit_scale * cos_labels.astype(np.float64)
    zn = logit_scale * cos_negatives.astype(np.float64)
    top = np.maximum(zi.max(axis=1), zn.max(axis=1, initial=-np.inf))[:, None]
    inside = np.exp(zi - top).sum(axis=1)
    return inside / (inside + np.exp(zn - top).sum(axis=1))


def reference(cos_lexicon: np.ndarray, rank: int = REFERENCE_RANK) -> np.ndarray:
    """Per image, the cosine of its rank-th most similar lexicon word ([B, W] -> [B])."""
    k = min(rank, cos_lexicon.shape[1]) - 1
    return -np.partition(-cos_lexicon, k, axis=1)[:, k]


def multi_probability(
    cosine: np.ndarray,
    ref: np.ndarray,
    logit_scale: float,
    a: np.ndarray | None = None,
    b: np.ndarray | None = None,
) -> np.ndarray:
    """An independent probability per label: sigmoid(a_i (c_i - ref) + b_i), [B, N].

    Uncalibrated, a = logit_scale and b = 0: 0.5 where a label scores like the image's REFERENCE_RANK-th
    best arbitrary word. Calibration fits a and b per label (Platt scaling on the same quantity)."""
    z = cosine.astype(np.float64) - ref[:, None]
    z = z * (logit_scale if a is None else a[None, :]) + (0.0 if b is None else b[None, :])
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # a sigmoid that cannot overflow


def sigmoid_probability(cosine: np.ndarray, logit_scale: float, logit_bias: float) -> np.ndarray:
    """SigLIP's own per-label probability, sigmoid(logit_scale x cosine + logit_bias), [B, N]."""
    z = logit_scale * cosine.astype(np.float64) + logit_bias
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # a sigmoid that cannot overflow


def softmax_probability(cosine: np.ndarray, logit_scale: float, temperature: float = 1.0) -> np.ndarray:
    """softmax(logit_scale x cosine / T) over the labels, [B, N]; T = 1 is CLIP's own."""
    z = (logit_scale / temperature) * cosine.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Rule:
    """Abstain when `score` is below `threshold`; `source` says who set it: request or calibration."""

    score: Score
    threshold: float
    source: str = "request"


@dataclass(frozen=True)
class Decision:
    abstained: bool
    score: Score
    value: float
    threshold: float
    source: str


def decide(rules: Sequence[Rule], values: dict[Score, np.ndarray], n: int) -> list[Decision | None]:
    """Per image (n of them), the rule that decided: the first one failed, else the first one (all
    passed); None when there are no rules. `values` holds each ruled score per image."""
    out: list[Decision | None] = []
    for i in range(n):
        decided: Decision | None = None
        for r in rules:
            v = float(values[r.score][i])
            d = Decision(v < r.threshold, r.score, v, r.threshold, r.source)
            if decided is None or (d.abstained and not decided.abstained):
                decided = d
            if d.abstained:
                break
        out.append(decided)
    return out
