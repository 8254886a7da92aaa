"""transformers' `SiglipModel` (a folder's config.json and state_dict) -> our SigLIP (model/siglip.py).

The architecture comes from config.json, with transformers' defaults for the keys it leaves out (a
`save_pretrained` folder writes them all; hand-written configs often do not). The tensors must then
fit it exactly: every one used, every parameter filled, every shape right, or WeightsError names the
first offenders by their transformers names. The encoder layers are named as in transformers' CLIP,
so model/weights.py's block table applies; q, k and v are stacked into one in_proj as in our CLIP.

Refused, with the reason: SigLIP 2's NaFlex models (`Siglip2Model`), and towers without the
attention-pooling head (vision_use_head: false), which transformers gives no image embedding for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from model.siglip import ACTIVATIONS, SigLIP, SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from model.weights import _HF_BLOCK, WeightsError

_DEFAULT_ACT = "gelu_pytorch_tanh"  # transformers' SiglipVisionConfig / SiglipTextConfig default
# (transformers prefix, ours) for the tensors outside the encoder layers; ours are model/siglip.py's
_PREFIXES = (
    ("vision_model.embeddings.patch_embedding.", "visual.conv1."),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.post_layernorm.", "visual.ln_post."),
    ("vision_model.head.probe", "visual.head.probe"),
    ("vision_model.head.attention.", "visual.head.attn."),
    ("vision_model.head.layernorm.", "visual.head.ln."),
    ("vision_model.head.mlp.fc1.", "visual.head.mlp.c_fc."),
    ("vision_model.head.mlp.fc2.", "visual.head.mlp.c_proj."),
    ("text_model.embeddings.token_embedding.", "token_embedding."),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.", "ln_final."),
    ("text_model.head.", "text_head."),
    ("logit_scale", "logit_scale"),
    ("logit_bias", "logit_bias"),
)
_OUR_BLOCK_RE = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_QKV_RE = re.compile(r"^attn\.in_proj_(weight|bias)$")
_NAFLEX = (
    "SigLIP 2 NaFlex checkpoints (model_type 'siglip2', Siglip2Model) are not supported: they encode "
    "an image at its own aspect ratio as a variable number of patches, with the position embeddings "
    "resized per image and a patch attention mask, which a bundle's fixed [B, 3, S, S] image encoder "
    "cannot express. Fixed-resolution SigLIP 2 checkpoints saved as SiglipModel (model_type 'siglip', "
    "e.g. google/siglip2-base-patch16-224) import fine."
)


def is_siglip_config(hf_config: Mapping[str, Any]) -> bool:
    """Whether config.json describes a transformers SiglipModel (both towers). Raises WeightsError for
    the SigLIP relatives it cannot import, so that no caller mistakes them for something else."""
    model_type = str(hf_config.get("model_type", ""))
    architectures = [str(a) for a in hf_config.get("architectures") or []]
    if model_type.startswith("siglip2") or any(a.startswith("Siglip2") for a in architectures):
        raise WeightsError(_NAFLEX)
    if model_type in ("siglip_vision_model", "siglip_text_model"):
        raise WeightsError(
            f"model_type {model_type!r} is one SigLIP tower alone; zero-shot classification needs both "
            "(a SiglipModel folder, model_type 'siglip')"
        )
    return model_type == "siglip" or "SiglipModel" in architectures


def _square(value: Any, what: str) -> int:
    """transformers accepts an int or an [h, w] pair; our encoders take square images."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise WeightsError(
                f"vision_config.{what} {list(value)} is not square; only square sizes are supported"
            )
        value = value[0]
    return int(value)


def _activation(vision: Mapping[str, Any], text: Mapping[str, Any]) -> str:
    acts = {str(vision.get("hidden_act", _DEFAULT_ACT)), str(text.get("hidden_act", _DEFAULT_ACT))}
    if len(acts) > 1:
        raise WeightsError(f"the towers use different activations {sorted(acts)}; our SigLIP takes one")
    act = acts.pop()
    if act not in ACTIVATIONS:
        raise WeightsError(f"unsupported activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    return act


def siglip_config_from_hf(hf_config: Mapping[str, Any]) -> SiglipConfig:
    """Our config from config.json's vision_config and text_config (transformers' defaults if absent)."""
    if not is_siglip_config(hf_config):
        raise WeightsError(
            f"not a SiglipModel config: model_type {hf_config.get('model_type')!r}, "
            f"architectures {hf_config.get('architectures')!r}"
        )
    v, t = hf_config.get("vision_config") or {}, hf_config.get("text_config") or {}
    if not v.get("vision_use_head", True):
        raise WeightsError(
            "vision_use_head is false: the image tower has no attention-pooling head, and transformers' "
            "SiglipModel then gives no image embedding (pooler_output is None); such towers (PaliGemma's) "
            "were cut from a contrastive model and no pooling of theirs matches the text tower"
        )
    if int(v.get("num_channels", 3)) != 3:
        raise WeightsError(f"vision_config.num_channels is {v['num_channels']}; only RGB (3) is supported")
    width, text_width = int(v.get("hidden_size", 768)), int(t.get("hidden_size", 768))
    try:
        return SiglipConfig(
            vision=SiglipVisionConfig(
                image_size=_square(v.get("image_size", 224), "image_size"),
                patch_size=_square(v.get("patch_size", 16), "patch_size"),
                width=width,
                intermediate_size=int(v.get("intermediate_size", 3072)),
                layers=int(v.get("num_hidden_layers", 12)),
                heads=int(v.get("num_attention_heads", 12)),
                layer_norm_eps=float(v.get("layer_norm_eps", 1e-6)),
            ),
            text=SiglipTextConfig(
                context_length=int(t.get("max_position_embeddings", 64)),
                vocab_size=int(t.get("vocab_size", 32000)),
                width=text_width,
                intermediate_size=int(t.get("intermediate_size", 3072)),
                layers=int(t.get("num_hidden_layers", 12)),
                heads=int(t.get("num_attention_heads", 12)),
                layer_norm_eps=float(t.get("layer_norm_eps", 1e-6)),
                projection_size=int(t.get("projection_size") or text_width),  # None means hidden_size
            ),
            activation=_activation(v, t),  # type: ignore[arg-type]
        )
    except ValueError as e:  # the dataclasses refuse impossible shapes
        raise WeightsError(f"config.json describes a SigLIP that cannot be built: {e}") from None


def hf_names(ours: str) -> list[str]:
    """The transformers tensors one of our parameters is made of (q, k, v for a stacked in_proj)."""
    if m := _OUR_BLOCK_RE.match(ours):
        layer = f"{'vision_model' if m[1] else 'text_model'}.encoder.layers.{m[2]}."
        if qkv := _QKV_RE.match(m[3]):
            return [f"{layer}self_attn.{p}_proj.{qkv[1]}" for p in "qkv"]
        for theirs, mine in _HF_BLOCK.items():
            if m[3].startswith(mine + "."):
                return [layer + theirs + m[3][len(mine) :]]
    for theirs, mine in _PREFIXES:
        if ours.startswith(mine):
            return [theirs + ours[len(mine) :]]
    raise KeyError(f"no transformers name for {ours}")  # a parameter this table forgot: a bug here


def _part_shape(own: torch.Tensor, parts: int) -> tuple[int, ...]:
    return (own.shape[0] // parts, *own.shape[1:]) if parts > 1 else tuple(own.shape)


def _fits(got: torch.Tensor, want: tuple[int, ...]) -> bool:
    # transformers keeps logit_scale and logit_bias as [1]; ours are scalars, as CLIP's
    return tuple(got.shape) == want or (want == () and tuple(got.shape) == (1,))


def _check(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], arch: str) -> None:
    """Every tensor used, every parameter filled, every shape right; else name the first three."""
    expected = {n: _part_shape(t, len(hf_names(k))) for k, t in own.items() for n in hf_names(k)}
    # position_ids: a buffer of 0..L-1 that older transformers saved; not a weight
    unexpected = [k for k in sd if k not in expected and not k.endswith("position_ids")]
    missing = [k for k in expected if k not in sd]
    bad = [
        f"{k} is {list(sd[k].shape)}, expected {list(w)}"
        for k, w in expected.items()
        if k in sd and not _fits(sd[k], w)
    ]
    for what, found in (
        (f"tensors that {arch} does not have", unexpected),
        (f"missing tensors for {arch}", missing),
        (f"shapes do not fit {arch}", bad),
    ):
        if found:
            raise WeightsError(f"{what}: {', '.join(found[:3])} ({len(found)} in all)")


def describe_siglip(cfg: SiglipConfig) -> str:
    """One line for logs and messages, e.g. 'SigLIP ViT-B/16 at 224 px, text 768x12, embed 768'."""
    v, t = cfg.vision, cfg.text
    size = {(768, 12): "B", (1024, 24): "L", (1152, 27): "So400m"}.get((v.width, v.layers))
    tower = f"ViT-{size or f'{v.width}x{v.layers}'}/{v.patch_size}"
    return f"SigLIP {tower} at {v.image_size} px, text {t.width}x{t.layers}, embed {cfg.embed_dim}"


def siglip_from_hf(sd: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any]) -> SigLIP:
    """Build our SigLIP from a transformers SiglipModel state_dict and its config.json (a dict)."""
    cfg = siglip_config_from_hf(hf_config)
    with torch.device("meta"):  # no memory and no initialisation: every parameter is filled below
        model = SigLIP(cfg)
    model = model.to_empty(device="cpu")
    own = model.state_dict()
    _check(own, sd, describe_siglip(cfg))
    with torch.no_grad():  # state_dict() shares the parameters' storage: fill them in place
        for k, t in own.items():
            names = hf_names(k)  # q, k, v fill an in_proj's thirds in that order (nn.MultiheadAttention's)
            parts = t.chunk(len(names)) if len(names) > 1 else (t,)  # logit_scale is 0-d: no chunk
            for part, name in zip(parts, names, strict=True):
                part.copy_(sd[name].reshape(part.shape))  # casts fp16/bf16 files to our fp32
    return model.eval()
