"""SigLIP (model/siglip.py, model/siglip_weights.py) against an independent implementation:
transformers' SiglipModel, randomly initialised and then with every parameter perturbed (biases,
LayerNorms, the probe, logit_scale and logit_bias included), converted into ours. Normalized features
agree within 1e-4 at SigLIP-B/16-224 size (3 images, 24 prompts: building the two models and a text
batch cost ~0.2 s a row on 2 CPUs) and at a tiny size for each activation, on 256 prompts; the tiny model
exports to ONNX with model/export.py's exporter call; SigLIP 2 NaFlex and mismatched tensors are
refused with messages that say why."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.bundle.encoders import open_session, run_normalized
from model.export import OPSET, _ImageEncoder, _quiet_exporter, _TextEncoder
from model.siglip import (
    SIGLIP_B16,
    SigLIP,
    SiglipConfig,
    SiglipTextConfig,
    SiglipVisionConfig,
    build_siglip,
    tiny_siglip_config,
)
from model.siglip_weights import hf_names, is_siglip_config, siglip_config_from_hf, siglip_from_hf
from model.weights import WeightsError

transformers = pytest.importorskip("transformers")

TOL = 1e-4
PAD_ID = 1  # transformers' SiglipTextConfig.pad_token_id (SigLIP's tokenizer pads with </s>, id 1)


def _perturbed_hf(hf_config: Any, seed: int) -> Any:
    """A random SiglipModel whose every parameter is moved off its initial value: transformers zeroes
    biases and logit_scale/bias and sets LayerNorms to 1, where a wrong mapping would go unseen."""
    torch.manual_seed(seed)
    hf = transformers.SiglipModel(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return hf


def _token_rows(n: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Random ids, about half the rows padded with PAD_ID after a random number of tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    for i in range(0, n, 2):
        ids[i, int(torch.randint(1, length, (1,), generator=g)) :] = PAD_ID
    return ids


def _pooled(out: Any) -> torch.Tensor:
    return getattr(out, "pooler_output", out)  # transformers 5 returns an output object


def _max_diffs(hf: Any, ours: SigLIP, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        want_img = F.normalize(_pooled(hf.get_image_features(pixel_values=pixels)), dim=-1)
        want_txt = F.normalize(_pooled(hf.get_text_features(input_ids=ids)), dim=-1)
        got_img = F.normalize(ours.encode_image(pixels), dim=-1)
        got_txt = F.normalize(ours.encode_text(ids), dim=-1)
    assert got_img.shape == want_img.shape and got_txt.shape == want_txt.shape
    return float((got_img - want_img).abs().max()), float((got_txt - want_txt).abs().max())


@pytest.mark.slow
def test_siglip_b16_matches_transformers() -> None:
    start = time.perf_counter()
    hf = _perturbed_hf(transformers.SiglipConfig(), seed=0)  # transformers' defaults are B/16 at 224
    ours = siglip_from_hf(hf.state_dict(), hf.config.to_dict())
    assert ours.config == SIGLIP_B16
    pixels = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ids = _token_rows(24, 64, 32000, seed=2)
    img_diff, txt_diff = _max_diffs(hf, ours, pixels, ids)
    print(f"B/16: image {img_diff:.2e}, text {txt_diff:.2e}, {time.perf_counter() - start:.1f}s")
    assert img_diff <= TOL and txt_diff <= TOL, (img_diff, txt_diff)
    assert ours.logit_scale.item() == hf.logit_scale.item() != 0.0
    assert ours.logit_bias.item() == hf.logit_bias.item() != 0.0


def _tiny_hf_config(act: str = "gelu_pytorch_tanh", **vision: Any) -> Any:
    # text narrower than vision: the text head must project 48 -> 64, and a swapped tower shows
    return transformers.SiglipConfig(
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": act,
            **vision,
        },
        text_config={
            "vocab_size": 500,
            "hidden_size": 48,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "projection_size": 64,
            "hidden_act": act,
            "bos_token_id": 0,  # the defaults (49406, 49407) lie outside a 500-token vocabulary
            "eos_token_id": 2,
        },
    )


@pytest.mark.parametrize("act", ["gelu_pytorch_tanh", "gelu", "quick_gelu"])
def test_tiny_siglip_matches_transformers_for_each_activation(act: str) -> None:
    hf = _perturbed_hf(_tiny_hf_config(act), seed=3)
    ours = siglip_from_hf(hf.state_dict(), hf.config.to_dict())
    assert ours.config.activation == act and ours.config.text.width == 48 and ours.config.embed_dim == 64
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    img_diff, txt_diff = _max_diffs(hf, ours, pixels, _token_rows(256, 16, 500, seed=5))
    assert img_diff <= TOL and txt_diff <= TOL, (img_diff, txt_diff)


def test_text_features_depend_on_padding_and_see_the_whole_prompt() -> None:
    """Bidirectional and read at the last position: a token at the start changes the features, and
    so does padding to another length (hence prompts must be padded to the context length)."""
    torch.manual_seed(0)
    model = build_siglip(tiny_siglip_config()).eval()
    ids = _token_rows(4, 16, 1000, seed=6)
    changed = ids.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 1000
    with torch.no_grad():
        base, first, shorter = (
            model.encode_text(ids),
            model.encode_text(changed),
            model.encode_text(ids[:, :12]),
        )
    assert (base - first).abs().amax(dim=1).min() > 1e-4
    assert (base - shorter).abs().amax(dim=1).min() > 1e-4
    with pytest.raises(ValueError, match="exceed the context length 16"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))


def test_forward_gives_unit_features_and_the_papers_initial_scale_and_bias() -> None:
    torch.manual_seed(0)
    model = build_siglip(tiny_siglip_config())
    image, text, scale, bias = model(torch.randn(2, 3, 32, 32), _token_rows(3, 16, 1000, seed=7))
    assert image.shape == (2, 64) and text.shape == (3, 64)
    assert torch.allclose(image.norm(dim=-1), torch.ones(2)) and torch.allclose(
        text.norm(dim=-1), torch.ones(3)
    )
    assert scale.item() == pytest.approx(10.0) and bias.item() == -10.0


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = build_siglip(tiny_siglip_config()).train()
    pixels, ids = torch.randn(2, 3, 32, 32), _token_rows(2, 16, 1000, seed=8)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enabled)
        image, text, scale, bias = model(pixels, ids)
        (scale * image @ text.T + bias).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def _export(module: torch.nn.Module, args: tuple[torch.Tensor], path: Path, names: tuple[str, str]) -> None:
    """model/export.py's export_onnx call (dynamo, opset, batch axis dynamic), for one tower: the text
    length stays fixed at the context length, which SigLIP's pooling needs."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
            opset_version=OPSET,
        )


def test_tiny_siglip_exports_to_onnx_and_matches_torch(tmp_path: Path) -> None:
    hf = _perturbed_hf(_tiny_hf_config(), seed=9)
    model = siglip_from_hf(hf.state_dict(), hf.config.to_dict())
    _export(
        _ImageEncoder(model), (torch.zeros(2, 3, 32, 32),), tmp_path / "image.onnx", ("pixel_values", "f")
    )
    ids2 = torch.full((2, 16), PAD_ID, dtype=torch.long)
    _export(_TextEncoder(model), (ids2,), tmp_path / "text.onnx", ("input_ids", "f"))
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(10))  # batch 5 != 2: dynamic
    ids = _token_rows(64, 16, 500, seed=11)
    with torch.no_grad():
        want_img = F.normalize(model.encode_image(pixels), dim=-1).numpy()
        want_txt = F.normalize(model.encode_text(ids), dim=-1).numpy()
    got_img = run_normalized(open_session(tmp_path / "image.onnx"), {"pixel_values": pixels.numpy()})
    got_txt = run_normalized(open_session(tmp_path / "text.onnx"), {"input_ids": ids.numpy()})
    assert got_img.shape == (5, 64) and got_txt.shape == (64, 64)
    assert float(np.abs(got_img - want_img).max()) <= TOL
    assert float(np.abs(got_txt - want_txt).max()) <= TOL


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "siglip2", "architectures": ["Siglip2Model"]},
        {"architectures": ["Siglip2Model"]},
        {"model_type": "siglip2"},
    ],
)
def test_siglip2_naflex_is_refused_with_the_reason(config: dict[str, Any]) -> None:
    for call in (is_siglip_config, siglip_config_from_hf):
        with pytest.raises(WeightsError, match="NaFlex") as err:
            call(config)
        assert "saved as SiglipModel" in str(err.value) and "import fine" in str(err.value)


def test_which_configs_are_siglip() -> None:
    assert is_siglip_config({"model_type": "siglip", "architectures": ["SiglipModel"]})
    assert is_siglip_config(_tiny_hf_config().to_dict())
    assert not is_siglip_config({"model_type": "clip", "architectures": ["CLIPModel"]})
    with pytest.raises(WeightsError, match="one SigLIP tower alone"):
        is_siglip_config({"model_type": "siglip_vision_model"})
    with pytest.raises(WeightsError, match="not a SiglipModel config"):
        siglip_config_from_hf({"model_type": "clip"})


def test_config_json_defaults_are_transformers_defaults() -> None:
    assert siglip_config_from_hf({"model_type": "siglip"}) == SIGLIP_B16
    assert siglip_config_from_hf(transformers.SiglipConfig().to_dict()) == SIGLIP_B16
    square = siglip_config_from_hf({"model_type": "siglip", "vision_config": {"image_size": [384, 384]}})
    assert square.vision.image_size == 384


@pytest.mark.parametrize(
    ("vision", "text", "message"),
    [
        ({"vision_use_head": False}, {}, "no attention-pooling head"),
        ({"hidden_act": "relu"}, {"hidden_act": "relu"}, "unsupported activation 'relu'"),
        ({"hidden_act": "gelu"}, {}, "different activations"),
        ({"image_size": [224, 160]}, {}, "not square"),
        ({"hidden_size": 1152}, {}, "embeddings differ in size"),
    ],
)
def test_configs_we_cannot_build_are_refused(vision: dict, text: dict, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        siglip_config_from_hf({"model_type": "siglip", "vision_config": vision, "text_config": text})


def test_missing_unexpected_and_misshapen_tensors_are_named() -> None:
    hf = transformers.SiglipModel(_tiny_hf_config())
    sd, cfg = hf.state_dict(), hf.config.to_dict()
    missing = {k: v for k, v in sd.items() if k != "vision_model.head.probe"}
    with pytest.raises(
        WeightsError, match=r"missing tensors for SigLIP .*vision_model\.head\.probe \(1 in all\)"
    ):
        siglip_from_hf(missing, cfg)
    extra = {**sd, "vision_model.encoder.layers.2.layer_norm1.weight": torch.ones(64)}  # a third layer
    with pytest.raises(WeightsError, match=r"does not have: vision_model\.encoder\.layers\.2\.layer_norm1"):
        siglip_from_hf(extra, cfg)
    key = "text_model.encoder.layers.1.self_attn.k_proj.weight"
    with pytest.raises(WeightsError, match=rf"{key} is \[48, 40\], expected \[48, 48\]"):
        siglip_from_hf({**sd, key: torch.zeros(48, 40)}, cfg)


def test_every_parameter_has_its_transformers_tensors() -> None:
    """hf_names covers exactly SiglipModel.state_dict(): nothing left over on either side."""
    hf = transformers.SiglipModel(_tiny_hf_config())
    ours = SigLIP(siglip_config_from_hf(hf.config.to_dict()))
    names = [n for k in ours.state_dict() for n in hf_names(k)]
    assert len(names) == len(set(names))
    assert set(names) == set(hf.state_dict())


def test_a_tower_without_the_head_averages_its_tokens() -> None:
    cfg = tiny_siglip_config()
    cfg = SiglipConfig(SiglipVisionConfig(**{**cfg.to_dict()["vision"], "use_head": False}), cfg.text)
    model = build_siglip(cfg).eval()
    assert not any(k.startswith("visual.head.") for k in model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.visual.conv1(x).flatten(2).transpose(1, 2) + model.visual.positional_embedding
        want = model.visual.ln_post(model.visual.transformer(tokens)).mean(dim=1)
        assert torch.allclose(model.encode_image(x), want, atol=1e-6)


@pytest.mark.parametrize("cfg", [SIGLIP_B16, tiny_siglip_config()], ids=["B16", "tiny"])
def test_config_round_trips_through_a_dict(cfg: SiglipConfig) -> None:
    d = cfg.to_dict()
    assert d["family"] == "siglip"
    assert SiglipConfig.from_dict(d) == cfg
    assert SiglipConfig.from_dict(d) != SiglipConfig.from_dict({**d, "activation": "gelu"})
    with pytest.raises(ValueError, match="not a SigLIP config"):
        SiglipConfig.from_dict({**d, "family": None})


def test_impossible_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        SiglipVisionConfig(image_size=225)
    with pytest.raises(ValueError, match="not divisible by heads"):
        SiglipTextConfig(width=100, heads=3)
    with pytest.raises(ValueError, match="unsupported activation"):
        SiglipConfig(activation="relu")  # type: ignore[arg-type]
