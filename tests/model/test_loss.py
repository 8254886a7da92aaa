from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.loss import contrastive_loss


def test_matches_the_papers_pseudocode() -> None:
    torch.manual_seed(0)
    i = F.normalize(torch.randn(8, 16), dim=-1)
    t = F.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(1 / 0.07)
    logits = scale * i @ t.T
    labels = torch.arange(8)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(contrastive_loss(i, t, scale), expected)


def test_is_symmetric_and_small_for_aligned_pairs() -> None:
    torch.manual_seed(1)
    i = F.normalize(torch.randn(16, 32), dim=-1)
    t = F.normalize(torch.randn(16, 32), dim=-1)
    s = torch.tensor(50.0)
    assert torch.allclose(contrastive_loss(i, t, s), contrastive_loss(t, i, s))
    assert contrastive_loss(i, i, s) < 0.05 < math.log(16) * 0.5 < contrastive_loss(i, t, s)


def test_gradient_reaches_the_temperature() -> None:
    i = F.normalize(torch.randn(4, 8), dim=-1)
    t = F.normalize(torch.randn(4, 8), dim=-1)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    contrastive_loss(i, t, log_scale.exp()).backward()
    assert log_scale.grad is not None and log_scale.grad.abs() > 0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(torch.zeros(4, 8), torch.zeros(3, 8), torch.tensor(1.0))
