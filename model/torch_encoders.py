"""A CLIP nn.Module behind the core's `Encoders` interface, so that training-time evaluation runs the
very zero-shot path `zeroshot eval` runs on the exported bundle (model/evaluate.py): the same images,
prompts, prompt ensembling and metrics; only the forward pass is torch instead of onnxruntime."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model.bundle.hf_tokenizer import FixedLengthTokenizer
from model.bundle.preprocess import PreprocessConfig
from model.bundle.tokenizer import ClipTokenizer
from model.clip import CLIP
from model.siglip import SigLIP

IMAGE_BATCH = 128


class TorchEncoders:
    """Encode with a model as it trains: eval mode, no gradient, fp32, on the model's device."""

    provider = "torch"
    image_precision = "fp32"

    def __init__(
        self,
        model: CLIP | SigLIP,
        tokenizer: ClipTokenizer | FixedLengthTokenizer,
        preprocess: PreprocessConfig | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.preprocess = preprocess or PreprocessConfig(image_size=model.config.vision.image_size)
        self.embed_dim = model.config.embed_dim
        self.device = model.logit_scale.device

    @torch.no_grad()
    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, 3, S, S] float32 -> [B, E] L2-normalized float32."""
        out = []
        for i in range(0, len(pixel_values), IMAGE_BATCH):
            x = torch.from_numpy(np.ascontiguousarray(pixel_values[i : i + IMAGE_BATCH], np.float32))
            out.append(F.normalize(self.model.encode_image(x.to(self.device)).float(), dim=-1).cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None
    ) -> np.ndarray:
        """Texts -> [N, E] L2-normalized float32, each batch padded to its longest text (or pad_to)."""
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for i in range(0, len(texts), batch_size):
            ids = torch.from_numpy(self.tokenizer.encode_batch(texts[i : i + batch_size], pad_to=pad_to))
            feats = self.model.encode_text(ids.to(self.device)).float()
            out.append(F.normalize(feats, dim=-1).cpu().numpy())
        return np.concatenate(out)
