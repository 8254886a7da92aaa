"""The objectives: the paper's contrastive softmax (Radford et al., 2021, Figure 3) and SigLIP's
pairwise sigmoid (Zhai et al., ICCV 2023, Algorithm 1), each optionally with label-aware positives
(UniCL, Yang et al., CVPR 2022: when captions come from class labels, a batch holds several captions
of one class, and every pair of the same class is a positive instead of a negative).

The model returns L2-normalized features and the clamped scale exp(t); the loss lives here, apart from
the model, so the same model trains under other objectives (or gathers features across ranks first).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = 100.0  # exp(t) is clamped here so the softmax cannot become a hard max


def clip_logits(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """[N, E] x [M, E] normalized features -> [N, M] logits = exp(t) * I @ T.T."""
    return logit_scale * image_features @ text_features.T


def _check_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image features {tuple(image_features.shape)} and text features "
            f"{tuple(text_features.shape)} must have the same shape"
        )


def same_class(class_ids: torch.Tensor) -> torch.Tensor:
    """[N] class ids -> [N, N] bool: pair (i, j) is a positive when image i and caption j share a
    class (UniCL's targets); the diagonal is always True."""
    return class_ids[:, None] == class_ids[None, :]


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy over the batch: image i's positive is text i and vice versa; with
    `positives` ([N, N] bool, e.g. same_class), each image's target is spread evenly over its
    positive captions and each caption's over its positive images (UniCL's multi-positive softmax;
    with the identity it is the paper's loss)."""
    _check_pair(image_features, text_features)
    # Compute the logits in fp32 even under autocast: bf16 softmax over a large batch loses the signal.
    logits = clip_logits(image_features.float(), text_features.float(), logit_scale.float())  # [N, N]
    if positives is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    pos = positives.to(logits.dtype)
    image_targets = pos / pos.sum(dim=1, keepdim=True)  # [N, N], rows sum to 1
    text_targets = pos.T / pos.T.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, image_targets) + F.cross_entropy(logits.T, text_targets)) / 2


SIGLIP_INIT_SCALE = math.log(10.0)  # SigLIP's t' (exp(t') = 10) and b, as the paper initialises them
SIGLIP_INIT_BIAS = -10.0


def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss: every (image, caption) pair of the batch is a binary
    problem, z_ij = +1 for a positive (the diagonal, or `positives`) and -1 otherwise,
    loss = -1/N sum_ij log sigmoid(z_ij (exp(t) x_i . y_j + b)). No normalisation over the batch, so
    each pair's term is independent of the others' - what makes it work at small batch sizes."""
    _check_pair(image_features, text_features)
    logits = clip_logits(image_features.float(), text_features.float(), logit_scale.float())
    logits = logits + logit_bias.float()  # [N, N]
    n = logits.shape[0]
    if positives is None:
        positives = torch.eye(n, dtype=torch.bool, device=logits.device)
    signs = 2 * positives.to(logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum() / n
