"""What a checkpoint's model reads besides its weights: its tokenizer and its image preprocessing.

A CLIP trained here reads CLIP's BPE and CLIP's preprocessing at its image size, so its checkpoints
need not say so. An imported SigLIP reads its own SentencePiece vocabulary, padded to a fixed length,
and images squashed to a square with mean = std = 0.5: its checkpoint carries both (`inputs`), and a
fine-tuning run copies them into every checkpoint it writes, so export, training data and the
trainer's eval all read the model's own inputs, as the server will.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.bundle.format import BundleError
from model.bundle.hf_tokenizer import FixedLengthTokenizer
from model.bundle.preprocess import PreprocessConfig
from model.bundle.tokenizer import ClipTokenizer, open_tokenizer

Tokenizer = ClipTokenizer | FixedLengthTokenizer


class InputsError(ValueError):
    """A checkpoint whose inputs cannot be read, or a model that needs inputs its checkpoint lacks."""


@dataclass(frozen=True)
class ModelInputs:
    tokenizer: Tokenizer
    preprocess: PreprocessConfig

    @classmethod
    def clip(cls, image_size: int, context_length: int = 77) -> ModelInputs:
        """Those of a CLIP: OpenAI's BPE at its context length, CLIP's preprocessing at its image size."""
        return cls(ClipTokenizer.clip_bpe(context_length), PreprocessConfig(image_size=image_size))

    def entry(self) -> dict[str, Any]:
        """The checkpoint's `inputs`: the tokenizer file's text, its facts, and the preprocessing."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tokenizer.json"
            self.tokenizer.save(path)
            text = path.read_text()
        facts, pre = self.tokenizer.facts(), self.preprocess.to_dict()
        return {"tokenizer_json": text, "tokenizer": facts, "preprocess": pre}


def read_inputs(
    entry: Mapping[str, Any] | None, family: str, image_size: int, context_length: int
) -> ModelInputs:
    """The inputs a checkpoint's `inputs` entry describes; none: CLIP's own, which is all a CLIP
    checkpoint written before there were entries (or trained here) can mean. A SigLIP without one is
    refused: its vocabulary is not CLIP's, and guessing would train or export it on wrong tokens."""
    if entry is None:
        if family != "clip":
            raise InputsError(
                f"this {family} checkpoint does not carry its tokenizer and preprocessing (written by an "
                "older version): import the model's folder again to get one that does"
            )
        return ModelInputs.clip(image_size, context_length)
    try:
        pre = PreprocessConfig.from_dict(entry["preprocess"])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tokenizer.json"
            path.write_text(str(entry["tokenizer_json"]))
            tok = open_tokenizer(path, entry["tokenizer"], context_length)
    except (KeyError, TypeError, ValueError, BundleError) as e:
        raise InputsError(f"the checkpoint's inputs cannot be read: {type(e).__name__}: {e}") from None
    if pre.image_size != image_size:
        raise InputsError(
            f"the checkpoint's preprocessing is for {pre.image_size} px, its model reads {image_size}"
        )
    assert isinstance(tok, ClipTokenizer | FixedLengthTokenizer)
    return ModelInputs(tok, pre)
