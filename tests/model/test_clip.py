"""The model against OpenAI's own reference code, presets, and dynamic-length text."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.clip import PRESETS, build_model, count_parameters, get_preset
from tests.conftest import openai_reference

SOT, EOT = 49406, 49407


def _ids(lengths: list[int], pad_to: int = 77, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, n - 1] = SOT, EOT
        ids[i, 1 : n - 1] = torch.randint(1, 49000, (n - 2,), generator=g)
    return ids


@pytest.mark.parametrize(
    ("preset", "args"),
    [
        ("ViT-B-32", (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)),
        ("RN50", (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12)),
    ],
)
def test_openai_state_dict_loads_strictly_and_matches(preset: str, args: tuple) -> None:
    """OpenAI's model.py, randomly initialised: its state_dict loads into ours with strict names and
    both give the same features (the image towers of both families, and the text tower)."""
    ref_mod = openai_reference("model")
    torch.manual_seed(0)
    ref = ref_mod.CLIP(*args).eval()
    ours = build_model(preset).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    ids = _ids([3, 12, 77])
    with torch.no_grad():
        assert torch.allclose(ref.encode_image(x), ours.encode_image(x), atol=1e-4, rtol=0)
        assert torch.allclose(ref.encode_text(ids), ours.encode_text(ids), atol=1e-4, rtol=0)
        assert torch.allclose(ref.logit_scale, ours.logit_scale)


def test_vit_b32_parameter_counts_match_the_paper() -> None:
    m = build_model("ViT-B-32")
    assert round(count_parameters(m.visual) / 1e6, 2) == 87.85
    assert round((count_parameters(m) - count_parameters(m.visual)) / 1e6, 1) == 63.4


@pytest.mark.parametrize("preset", ["tiny", "ViT-B-32"])
def test_dynamic_padding_equals_context_padding(preset: str) -> None:
    m = build_model(preset).eval()
    lengths = [4, 7, 9, 15]
    full = _ids(lengths, 77)
    with torch.no_grad():
        ref = m.encode_text(full)
        short = m.encode_text(full[:, : max(lengths)])
        single = torch.cat([m.encode_text(full[i : i + 1, :n]) for i, n in enumerate(lengths)])
    assert (ref - short).abs().max() <= 1e-5
    assert (ref - single).abs().max() <= 1e-5


def test_text_is_pooled_at_end_of_text_token() -> None:
    m = build_model("tiny").eval()
    ids = _ids([6])
    changed = ids.clone()
    changed[0, 3] = 400  # a token before EOT changes the features ...
    after = ids.clone()
    after[0, 6:] = 500  # ... tokens after EOT do not (causal attention)
    with torch.no_grad():
        base = m.encode_text(ids)
        assert (m.encode_text(changed) - base).abs().max() > 1e-4
        assert (m.encode_text(after) - base).abs().max() <= 1e-6


def test_activation_is_chosen_by_config() -> None:
    cfg = PRESETS["tiny"]
    torch.manual_seed(0)
    a = build_model(replace(cfg, activation="quick_gelu")).eval()
    b = build_model(replace(cfg, activation="gelu")).eval()
    b.load_state_dict(a.state_dict())
    ids = _ids([8])
    with torch.no_grad():
        assert (a.encode_text(ids) - b.encode_text(ids)).abs().max() > 1e-4


def test_forward_returns_normalized_features_and_clamped_scale() -> None:
    m = build_model("tiny")
    with torch.no_grad():
        m.logit_scale.fill_(10.0)  # exp(10) > 100
        img, txt, scale, bias = m(torch.randn(3, 3, 64, 64), _ids([5, 6, 7], pad_to=7))
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(scale) == pytest.approx(100.0)
    assert bias is None and "logit_bias" not in m.state_dict()  # CLIP's checkpoints stay as they were


def test_a_sigmoid_model_has_siglips_temperature_and_bias() -> None:
    from dataclasses import replace

    from model.clip import CLIPConfig, get_preset

    cfg = replace(get_preset("tiny"), logit_bias=True)
    m = build_model(cfg)
    with torch.no_grad():
        *_, scale, bias = m(torch.randn(2, 3, 64, 64), _ids([5, 6], pad_to=7))
    assert float(scale) == pytest.approx(10.0) and bias is not None and float(bias) == -10.0
    assert CLIPConfig.from_dict(cfg.to_dict()).logit_bias  # kept in checkpoints and manifests
    assert not CLIPConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "logit_bias"}).logit_bias


def test_initial_temperature_is_the_papers() -> None:
    assert float(build_model("tiny").logit_scale.detach().exp()) == pytest.approx(1 / 0.07, rel=1e-5)


def test_unknown_preset_and_bad_configs_raise_clearly() -> None:
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")
    vit = PRESETS["ViT-B-32"]
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        build_model(replace(vit, vision=replace(vit.vision, image_size=100)))
    rn = PRESETS["RN50"]
    with pytest.raises(ValueError, match="divisible by 32"):
        build_model(replace(rn, vision=replace(rn.vision, image_size=100)))


def test_config_round_trips_through_dict() -> None:
    from model.clip import CLIPConfig

    for cfg in PRESETS.values():
        assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
