"""Conversion of other libraries' CLIP weights into our (OpenAI-named) model.

Our parameter names are OpenAI's, so OpenAI state_dicts load as they are. Hugging Face
`transformers` names the same tensors differently and splits the attention input projection into
q/k/v; this module maps them across. The architecture is read from the tensors' shapes; only the
head counts and the activation, which weights cannot tell, come from the HF config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from model.clip import CLIP, CLIPConfig, TextConfig, VisionConfig

_HF_BLOCK = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_LAYER_RE = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")


class WeightsError(ValueError):
    """Weights that do not form a CLIP model we can build; the message says what is missing."""


def _hf_activation(hf_config: Mapping[str, Any]) -> str:
    act = str(hf_config.get("text_config", {}).get("hidden_act", "quick_gelu"))
    if act not in ("quick_gelu", "gelu"):
        raise WeightsError(f"unsupported activation {act!r}; expected quick_gelu or gelu")
    return act


def _eot_id(text_config: Mapping[str, Any], vocab_size: int) -> int:
    # Old HF configs say eos_token_id=2 and pool at argmax(input_ids), i.e. at the largest id, which
    # for CLIP's vocabulary is <|endoftext|> = vocab_size - 1.
    eos = int(text_config.get("eos_token_id", 2))
    return vocab_size - 1 if eos == 2 else eos


def config_from_hf(sd: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any]) -> CLIPConfig:
    """Read the architecture from the tensors; heads and activation from the HF config."""
    try:
        tok = sd["text_model.embeddings.token_embedding.weight"]
        pos = sd["text_model.embeddings.position_embedding.weight"]
        patch = sd["vision_model.embeddings.patch_embedding.weight"]
        vpos = sd["vision_model.embeddings.position_embedding.weight"]
        proj = sd["visual_projection.weight"]
    except KeyError as e:
        raise WeightsError(
            f"not a Hugging Face CLIP vision+text state_dict: {e.args[0]} is missing"
        ) from None
    layers = {"text_model": 0, "vision_model": 0}
    for k in sd:
        if m := _LAYER_RE.match(k):
            layers[m[1]] = max(layers[m[1]], int(m[2]) + 1)
    grid = round((vpos.shape[0] - 1) ** 0.5)
    tcfg, vcfg = hf_config.get("text_config", {}), hf_config.get("vision_config", {})
    return CLIPConfig(
        embed_dim=proj.shape[0],
        vision=VisionConfig(
            kind="vit",
            image_size=grid * patch.shape[-1],
            width=patch.shape[0],
            layers=layers["vision_model"],
            patch_size=patch.shape[-1],
            heads=int(vcfg.get("num_attention_heads", patch.shape[0] // 64)),
        ),
        text=TextConfig(
            context_length=pos.shape[0],
            vocab_size=tok.shape[0],
            width=tok.shape[1],
            heads=int(tcfg.get("num_attention_heads", tok.shape[1] // 64)),
            layers=layers["text_model"],
            eot_id=_eot_id(tcfg, tok.shape[0]),
        ),
        activation=_hf_activation(hf_config),  # type: ignore[arg-type]
    )


def hf_to_openai(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers CLIPModel state_dict to OpenAI's names (q/k/v fused into in_proj)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in _HF_TOP:
            out[_HF_TOP[k]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()  # HF Linear [E, D] -> OpenAI matrix [D, E]
        elif k == "visual_projection.weight":
            out["visual.proj"] = v.T.contiguous()
        elif m := _LAYER_RE.match(k):
            prefix = ("transformer" if m[1] == "text_model" else "visual.transformer") + f".resblocks.{m[2]}."
            rest = m[3]
            if (qm := re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest)) is not None:
                qkv.setdefault(prefix + "attn.in_proj_" + qm[2], {})[qm[1]] = v
                continue
            for src, dst in _HF_BLOCK.items():
                if rest.startswith(src + "."):
                    out[prefix + dst + rest[len(src) :]] = v
                    break
            else:
                raise WeightsError(f"unexpected tensor {k}")
        elif k.endswith("position_ids"):
            continue  # a buffer of 0..L-1, not a weight
        else:
            raise WeightsError(f"unexpected tensor {k}")
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsError(f"{name}: q/k/v projections incomplete ({sorted(parts)})")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def model_from_hf(sd: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any]) -> CLIP:
    cfg = config_from_hf(sd, hf_config)
    model = CLIP(cfg)
    missing, unexpected = model.load_state_dict(hf_to_openai(sd), strict=False)
    if missing or unexpected:
        raise WeightsError(f"weights do not fit {cfg}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
