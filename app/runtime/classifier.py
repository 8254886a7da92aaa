"""Zero-shot classification maths shared by the server and `zeroshot eval`. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.runtime.encoders import OnnxEncoders, l2_normalize
from model.prompts import fill


def label_matrix(
    encoders: OnnxEncoders, labels: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> np.ndarray:
    """CLIP's prompt ensembling: for each label, fill every template, encode, normalize, average, and
    normalize again. Returns [len(labels), E] float32."""
    prompts = [p for label in labels for p in fill(templates, label)]
    feats = encoders.encode_texts(prompts, batch_size=batch_size)  # [N*T, E], normalized
    feats = feats.reshape(len(labels), len(templates), -1).mean(axis=1)  # [N, E]
    return l2_normalize(feats).astype(np.float32)


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
