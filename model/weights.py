"""Conversion of other libraries' CLIP weights into our (OpenAI-named) model.

Our parameter names are OpenAI's, so OpenAI and open_clip state_dicts load as they are once the
architecture is known; it is read from the tensors' shapes, as OpenAI's `build_model` does. Hugging
Face `transformers` names the same tensors differently and splits the attention input projection into
q/k/v; this module maps them across. Head counts and the activation cannot be read from weights: for
OpenAI names they follow OpenAI's rule (64 channels per head), for HF they come from its config.
Reading the files themselves is model/importer.py's job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from model.clip import CLIP, Activation, CLIPConfig, TextConfig, VisionConfig

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
    return load_into(CLIP(config_from_hf(sd, hf_config)), hf_to_openai(sd))


# Entries of OpenAI's TorchScript archives (and of older open_clip state_dicts) that are not weights.
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_RESBLOCK_RE = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.")
_STAGE_RE = re.compile(r"^visual\.layer([1-4])\.(\d+)\.")


def clean_openai(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Drop the non-weight entries and cast to fp32 (OpenAI's archives hold fp16 weights)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.split(".")[-1] in _NOT_WEIGHTS:
            continue
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"entry {k} is a {type(v).__name__}, not a tensor")
        out[k] = v.float() if v.is_floating_point() else v
    return out


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise WeightsError(f"not an OpenAI-style CLIP state_dict: tensor {key} is missing")
    return tuple(sd[key].shape)


def _grid(rows: int, what: str) -> int:
    grid = round((rows - 1) ** 0.5)
    if grid * grid + 1 != rows:
        raise WeightsError(f"{what} has {rows} rows, not a square grid + 1 (class or mean token)")
    return grid


def _vision_from_openai(sd: Mapping[str, torch.Tensor], vision_head_width: int) -> VisionConfig:
    if "visual.proj" in sd:  # a Vision Transformer
        width, _, patch, _ = _shape(sd, "visual.conv1.weight")
        blocks = {int(m[2]) for k in sd if (m := _RESBLOCK_RE.match(k)) and m[1]}
        grid = _grid(_shape(sd, "visual.positional_embedding")[0], "visual.positional_embedding")
        if not blocks:
            raise WeightsError("ViT image tower without blocks: no visual.transformer.resblocks.* tensors")
        # heads=0 means OpenAI's rule (64 channels per head); other head widths are stored explicitly
        heads = 0 if vision_head_width == 64 else width // vision_head_width
        return VisionConfig("vit", grid * patch, width, len(blocks), patch, heads)
    if "visual.attnpool.positional_embedding" in sd:  # the modified ResNet
        stages = [0, 0, 0, 0]
        for k in sd:
            if m := _STAGE_RE.match(k):
                stages[int(m[1]) - 1] = max(stages[int(m[1]) - 1], int(m[2]) + 1)
        width = _shape(sd, "visual.layer1.0.conv1.weight")[0]
        grid = _grid(
            _shape(sd, "visual.attnpool.positional_embedding")[0], "visual.attnpool.positional_embedding"
        )
        if 0 in stages:
            raise WeightsError(f"ResNet image tower with an empty stage: blocks per stage {stages}")
        return VisionConfig("resnet", grid * 32, width, tuple(stages))
    visual = sorted(k for k in sd if k.startswith("visual."))[:3]
    raise WeightsError(
        "unsupported image tower: neither a ViT (visual.proj) nor OpenAI's modified ResNet "
        f"(visual.attnpool.*); its first tensors are {visual or 'absent'}"
    )


def config_from_openai(
    sd: Mapping[str, torch.Tensor], activation: Activation = "quick_gelu", vision_head_width: int = 64
) -> CLIPConfig:
    """The architecture of OpenAI-named weights, as OpenAI's `build_model` infers it.

    Heads are width // 64 in both towers (ResNet: width * 32 // 64), which holds for every OpenAI
    release; ``vision_head_width`` covers open_clip models that chose another head width.
    """
    vocab, width = _shape(sd, "token_embedding.weight")  # OpenAI reads the width off ln_final: equal
    blocks = {int(m[2]) for k in sd if (m := _RESBLOCK_RE.match(k)) and not m[1]}
    if not blocks:
        raise WeightsError("not an OpenAI-style CLIP state_dict: no transformer.resblocks.* tensors")
    text = TextConfig(
        context_length=_shape(sd, "positional_embedding")[0],
        vocab_size=vocab,
        width=width,
        heads=width // 64,
        layers=len(blocks),
        eot_id=vocab - 1,  # OpenAI pools at argmax(ids): the largest id, <|endoftext|>
    )
    embed_dim = _shape(sd, "text_projection")[1]
    return CLIPConfig(embed_dim, _vision_from_openai(sd, vision_head_width), text, activation)


def model_from_openai(
    sd: Mapping[str, Any], activation: Activation = "quick_gelu", vision_head_width: int = 64
) -> CLIP:
    """Build our CLIP from an OpenAI- or open_clip-named state_dict."""
    weights = clean_openai(sd)
    return load_into(CLIP(config_from_openai(weights, activation, vision_head_width)), weights)


def load_into(model: CLIP, sd: Mapping[str, torch.Tensor]) -> CLIP:
    """Load every weight, or say precisely what is missing, extra or of the wrong shape."""
    own = model.state_dict()
    arch = describe(model.config)
    # BatchNorm's batch counter is unused in eval and absent from some exports
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise WeightsError(
            f"unsupported architecture: tensors that {arch} does not have: "
            f"{', '.join(unexpected[:3])} ({len(unexpected)} in all)"
        )
    if missing:
        raise WeightsError(f"missing tensors for {arch}: {', '.join(missing[:3])} ({len(missing)} in all)")
    bad = [
        (k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if k in sd and sd[k].shape != v.shape
    ]
    if bad:
        k, got, want = bad[0]
        raise WeightsError(
            f"shapes do not fit {arch}: {k} is {list(got)}, expected {list(want)} ({len(bad)} in all)"
        )
    model.load_state_dict(sd, strict=False)
    return model.eval()


def describe(cfg: CLIPConfig) -> str:
    """One line for logs and messages, e.g. 'ViT-B/32 at 224 px, text 512x12, embed 512'."""
    v, t = cfg.vision, cfg.text
    if isinstance(v.layers, int):  # a ViT
        size = {(768, 12): "B", (1024, 24): "L", (1280, 32): "H"}.get((v.width, v.layers))
        tower = f"ViT-{size or f'{v.width}x{v.layers}'}/{v.patch_size}"
    else:
        tower = f"ResNet {'-'.join(map(str, v.layers))} (width {v.width})"
    return f"{tower} at {v.image_size} px, text {t.width}x{t.layers}, embed {cfg.embed_dim}"
