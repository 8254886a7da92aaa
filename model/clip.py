"""CLIP (Radford et al., 2021) in one readable file.

Parameter names follow OpenAI's released state_dict, so a published checkpoint loads with
``load_state_dict``. Two image towers, as in the paper: a Vision Transformer and the modified
ResNet with attention pooling. The text tower is a causal Transformer pooled at the end-of-text token.

Differences from openai/CLIP that do not change the maths:
- the transformers run batch-first ([B, L, D]) instead of [L, B, D]; weights are identical;
- attention is written out (matmul, softmax, matmul) rather than ``nn.MultiheadAttention``: it
  exports to plain ONNX ops, and PyTorch's fused attention backward was slow on the CPUs we train on;
- the text causal mask is sliced to the actual sequence length, so prompts padded only to the
  longest in the batch give the same features as prompts padded to the context length.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["quick_gelu", "gelu"]


@dataclass(frozen=True)
class VisionConfig:
    kind: Literal["vit", "resnet"] = "vit"
    image_size: int = 224
    width: int = 768  # ViT: token width; ResNet: stem width (the last stage has width * 32 channels)
    layers: int | tuple[int, ...] = 12  # ViT: blocks; ResNet: bottlenecks per stage (4 stages)
    patch_size: int = 32  # ViT only
    heads: int = 0  # 0: derived as OpenAI does (width // 64, or width * 32 // 64 for ResNet)

    def num_heads(self) -> int:
        if self.heads:
            return self.heads
        return self.width * 32 // 64 if self.kind == "resnet" else self.width // 64


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    eot_id: int = 49407  # features are pooled at the first occurrence of this token
    # transformer: the paper's causal text tower; bag: bow-contrastive's (model/objectives.py), the sum
    # of the caption's token embeddings, then the projection (no order, no attention)
    kind: Literal["transformer", "bag"] = "transformer"


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    activation: Activation = "quick_gelu"  # OpenAI's weights were trained with QuickGELU
    logit_bias: bool = False  # SigLIP: a learned bias in the logits (the sigmoid loss), t from log 10

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.vision.layers, tuple):
            d["vision"]["layers"] = list(self.vision.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        vision = dict(d["vision"])
        if isinstance(vision["layers"], list):
            vision["layers"] = tuple(vision["layers"])
        return cls(
            embed_dim=int(d["embed_dim"]),
            vision=VisionConfig(**vision),
            text=TextConfig(**d["text"]),
            activation=d.get("activation", "quick_gelu"),
            logit_bias=bool(d.get("logit_bias", False)),
        )


_OPENAI_TEXT = TextConfig(width=512, heads=8, layers=12)

# Architectures as data. OpenAI's dimensions for the published models; `tiny` was chosen by
# measurement on a 2-core CPU (README, "Default model"): a modified ResNet (5.3M parameters, stem
# width 32) with a 1-layer text tower. Stem width 16 (1.4M) swung from 82% to 99% held-out top-1
# across seeds; a 3-layer text tower gave ~85%. Training recipe and figures: model/train.py, README.
PRESETS: dict[str, CLIPConfig] = {
    "ViT-B-32": CLIPConfig(512, VisionConfig("vit", 224, 768, 12, 32), _OPENAI_TEXT),
    "ViT-B-16": CLIPConfig(512, VisionConfig("vit", 224, 768, 12, 16), _OPENAI_TEXT),
    "ViT-L-14": CLIPConfig(768, VisionConfig("vit", 224, 1024, 24, 14), TextConfig(width=768, heads=12)),
    "RN50": CLIPConfig(1024, VisionConfig("resnet", 224, 64, (3, 4, 6, 3)), _OPENAI_TEXT),
    # A small ViT for tests of distributed training: no batch norm, so a step on 2 ranks equals a step
    # on one (batch-norm statistics are per rank on CPU, where SyncBatchNorm does not run).
    "tiny-vit": CLIPConfig(
        128,
        VisionConfig("vit", 64, 128, 2, 16, heads=2),
        TextConfig(width=128, heads=2, layers=1),
        activation="gelu",
    ),
    "tiny": CLIPConfig(
        128,
        VisionConfig("resnet", 64, 32, (1, 1, 1, 1), heads=4),
        TextConfig(width=128, heads=4, layers=1),
        activation="gelu",
    ),
    # Sizes around `tiny` for the scaling bench (bench/scaling.py), the same family at 64 px.
    # nano: tiny at stem width 16 (the size above that swung across seeds), ~0.3x tiny's FLOPs
    "nano": CLIPConfig(
        128,
        VisionConfig("resnet", 64, 16, (1, 1, 1, 1), heads=4),
        TextConfig(width=128, heads=4, layers=1),
        activation="gelu",
    ),
    # small: stem 48, embed and text width 192; ~2.2x tiny's FLOPs, ~2x its step time on 2 cores
    "small": CLIPConfig(
        192,
        VisionConfig("resnet", 64, 48, (1, 1, 1, 1), heads=4),
        TextConfig(width=192, heads=4, layers=1),
        activation="gelu",
    ),
    # medium: stem 64, two bottlenecks a stage, width 256; ~5x tiny's FLOPs, ~3x its step time
    "medium": CLIPConfig(
        256,
        VisionConfig("resnet", 64, 64, (2, 2, 2, 2), heads=4),
        TextConfig(width=256, heads=4, layers=1),
        activation="gelu",
    ),
}


def get_preset(name: str) -> CLIPConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32, as in openai/CLIP, so fp16/bf16 weights stay stable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (in_proj_*, out_proj)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape  # [B, L, D]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, L, 3D]
        qkv = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # [3, B, H, L, Dh]
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (1.0 / math.sqrt(d // self.heads))) @ k.transpose(-2, -1)  # [B, H, L, L]
        if mask is not None:
            attn = attn + mask
        out = attn.softmax(dim=-1) @ v  # [B, H, L, Dh]
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, activation: Activation) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        act: nn.Module = QuickGELU() if activation == "quick_gelu" else nn.GELU()
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", act),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, activation: Activation) -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, activation) for _ in range(layers)]
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, output_dim: int, activation: Activation) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        if not isinstance(cfg.layers, int):
            raise ValueError("a ViT image tower takes an integer number of layers")
        width, grid = cfg.width, cfg.image_size // cfg.patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.num_heads(), activation)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # [B, D, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, g*g, D]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, D]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [B, g*g+1, D]
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj  # [B, E]


class Bottleneck(nn.Module):
    """ResNet bottleneck; strided blocks downsample with an average pool (anti-aliasing), not the conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean of the feature map queries all positions (one query, QKV heads)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        x = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        h, dh = self.num_heads, c // self.num_heads
        q = self.q_proj(x[:, :1]).view(b, 1, h, dh).transpose(1, 2)  # [B, H, 1, Dh]
        k = self.k_proj(x).view(b, -1, h, dh).transpose(1, 2)  # [B, H, HW+1, Dh]
        v = self.v_proj(x).view(b, -1, h, dh).transpose(1, 2)
        attn = ((q * dh**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, H, 1, HW+1]
        out = (attn @ v).transpose(1, 2).reshape(b, c)  # [B, C]
        return self.c_proj(out)


class ModifiedResNet(nn.Module):
    """The paper's ResNet: 3-conv stem with an average pool, anti-aliased strides, attention pooling."""

    def __init__(self, cfg: VisionConfig, output_dim: int) -> None:
        super().__init__()
        if isinstance(cfg.layers, int) or len(cfg.layers) != 4:
            raise ValueError("a ResNet image tower takes four stage depths, e.g. (3, 4, 6, 3)")
        if cfg.image_size % 32:
            raise ValueError(f"a ResNet image tower needs image_size divisible by 32, got {cfg.image_size}")
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, cfg.layers[0])
        self.layer2 = self._make_layer(width * 2, cfg.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, cfg.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, cfg.layers[3], stride=2)
        self.attnpool = AttentionPool2d(cfg.image_size // 32, width * 32, cfg.num_heads(), output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))  # [B, W/2, S/2, S/2]
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))  # [B, W, S/4, S/4]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 32W, S/32, S/32]
        return self.attnpool(x)  # [B, E]


def image_tower(cfg: CLIPConfig) -> nn.Module:
    """The preset's image tower, not yet initialised (init_image_tower; shared with model/objectives.py)."""
    v = cfg.vision
    if v.kind == "vit":
        return VisionTransformer(v, cfg.embed_dim, cfg.activation)
    if v.kind == "resnet":
        return ModifiedResNet(v, cfg.embed_dim)
    raise ValueError(f"unknown image tower kind {v.kind!r}; expected 'vit' or 'resnet'")


def init_resnet(visual: nn.Module) -> None:
    """OpenAI's initialisation of the modified ResNet's attention pool and residual branches."""
    if not isinstance(visual, ModifiedResNet):
        return
    pool = visual.attnpool
    std = pool.c_proj.in_features**-0.5
    for lin in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
        nn.init.normal_(lin.weight, std=std)
    for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        for block in stage.modules():
            if isinstance(block, Bottleneck):
                nn.init.zeros_(block.bn3.weight)  # each residual branch starts as identity


def init_image_tower(visual: nn.Module) -> None:
    init_resnet(visual)
    if isinstance(visual, VisionTransformer):
        init_transformer(visual.transformer)


def init_transformer(tower: Transformer) -> None:
    """OpenAI's initialisation of a transformer: depth-scaled residual projections."""
    proj_std = (tower.width**-0.5) * ((2 * max(1, tower.layers)) ** -0.5)
    attn_std, fc_std = tower.width**-0.5, (2 * tower.width) ** -0.5
    for block in tower.resblocks:
        assert isinstance(block, ResidualAttentionBlock)
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        fc, proj = block.mlp[0], block.mlp[2]  # c_fc, c_proj
        assert isinstance(fc, nn.Linear) and isinstance(proj, nn.Linear)
        nn.init.normal_(fc.weight, std=fc_std)
        nn.init.normal_(proj.weight, std=proj_std)


def caption_mask(input_ids: torch.Tensor, eot_id: int) -> torch.Tensor:
    """[B, L] ids -> [B, L] bool, True at the caption's own tokens: after the start-of-text token
    (position 0) and before the first end-of-text token; padding and the specials are False."""
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)  # [L]
    eot = (input_ids == eot_id).int().argmax(dim=-1, keepdim=True)  # [B, 1]
    return (pos > 0) & (pos < eot)


class CLIP(nn.Module):
    positional_embedding: nn.Parameter  # absent from a bag-of-words text tower, which has no order

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.config = cfg
        t = cfg.text
        if t.kind not in ("transformer", "bag"):
            raise ValueError(f"unknown text tower kind {t.kind!r}; expected 'transformer' or 'bag'")
        self.bag = t.kind == "bag"
        self.visual = image_tower(cfg)
        self.transformer = Transformer(t.width, 0 if self.bag else t.layers, t.heads, cfg.activation)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        if not self.bag:  # DDP refuses parameters that get no gradient
            self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.ln_final = LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, cfg.embed_dim))
        # the paper's initial temperature, or SigLIP's (t = log 10) with its bias b = -10
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0 if cfg.logit_bias else 1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if cfg.logit_bias else None
        mask = torch.full((t.context_length, t.context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)  # causal: row i sees columns <= i
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI's initialisation: small normal embeddings, depth-scaled residual projections (in
        the order openai/CLIP draws them, so a seed gives the model it always gave)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        if not self.bag:
            nn.init.normal_(self.positional_embedding, std=0.01)
        init_resnet(self.visual)
        init_transformer(self.transformer)
        if isinstance(self.visual, VisionTransformer):
            init_transformer(self.visual.transformer)
        nn.init.normal_(self.text_projection, std=self.config.text.width**-0.5)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.transformer.grad_checkpointing = enabled
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enabled

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalized pixels -> [B, E] image features (not normalized)."""
        return self.visual(pixel_values)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids, L <= context_length, padded after the end-of-text token -> [B, E]."""
        if self.bag:  # bow-contrastive: the sum of the caption's token embeddings, padding left out
            keep = caption_mask(input_ids, self.config.text.eot_id)  # [B, L]
            x = (self.token_embedding(input_ids) * keep[..., None]).sum(dim=1)  # [B, D]
            return self.ln_final(x) @ self.text_projection  # [B, E]
        seq_len = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:seq_len]  # [B, L, D]
        mask = self.attn_mask[:seq_len, :seq_len]  # type: ignore[index]
        x = self.ln_final(self.transformer(x, mask))
        # Pool at the first end-of-text token. Attention is causal, so padding after it cannot
        # change its features: padding to the longest prompt equals padding to 77.
        eot = (input_ids == self.config.text.eot_id).int().argmax(dim=-1)  # [B]
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # [B, D]
        return x @ self.text_projection  # [B, E]

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Normalized image and text features, the (clamped) logit scale and the logit bias (None
        without one); the loss lives outside (model/loss.py)."""
        image = F.normalize(self.encode_image(pixel_values), dim=-1)
        text = F.normalize(self.encode_text(input_ids), dim=-1)
        return image, text, self.logit_scale.exp().clamp(max=100.0), self.logit_bias


def build_model(cfg: CLIPConfig | str) -> CLIP:
    return CLIP(get_preset(cfg) if isinstance(cfg, str) else cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def with_image_size(cfg: CLIPConfig, image_size: int) -> CLIPConfig:
    return replace(cfg, vision=replace(cfg.vision, image_size=image_size))
