"""SigLIP (Zhai et al., 2023): CLIP's two towers trained with a sigmoid loss, as big_vision built it
and transformers' `SiglipModel` holds it.

What differs from CLIP (model/clip.py):
- image tower: the patch convolution has a bias; there is no class token and no pre-LayerNorm; after
  the final LayerNorm a multi-head attention pooling ("MAP") head, a learned probe querying every
  token, pools the tokens, and nothing projects the result: the pooled vector is the embedding;
- text tower: attention is bidirectional (no causal mask) and the features are read at the LAST
  position, whatever token it holds. SigLIP was trained on prompts padded to the full context (64
  for B/16), so a prompt gives its trained features only when padded to ``context_length``;
- a learned logit bias b beside the temperature t: a pair scores sigmoid(exp(t) cos + b), and training
  starts from t = log 10, b = -10 (the paper's initialisation);
- the MLP width is free (SigLIP So400m: 4304 for width 1152), LayerNorm eps is 1e-6 and the
  activation is the tanh approximation of GELU.

Parameter names follow clip.py where a part is the same (transformer.resblocks.N.attn, ln_1, mlp.c_fc,
...), so both models read alike; model/siglip_weights.py maps transformers' names onto them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from model.clip import LayerNorm, QuickGELU, SelfAttention

FAMILY = "siglip"  # to_dict()'s tag, which tells a SigLIP checkpoint config from a CLIP one
SiglipActivation = Literal["gelu_pytorch_tanh", "gelu", "quick_gelu"]  # transformers' hidden_act names
ACTIVATIONS: tuple[str, ...] = get_args(SiglipActivation)


@dataclass(frozen=True)
class SiglipVisionConfig:
    kind: ClassVar[str] = "vit"  # what export and quantization ask of an image tower
    image_size: int = 224
    patch_size: int = 16
    width: int = 768  # transformers: hidden_size
    intermediate_size: int = 3072  # the MLP width
    layers: int = 12  # num_hidden_layers
    heads: int = 12  # num_attention_heads
    layer_norm_eps: float = 1e-6
    use_head: bool = True  # the MAP head; without it the tokens are averaged (big_vision's "gap")

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"vision width {self.width} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class SiglipTextConfig:
    context_length: int = 64  # transformers: max_position_embeddings, the length prompts are padded to
    vocab_size: int = 32000
    width: int = 768
    intermediate_size: int = 3072
    layers: int = 12
    heads: int = 12
    layer_norm_eps: float = 1e-6
    projection_size: int = 768  # the text head's output; equals width in SigLIP 1, not in every SigLIP 2

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class SiglipConfig:
    vision: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)
    text: SiglipTextConfig = field(default_factory=SiglipTextConfig)
    activation: SiglipActivation = "gelu_pytorch_tanh"  # both towers use the same one

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {self.activation!r}; expected one of {ACTIVATIONS}")
        if self.text.projection_size != self.vision.width:
            raise ValueError(
                f"the towers' embeddings differ in size: image {self.vision.width} (vision width), "
                f"text {self.text.projection_size} (projection_size)"
            )

    @property
    def embed_dim(self) -> int:
        """The size of both embeddings: the image tower has no projection, so its width."""
        return self.vision.width

    def to_dict(self) -> dict[str, Any]:
        return {"family": FAMILY, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiglipConfig:
        if d.get("family") != FAMILY:
            raise ValueError(f"not a SigLIP config: family is {d.get('family')!r}, expected {FAMILY!r}")
        try:
            vision, text = SiglipVisionConfig(**d["vision"]), SiglipTextConfig(**d["text"])
        except TypeError as e:  # an unknown or missing field
            raise ValueError(f"invalid SigLIP config: {e}") from None
        return cls(vision=vision, text=text, activation=d.get("activation", "gelu_pytorch_tanh"))


# SigLIP-B/16 at 224 px (google/siglip-base-patch16-224): the defaults of transformers' SiglipConfig.
SIGLIP_B16 = SiglipConfig(
    vision=SiglipVisionConfig(image_size=224, patch_size=16, width=768, intermediate_size=3072),
    text=SiglipTextConfig(context_length=64, vocab_size=32000, width=768, projection_size=768),
)


def tiny_siglip_config(
    image_size: int = 32, width: int = 64, layers: int = 2, vocab_size: int = 1000, context_length: int = 16
) -> SiglipConfig:
    """A SigLIP small enough for tests: patch 8, two heads, MLP width 2 x width (not 4x, as So400m's
    isn't), separate sizes that a mixed-up reshape would trip on."""
    return SiglipConfig(
        vision=SiglipVisionConfig(image_size, 8, width, 2 * width, layers, heads=2),
        text=SiglipTextConfig(
            context_length, vocab_size, width, 2 * width, layers, heads=2, projection_size=width
        ),
    )


def make_activation(name: str) -> nn.Module:
    if name == "gelu_pytorch_tanh":
        return nn.GELU(approximate="tanh")
    if name == "gelu":
        return nn.GELU()
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unsupported activation {name!r}; expected one of {ACTIVATIONS}")


def _mlp(width: int, hidden: int, activation: str) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("c_fc", nn.Linear(width, hidden)),
                ("gelu", make_activation(activation)),
                ("c_proj", nn.Linear(hidden, width)),
            ]
        )
    )


class EncoderBlock(nn.Module):
    """A pre-LayerNorm Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_width: int, activation: str, eps: float) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = _mlp(width, mlp_width, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # bidirectional in both towers: no mask
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(
        self, width: int, layers: int, heads: int, mlp_width: int, activation: str, eps: float
    ) -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            [EncoderBlock(width, heads, mlp_width, activation, eps) for _ in range(layers)]
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class ProbeAttention(nn.Module):
    """Multi-head attention of a few queries over the tokens, with nn.MultiheadAttention's parameters
    (in_proj_* holds q, k, v stacked; out_proj) and its maths, written out so it exports to plain ops."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, query: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # [B, N, D]
        nq, h, dh = query.shape[1], self.heads, d // self.heads
        q = F.linear(query, self.in_proj_weight[:d], self.in_proj_bias[:d])  # [1 or B, Q, D]
        q = q.view(-1, nq, h, dh).transpose(1, 2)  # [1 or B, H, Q, Dh]
        kv = F.linear(x, self.in_proj_weight[d:], self.in_proj_bias[d:])  # [B, N, 2D]
        kv = kv.view(b, n, 2, h, dh).permute(2, 0, 3, 1, 4)  # [2, B, H, N, Dh]
        attn = ((q * dh**-0.5) @ kv[0].transpose(-2, -1)).softmax(dim=-1)  # [B, H, Q, N]
        out = (attn @ kv[1]).transpose(1, 2).reshape(b, nq, d)  # [B, Q, D]
        return self.out_proj(out)


class AttentionPoolingHead(nn.Module):
    """big_vision's MAP head (transformers' SiglipMultiheadAttentionPoolingHead): a learned probe
    attends over the tokens, then a residual MLP on its LayerNorm; the probe's output is the embedding."""

    def __init__(self, width: int, heads: int, mlp_width: int, activation: str, eps: float) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, width))  # [1, 1, D]
        self.attn = ProbeAttention(width, heads)
        self.ln = LayerNorm(width, eps=eps)
        self.mlp = _mlp(width, mlp_width, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.attn(self.probe.to(x.dtype), x)  # [B, 1, D]; the probe broadcasts over B
        pooled = pooled + self.mlp(self.ln(pooled))  # the residual starts after the attention
        return pooled[:, 0]  # [B, D]


class SiglipVisionTower(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig, activation: str) -> None:
        super().__init__()
        width, grid = cfg.width, cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size)  # with bias
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid, width))  # no class token
        self.transformer = Encoder(
            width, cfg.layers, cfg.heads, cfg.intermediate_size, activation, cfg.layer_norm_eps
        )
        self.ln_post = LayerNorm(width, eps=cfg.layer_norm_eps)
        self.head: AttentionPoolingHead | None = None
        if cfg.use_head:
            self.head = AttentionPoolingHead(
                width, cfg.heads, cfg.intermediate_size, activation, cfg.layer_norm_eps
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # [B, D, g, g]
        x = x.flatten(2).transpose(1, 2) + self.positional_embedding.to(x.dtype)  # [B, g*g, D]
        x = self.ln_post(self.transformer(x))  # [B, g*g, D]
        return self.head(x) if self.head is not None else x.mean(dim=1)  # [B, D]


def _lecun_normal_(w: torch.Tensor) -> None:
    """Normal with variance 1/fan_in (big_vision's Dense default, untruncated here)."""
    nn.init.normal_(w, std=w[0].numel() ** -0.5)  # fan_in: input features x receptive field


def _init_block(block: EncoderBlock) -> None:
    # transformers' _init_weights for Siglip: Xavier-uniform q, k, v (each its own square matrix),
    # out and MLP weights; zero attention biases; MLP biases at 1e-6 as big_vision's
    for w in block.attn.in_proj_weight.detach().chunk(3):
        nn.init.xavier_uniform_(w)
    nn.init.zeros_(block.attn.in_proj_bias)
    nn.init.xavier_uniform_(block.attn.out_proj.weight)
    nn.init.zeros_(block.attn.out_proj.bias)
    _init_mlp(block.mlp)


def _init_mlp(mlp: nn.Sequential) -> None:
    for lin in (mlp.c_fc, mlp.c_proj):
        assert isinstance(lin, nn.Linear)
        nn.init.xavier_uniform_(lin.weight)
        nn.init.normal_(lin.bias, std=1e-6)


class SigLIP(nn.Module):
    """The outer interface of model/clip.py's CLIP: encode_image, encode_text, logit_scale and a
    logit_bias that is always there; forward gives what the sigmoid loss (model/loss.py) takes."""

    def __init__(self, cfg: SiglipConfig) -> None:
        super().__init__()
        self.config = cfg
        t = cfg.text
        self.visual = SiglipVisionTower(cfg.vision, cfg.activation)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.transformer = Encoder(
            t.width, t.layers, t.heads, t.intermediate_size, cfg.activation, t.layer_norm_eps
        )
        self.ln_final = LayerNorm(t.width, eps=t.layer_norm_eps)
        self.text_head = nn.Linear(t.width, t.projection_size)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # t; the scale is exp(t)
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))  # b
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """As transformers' SiglipPreTrainedModel initialises (big_vision's choices), except t and b,
        which start where the paper starts them (transformers zeroes both)."""
        v = self.visual
        _lecun_normal_(v.conv1.weight)
        nn.init.zeros_(v.conv1.bias)  # type: ignore[arg-type]
        nn.init.normal_(v.positional_embedding, std=self.config.vision.width**-0.5)
        nn.init.normal_(self.token_embedding.weight, std=self.config.text.width**-0.5)
        nn.init.normal_(self.positional_embedding, std=self.config.text.width**-0.5)
        for block in [*v.transformer.resblocks, *self.transformer.resblocks]:
            assert isinstance(block, EncoderBlock)
            _init_block(block)
        if v.head is not None:
            nn.init.xavier_uniform_(v.head.probe)
            nn.init.xavier_uniform_(v.head.attn.in_proj_weight)
            nn.init.zeros_(v.head.attn.in_proj_bias)
            _lecun_normal_(v.head.attn.out_proj.weight)
            nn.init.zeros_(v.head.attn.out_proj.bias)
            _init_mlp(v.head.mlp)
        _lecun_normal_(self.text_head.weight)
        nn.init.zeros_(self.text_head.bias)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.transformer.grad_checkpointing = enabled
        self.visual.transformer.grad_checkpointing = enabled

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalized pixels -> [B, E] image features (not normalized)."""
        return self.visual(pixel_values)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids, L <= context_length -> [B, E]. Read at the last position: prompts give
        their trained features padded (with the tokenizer's pad id) to exactly context_length."""
        seq_len = input_ids.shape[1]
        if seq_len > self.config.text.context_length:
            raise ValueError(f"{seq_len} tokens exceed the context length {self.config.text.context_length}")
        x = self.token_embedding(input_ids) + self.positional_embedding[:seq_len]  # [B, L, D]
        x = self.ln_final(self.transformer(x))  # [B, L, D]
        return self.text_head(x[:, -1])  # [B, E]

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalized image and text features, the logit scale exp(t) and the logit bias."""
        image = F.normalize(self.encode_image(pixel_values), dim=-1)
        text = F.normalize(self.encode_text(input_ids), dim=-1)
        return image, text, self.logit_scale.exp(), self.logit_bias  # no cap on the scale, as in the paper


def build_siglip(cfg: SiglipConfig | None = None) -> SigLIP:
    return SigLIP(cfg or SIGLIP_B16)
