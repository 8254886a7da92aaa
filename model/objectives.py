"""The paper's predictive objectives, beside the contrastive one (Radford et al., 2021, section 2.3,
Figure 2): what CLIP was compared against before it chose to contrast.

- ``caption-lm``: a VirTex-like image-conditioned language model. The image tower's features,
  projected to the text width, are one token put before the caption (a prefix, not cross-attention);
  a causal transformer predicts each caption token from the image and the tokens before it.
  Zero-shot: a prompt's score is its log-likelihood, the sum over its tokens, end-of-text included.
- ``bow-predictive``: a linear head from the image features to a softmax over the caption
  vocabulary, trained against the caption's normalised word counts (Joulin et al., 2016). Zero-shot:
  a prompt's score is the log-likelihood of its words, sum_w count(w) log p(w | image).

Both predict words from a **caption vocabulary** (the tokenizer ids found in the training captions,
model/objective_eval.py `caption_vocabulary`), so their softmax is over tens or hundreds of words
instead of 49,408 BPE pieces; head index 0 is every id outside it. They have no text encoder, so they
are scored by model/objective_eval.py and never export to a serving bundle. ``bow-contrastive`` is
the contrastive CLIP with a bag-of-words text tower (model/clip.py, TextConfig kind "bag").
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from model.clip import (
    CLIPConfig,
    LayerNorm,
    TextConfig,
    Transformer,
    VisionConfig,
    caption_mask,
    image_tower,
    init_image_tower,
    init_transformer,
)

Objective = Literal["contrastive", "bow-contrastive", "bow-predictive", "caption-lm"]
OBJECTIVES: tuple[str, ...] = ("contrastive", "bow-contrastive", "bow-predictive", "caption-lm")
PREDICTIVE: tuple[str, ...] = ("bow-predictive", "caption-lm")  # trained by predicting words, not contrasting
EXPORTABLE: tuple[str, ...] = ("contrastive", "bow-contrastive")  # those with a text encoder to serve


@dataclass(frozen=True)
class PredictiveConfig:
    """A predictive model: the preset's image tower (and, for caption-lm, its text width, heads and
    layers), the tokenizer's start and end ids and the caption vocabulary."""

    objective: str
    clip: CLIPConfig
    vocab: tuple[int, ...]  # tokenizer ids of the caption vocabulary, sorted; start and end included
    sot_id: int
    eot_id: int

    def __post_init__(self) -> None:
        if self.objective not in PREDICTIVE:
            raise ValueError(f"objective {self.objective!r} is not predictive ({', '.join(PREDICTIVE)})")
        if self.sot_id not in self.vocab or self.eot_id not in self.vocab:
            raise ValueError("the caption vocabulary must hold the start and end-of-text ids")

    @property
    def vision(self) -> VisionConfig:
        return self.clip.vision

    @property
    def text(self) -> TextConfig:
        return self.clip.text

    @property
    def embed_dim(self) -> int:
        return self.clip.embed_dim

    @property
    def words(self) -> int:
        """The head's size: the vocabulary and index 0, every id outside it."""
        return len(self.vocab) + 1

    def to_dict(self) -> dict[str, Any]:
        return self.clip.to_dict() | {
            "objective": self.objective,
            "vocab": list(self.vocab),
            "sot_id": self.sot_id,
            "eot_id": self.eot_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PredictiveConfig:
        clip = CLIPConfig.from_dict(d)
        return cls(
            str(d["objective"]), clip, tuple(int(i) for i in d["vocab"]), int(d["sot_id"]), int(d["eot_id"])
        )


def word_counts(words: torch.Tensor, keep: torch.Tensor, size: int) -> torch.Tensor:
    """[B, L] head indices and [B, L] bool -> [B, size] counts of the kept ones (a bag of words)."""
    counts = torch.zeros(words.shape[0], size, device=words.device)
    return counts.scatter_add_(1, words, keep.to(counts.dtype))


class _Predictive(nn.Module):
    """What both predictive models share: the image tower and the id -> head index lookup."""

    def __init__(self, cfg: PredictiveConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual = image_tower(cfg.clip)
        init_image_tower(self.visual)
        lookup = torch.zeros(cfg.clip.text.vocab_size, dtype=torch.int64)  # 0: outside the vocabulary
        lookup[torch.tensor(cfg.vocab)] = torch.arange(1, cfg.words)
        self.register_buffer("lookup", lookup, persistent=False)  # derived from the config

    def words(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Tokenizer ids -> head indices."""
        return self.lookup[input_ids]  # type: ignore[index]

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalized pixels -> [B, E] image features."""
        return self.visual(pixel_values)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        pass  # nothing deep enough here to be worth recomputing


class BowPredictive(_Predictive):
    """Image features -> a softmax over the caption vocabulary (Joulin et al., 2016)."""

    def __init__(self, cfg: PredictiveConfig) -> None:
        super().__init__(cfg)
        self.head = nn.Linear(cfg.clip.embed_dim, cfg.words)

    def word_log_probs(self, image_features: torch.Tensor) -> torch.Tensor:
        """[N, E] -> [N, V] log p(word | image)."""
        return F.log_softmax(self.head(image_features).float(), dim=-1)

    def bags(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids -> [B, V] counts of the caption's own words (no specials, no padding)."""
        keep = caption_mask(input_ids, self.config.eot_id)
        return word_counts(self.words(input_ids), keep, self.config.words)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The loss: cross-entropy of the word softmax against the caption's normalised counts."""
        log_p = self.word_log_probs(self.encode_image(pixel_values))  # [B, V]
        counts = self.bags(input_ids)
        targets = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)  # an empty caption: no loss
        return -(targets * log_p).sum(dim=1).mean()

    def log_likelihood(self, image_features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """[N, E] images x [P, L] prompts -> [N, P]: sum over each prompt's words of log p(w | image)."""
        return self.word_log_probs(image_features) @ self.bags(input_ids).T


class CaptionLM(_Predictive):
    """A prefix language model: [image token, start, w1, ..., wn] -> next-token predictions."""

    def __init__(self, cfg: PredictiveConfig) -> None:
        super().__init__(cfg)
        t = cfg.clip.text
        self.prefix = nn.Linear(cfg.clip.embed_dim, t.width)  # the image as the first token
        self.token_embedding = nn.Embedding(cfg.words, t.width)  # tied: also the output layer
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length + 1, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads, cfg.clip.activation)
        self.ln_final = LayerNorm(t.width)
        n = t.context_length + 1
        self.register_buffer("attn_mask", torch.full((n, n), float("-inf")).triu_(1), persistent=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        init_transformer(self.transformer)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.transformer.grad_checkpointing = enabled

    def token_log_probs(self, image_features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, E] and [B, L] ids -> [B, L - 1]: log p(ids[:, j + 1] | image, ids[:, :j + 1])."""
        words = self.words(input_ids)  # [B, L]
        seq = input_ids.shape[1] + 1
        x = torch.cat(
            [self.prefix(image_features)[:, None], self.token_embedding(words)], dim=1
        )  # [B, L+1, W]
        x = x + self.positional_embedding[:seq]
        x = self.ln_final(self.transformer(x, self.attn_mask[:seq, :seq]))  # type: ignore[index]
        # the output at ids[:, j] (sequence position j + 1) predicts ids[:, j + 1]
        logits = x[:, 1:-1].float() @ self.token_embedding.weight.float().T  # [B, L-1, V]
        return F.log_softmax(logits, dim=-1).gather(-1, words[:, 1:, None]).squeeze(-1)

    def targets(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L - 1] bool: the predicted tokens that count, the caption's words and its end-of-text."""
        keep = caption_mask(input_ids, self.config.eot_id)
        keep |= torch.arange(input_ids.shape[1], device=input_ids.device) == keep.sum(1, keepdim=True) + 1
        return keep[:, 1:]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The loss: next-token cross-entropy, averaged over the predicted tokens of the batch."""
        log_p = self.token_log_probs(self.encode_image(pixel_values), input_ids)
        keep = self.targets(input_ids).to(log_p.dtype)
        return -(log_p * keep).sum() / keep.sum().clamp(min=1)

    def log_likelihood(
        self, image_features: torch.Tensor, input_ids: torch.Tensor, pairs_per_call: int = 8192
    ) -> torch.Tensor:
        """[N, E] images x [P, L] prompts -> [N, P]: each prompt's summed token log-likelihood given
        each image (every pair is its own forward: the image token changes every position)."""
        n, p = len(image_features), len(input_ids)
        keep = self.targets(input_ids).to(torch.float32)  # [P, L-1]
        rows = max(1, pairs_per_call // max(1, p))
        out = []
        for i in range(0, n, rows):
            feats = image_features[i : i + rows]
            pairs = feats.repeat_interleave(p, dim=0)  # [r*P, E]
            log_p = self.token_log_probs(pairs, input_ids.repeat(len(feats), 1))  # [r*P, L-1]
            out.append((log_p.view(len(feats), p, -1) * keep).sum(-1))
        return torch.cat(out) if out else torch.zeros(0, p)


Predictive = BowPredictive | CaptionLM


def build_predictive(cfg: PredictiveConfig) -> Predictive:
    return BowPredictive(cfg) if cfg.objective == "bow-predictive" else CaptionLM(cfg)


def predictive_step(
    model: nn.Module, micro: list[tuple[torch.Tensor, torch.Tensor]], distributed: bool, autocast: Any
) -> float:
    """Forward and backward of one global batch of a predictive model; returns its loss.

    Each row's loss depends on that row alone, so no features are gathered: every micro-batch's mean
    loss is scaled by 1/k and DDP averages over ranks, which together are the global batch's mean."""
    k, total = len(micro), 0.0
    for j, (pix, ids) in enumerate(micro):
        last = j == k - 1
        sync = nullcontext() if last or not distributed else model.no_sync()  # type: ignore[operator]
        with sync:
            with autocast:
                loss = model(pix, ids)
            (loss / k).backward()
        total += float(loss.detach()) / k
    return total
