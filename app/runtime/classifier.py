"""Zero-shot classification maths shared by the server and `zeroshot eval`. Torch-free."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from app.runtime.encoders import OnnxEncoders, l2_normalize
from model.prompts import fill

Progress = Callable[[int, int], None]  # (prompts done, prompts in all)


def label_matrix(
    encoders: OnnxEncoders,
    labels: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    progress: Progress | None = None,
    chunk: int = 4096,
) -> np.ndarray:
    """CLIP's prompt ensembling: for each label, fill every template, encode, normalize, average, and
    normalize again. Returns [len(labels), E] float32. Long lists are encoded in chunks of whole labels
    so that `progress` can report as it goes."""
    t = len(templates)
    per_chunk = max(1, chunk // t)  # labels per chunk
    out = np.empty((len(labels), encoders.embed_dim), np.float32)
    for start in range(0, len(labels), per_chunk):
        part = labels[start : start + per_chunk]
        prompts = [p for label in part for p in fill(templates, label)]
        feats = encoders.encode_texts(prompts, batch_size=batch_size)  # [n*T, E], normalized
        out[start : start + len(part)] = feats.reshape(len(part), t, -1).mean(axis=1)  # [n, E]
        if progress is not None:
            progress((start + len(part)) * t, len(labels) * t)
    return l2_normalize(out).astype(np.float32, copy=False)


def scores(
    image_features: np.ndarray, labels_matrix: np.ndarray, logit_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Normalized image features [B, E] x label matrix [N, E] -> (cosine [B, N], probability [B, N]).

    probability = softmax(logit_scale * cosine) over the label set, computed stably in float64.
    """
    cosine = image_features @ labels_matrix.T  # [B, N]
    logits = logit_scale * cosine.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return cosine, (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
