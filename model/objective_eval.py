"""Zero-shot scoring of every objective, on a model in torch: the one function `zeroshot eval
--checkpoint` and the trainer's eval call (`scorer_for`), whatever the objective.

A contrastive model (``contrastive``, ``bow-contrastive``) is scored as its bundle will be: cosine to
the prompt-ensembled label embeddings (model/torch_encoders.py). A predictive one (``caption-lm``,
``bow-predictive``, model/objectives.py) has no text embedding: each class is scored by the
log-likelihood of its prompts given the image, averaged over the templates (the mean of
log-likelihoods, i.e. the geometric mean of the templates' likelihoods: the ensembling that suits a
log-probability). Both sit behind the encoders interface model/evaluate.py takes, so the images,
prompts and metrics are the same for all four.

Also here: the caption vocabulary a predictive model predicts, read from its training captions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from model.bundle.preprocess import PreprocessConfig
from model.bundle.prompts import fill
from model.bundle.tokenizer import ClipTokenizer
from model.checkpoint_inputs import ModelInputs
from model.objectives import Predictive
from model.torch_encoders import IMAGE_BATCH, TorchEncoders

if TYPE_CHECKING:
    from model.checkpoints import Trainable
    from model.train_config import TrainConfig

log = logging.getLogger(__name__)

VOCAB_CAPTIONS = 4096  # training captions read for the vocabulary, spread evenly over the source


class CaptionScorer:
    """A predictive model behind the evaluation's encoders interface: `encode_images` gives its image
    features (not normalized: the heads read them as they are), `class_scores` the prompts'
    log-likelihoods."""

    provider = "torch"
    image_precision = "fp32"

    def __init__(self, model: Predictive, tokenizer: ClipTokenizer, preprocess: PreprocessConfig) -> None:
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess
        self.embed_dim = model.config.embed_dim
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, 3, S, S] float32 -> [B, E] float32 image features."""
        out = []
        for i in range(0, len(pixel_values), IMAGE_BATCH):
            x = torch.from_numpy(np.ascontiguousarray(pixel_values[i : i + IMAGE_BATCH], np.float32))
            out.append(self.model.encode_image(x.to(self.device)).float().cpu())
        return torch.cat(out).numpy()

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None
    ) -> np.ndarray:
        """A predictive model has no text embedding: evaluation calls class_scores instead."""
        raise TypeError(f"a {self.model.config.objective} model embeds no text; it scores captions")

    @torch.no_grad()
    def class_scores(
        self, image_features: np.ndarray, classes: Sequence[str], templates: Sequence[str]
    ) -> np.ndarray:
        """[N, E] features -> [N, C]: each class's prompts' log-likelihood, averaged over templates."""
        prompts = [p for c in classes for p in fill(templates, c)]  # class-major: [C * T]
        ids = torch.from_numpy(self.tokenizer.encode_batch(prompts)).to(self.device)
        feats = torch.from_numpy(np.ascontiguousarray(image_features, np.float32)).to(self.device)
        scores = []
        for i in tqdm(range(0, len(feats), IMAGE_BATCH), desc="score captions", unit="batch", leave=False):
            scores.append(self.model.log_likelihood(feats[i : i + IMAGE_BATCH], ids).float().cpu())
        ll = torch.cat(scores) if scores else torch.zeros(0, len(prompts))
        return ll.view(len(feats), len(classes), len(templates)).mean(-1).numpy()


def scorer_for(model: Trainable, inputs: ModelInputs) -> TorchEncoders | CaptionScorer:
    """What model/evaluate.py scores a model with, for any objective."""
    if isinstance(model, Predictive):
        assert isinstance(inputs.tokenizer, ClipTokenizer)  # predictive models train on CLIP's BPE only
        return CaptionScorer(model, inputs.tokenizer, inputs.preprocess)
    return TorchEncoders(model, inputs.tokenizer, inputs.preprocess)


def checkpoint_scorer(path: str | Path) -> TorchEncoders | CaptionScorer:
    """The scorer of a training checkpoint (file or run folder), in eval mode on the CPU."""
    from model.checkpoints import inputs_of, load_checkpoint, model_from_checkpoint, resolve_init

    ckpt = load_checkpoint(resolve_init(path))
    model = model_from_checkpoint(ckpt)
    return scorer_for(model, inputs_of(ckpt, model))


def caption_vocabulary(cfg: TrainConfig, inputs: ModelInputs, n: int = VOCAB_CAPTIONS) -> tuple[int, ...]:
    """The tokenizer ids of up to `n` training captions, spread evenly over the source, with the
    start and end-of-text ids; sorted. A word the scan misses maps to the head's index 0."""
    from torch.utils.data import IterableDataset

    from model.checkpoints import TrainError
    from model.train_data import training_source

    tokenizer = inputs.tokenizer
    assert isinstance(tokenizer, ClipTokenizer)
    src = training_source(cfg, inputs)
    if isinstance(src, IterableDataset):
        raise TrainError(
            f"objective {cfg.objective} reads its caption vocabulary from the training data, which "
            f"{cfg.data} data (streamed) cannot give up front: use synthetic, csv or folder data"
        )
    picks = np.unique(np.linspace(0, len(src) - 1, min(n, len(src))).astype(np.int64))
    captions = [src[int(i)][1] for i in tqdm(picks, desc="caption vocabulary", unit="caption", leave=False)]
    ids: set[int] = {tokenizer.sot_id, tokenizer.eot_id}
    for row in tokenizer.encode_batch(captions):
        end = int(np.argmax(row == tokenizer.eot_id))
        ids.update(int(i) for i in row[1:end])
    log.info("caption vocabulary: %d words from %d captions", len(ids), len(captions))
    return tuple(sorted(ids))


def fresh_predictive(cfg: TrainConfig) -> tuple[Any, ModelInputs]:
    """A new predictive model for `cfg` (its preset's image tower and text sizes), and its inputs."""
    from model.checkpoints import model_config
    from model.objectives import PredictiveConfig, build_predictive

    mcfg = model_config(cfg)
    inputs = ModelInputs.clip(mcfg.vision.image_size, mcfg.text.context_length)
    tokenizer = inputs.tokenizer
    assert isinstance(tokenizer, ClipTokenizer)
    vocab = caption_vocabulary(cfg, inputs)
    pcfg = PredictiveConfig(cfg.objective, mcfg, vocab, tokenizer.sot_id, tokenizer.eot_id)
    return build_predictive(pcfg), inputs
