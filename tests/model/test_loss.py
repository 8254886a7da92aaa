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


# --- SigLIP's sigmoid loss and label-aware (UniCL) positives, against the papers' formulas written
# out element by element


def _features(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(n, 16, generator=g, dtype=torch.float64), dim=-1),
        F.normalize(torch.randn(n, 16, generator=g, dtype=torch.float64), dim=-1),
    )


def _sigmoid_by_hand(x: torch.Tensor, y: torch.Tensor, t: float, b: float, pos: torch.Tensor) -> float:
    """SigLIP, Algorithm 1 / eq. 1: -1/|B| sum_i sum_j log(1 / (1 + exp(z_ij (-t x_i . y_j - b))))."""
    n, total = len(x), 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if pos[i, j] else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(z * (-t * float(x[i] @ y[j]) - b))))
    return total / n


def test_sigmoid_loss_matches_the_papers_formula() -> None:
    from model.loss import SIGLIP_INIT_BIAS, SIGLIP_INIT_SCALE, sigmoid_loss

    x, y = _features(6, 0)
    t, b = math.exp(SIGLIP_INIT_SCALE), SIGLIP_INIT_BIAS
    got = sigmoid_loss(x, y, torch.tensor(t), torch.tensor(b))
    assert math.isclose(
        float(got), _sigmoid_by_hand(x, y, t, b, torch.eye(6, dtype=torch.bool)), rel_tol=1e-5
    )
    # at the paper's initialisation (t = 10, b = -10) the many negatives cost almost nothing from the
    # first step (each about exp(-10)): the bias is what keeps them from swamping the few positives
    no_positives = torch.zeros(6, 6, dtype=torch.bool)
    assert float(sigmoid_loss(x, y, torch.tensor(t), torch.tensor(b), no_positives)) < 0.05
    assert float(sigmoid_loss(x, y, torch.tensor(t), torch.tensor(0.0), no_positives)) > 1.0


def test_sigmoid_loss_with_label_aware_positives_matches_the_formula() -> None:
    from model.loss import same_class, sigmoid_loss

    x, y = _features(6, 1)
    classes = torch.tensor([0, 1, 0, 2, 1, 0])
    pos = same_class(classes)
    assert pos.diagonal().all() and pos[0, 2] and pos[2, 5] and not pos[0, 1]
    got = sigmoid_loss(x, y, torch.tensor(7.0), torch.tensor(-3.0), pos)
    assert math.isclose(float(got), _sigmoid_by_hand(x, y, 7.0, -3.0, pos), rel_tol=1e-5)
    assert not math.isclose(float(got), float(sigmoid_loss(x, y, torch.tensor(7.0), torch.tensor(-3.0))))


def test_multi_positive_softmax_matches_unicl() -> None:
    """UniCL's bidirectional loss: each image's target spread evenly over its positive captions."""
    from model.loss import contrastive_loss, same_class

    x, y = _features(5, 2)
    pos = same_class(torch.tensor([3, 3, 1, 4, 1]))
    s = 20.0
    logits = s * x @ y.T
    expected = 0.0
    for i in range(5):  # image -> text
        ps = [j for j in range(5) if pos[i, j]]
        expected += -sum(float(torch.log_softmax(logits[i], 0)[j]) for j in ps) / len(ps) / 5 / 2
    for j in range(5):  # text -> image
        ps = [i for i in range(5) if pos[i, j]]
        expected += -sum(float(torch.log_softmax(logits[:, j], 0)[i]) for i in ps) / len(ps) / 5 / 2
    assert math.isclose(float(contrastive_loss(x, y, torch.tensor(s), pos)), expected, rel_tol=1e-5)
    # with the identity as positives it is the paper's loss
    eye = torch.eye(5, dtype=torch.bool)
    assert torch.allclose(
        contrastive_loss(x, y, torch.tensor(s), eye), contrastive_loss(x, y, torch.tensor(s))
    )


def test_sigmoid_gradients_reach_the_temperature_and_the_bias() -> None:
    from model.loss import sigmoid_loss

    x, y = _features(4, 3)
    t = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    sigmoid_loss(x, y, t.exp(), b).backward()
    assert t.grad is not None and b.grad is not None and t.grad.abs() > 0 and b.grad.abs() > 0


# The two label-aware objectives against their papers' formulas, one pair (i, j) at a time, in plain
# Python floats: UniCL's (Yang et al., CVPR 2022, eq. 2-3), L = L_i2t + L_t2i with
#   L_i2t = -1/|B| sum_i 1/|P(i)| sum_{k in P(i)} log(exp(s x_i . y_k) / sum_j exp(s x_i . y_j)),
# P(i) the captions of image i's class, and L_t2i the same with images and captions swapped (averaged
# over both directions here, as the paper's CLIP loss is, so the identity gives that loss); and
# SigLIP's with z_ij = +1 for every pair of one class. The losses compute in float32: 1e-6 apart.
CLASS_PATTERNS = {
    "distinct": [0, 1, 2, 3, 4, 5],  # no repeats: both are their papers' own losses
    "repeated": [2, 0, 2, 1, 0, 2],
    "one class": [7, 7, 7, 7, 7, 7],  # every pair a positive
}


def _unicl_by_hand(x: torch.Tensor, y: torch.Tensor, s: float, classes: list[int]) -> float:
    n = len(classes)
    sim = [[s * float(x[i] @ y[j]) for j in range(n)] for i in range(n)]
    image_to_text = text_to_image = 0.0
    for i in range(n):
        positives = [k for k in range(n) if classes[k] == classes[i]]
        rows = sum(math.exp(sim[i][j]) for j in range(n))  # image i against every caption
        cols = sum(math.exp(sim[j][i]) for j in range(n))  # caption i against every image
        image_to_text -= sum(math.log(math.exp(sim[i][k]) / rows) for k in positives) / len(positives)
        text_to_image -= sum(math.log(math.exp(sim[k][i]) / cols) for k in positives) / len(positives)
    return (image_to_text + text_to_image) / n / 2


@pytest.mark.parametrize("pattern", sorted(CLASS_PATTERNS))
def test_label_aware_softmax_matches_unicl_by_hand(pattern: str) -> None:
    from model.loss import same_class

    classes = CLASS_PATTERNS[pattern]
    x, y = _features(6, 4)
    pos = same_class(torch.tensor(classes))
    got = float(contrastive_loss(x, y, torch.tensor(12.0), pos))
    assert math.isclose(got, _unicl_by_hand(x, y, 12.0, classes), rel_tol=1e-6)
    plain = float(contrastive_loss(x, y, torch.tensor(12.0)))
    assert math.isclose(got, plain, rel_tol=1e-6) == (pattern == "distinct")


@pytest.mark.parametrize("pattern", sorted(CLASS_PATTERNS))
def test_label_aware_sigmoid_matches_siglip_by_hand(pattern: str) -> None:
    from model.loss import same_class, sigmoid_loss

    classes = torch.tensor(CLASS_PATTERNS[pattern])
    x, y = _features(6, 5)
    pos = same_class(classes)
    got = float(sigmoid_loss(x, y, torch.tensor(9.0), torch.tensor(-4.0), pos))
    assert math.isclose(got, _sigmoid_by_hand(x, y, 9.0, -4.0, pos), rel_tol=1e-6)
    plain = float(sigmoid_loss(x, y, torch.tensor(9.0), torch.tensor(-4.0)))
    assert math.isclose(got, plain, rel_tol=1e-6) == (pattern == "distinct")
