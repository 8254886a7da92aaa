"""The paper's contrastive objective (Radford et al., 2021, Figure 3).

The model returns L2-normalized features and the clamped scale exp(t); the loss lives here, apart from
the model, so the same model trains under other objectives (or gathers features across ranks first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = 100.0  # exp(t) is clamped here so the softmax cannot become a hard max


def clip_logits(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """[N, E] x [M, E] normalized features -> [N, M] logits = exp(t) * I @ T.T."""
    return logit_scale * image_features @ text_features.T


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric cross-entropy over the batch: image i's positive is text i and vice versa."""
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image features {tuple(image_features.shape)} and text features "
            f"{tuple(text_features.shape)} must have the same shape"
        )
    # Compute the logits in fp32 even under autocast: bf16 softmax over a large batch loses the signal.
    logits = clip_logits(image_features.float(), text_features.float(), logit_scale.float())  # [N, N]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
