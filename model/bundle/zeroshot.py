"""Zero-shot classification maths, shared by the server, `zeroshot eval` and training-time eval.

Given any encoders (the bundle's ONNX ones, a torch model behind the same interface, or a fake): the
prompt-ensembled label matrix, cosine similarities, softmax probabilities and the top-k ranking.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from model.bundle.encoders import TextEncoder, l2_normalize
from model.bundle.prompts import fill

Progress = Callable[[int, int], None]  # (prompts done, prompts in all)


def label_matrix(
    encoders: TextEncoder,
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
        # template-major: neighbouring prompts share a template and so have like token lengths, and an
        # encoder that runs them in slices (the server's text lane) pads each slice little
        prompts = [p for tmpl in templates for label in part for p in fill((tmpl,), label)]
        feats = encoders.encode_texts(prompts, batch_size=batch_size)  # [T*n, E], normalized
        out[start : start + len(part)] = feats.reshape(t, len(part), -1).mean(axis=0)  # [n, E]
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


@dataclass
class LabelScore:
    label: str
    probability: float
    cosine: float


def top_k_order(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of a row, largest first; ties keep their order."""
    if k < len(row):
        top = np.argpartition(-row, k - 1)[:k]
        return top[np.argsort(-row[top], kind="stable")]
    return np.argsort(-row, kind="stable")


def rank(
    image_features: np.ndarray,
    labels: Sequence[str],
    labels_matrix: np.ndarray,
    logit_scale: float,
    top_k: int,
) -> list[list[LabelScore]]:
    """Image features [B, E] against a label matrix [N, E]: the top_k labels per image by cosine."""
    cosine, prob = scores(image_features, labels_matrix, logit_scale)
    return [
        [LabelScore(labels[i], float(row_p[i]), float(row_c[i])) for i in top_k_order(row_c, top_k)]
        for row_c, row_p in zip(cosine, prob, strict=True)
    ]
