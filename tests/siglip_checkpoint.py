"""A Hugging Face SigLIP folder as `save_pretrained` writes one (config.json, model.safetensors,
spiece.model, tokenizer_config.json, preprocessor_config.json), made here because no checkpoint can
be downloaded: transformers' SiglipModel randomly initialised with every parameter perturbed (so that
biases, LayerNorms, the MAP head's probe, logit_scale and logit_bias all matter), and a SentencePiece
Unigram vocabulary trained on varied text with SigLIP's special pieces (<pad> 0, </s> 1, <unk> 2).
Shared by the import parity test (SigLIP-B/16 size) and the served-SigLIP tests (tiny)."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest

from model.bundle.prompts import fill, get_templates
from model.data.synthetic import all_classes, class_name

VOCAB = 1000
_TEXT = (
    "dog cat astronaut suit coffee cup rocket launch pad golden retriever tabby car book logo photo "
    "picture of a the with in on and red green blue yellow circle square triangle star heart cross "
    "small large bright dark drawing painting sculpture toy origami plastic close-up cropped blurry "
    "résumé café naïve tokyo tower pizza spaces one two three zero four five six seven eight nine"
)
_WORDS = _TEXT.split()


def _lines(rng: random.Random) -> list[str]:
    prompts = [p for c in all_classes() for p in fill(get_templates("imagenet80"), class_name(*c))]
    syllables = [a + b for a in "bcdfgklmnprstvz" for b in ("a", "e", "i", "o", "u", "ou")]
    made_up = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(2000)]
    pool = _WORDS + made_up
    random_lines = [" ".join(rng.choices(pool, k=rng.randint(1, 12))) for _ in range(6000)]
    return prompts + random_lines


def train_spiece(path: Path) -> Path:
    """A 1,000-piece Unigram SentencePiece model with SigLIP's special pieces, written to `path`."""
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_lines(random.Random(11))),
        model_writer=model,
        vocab_size=VOCAB,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=0.995,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def siglip_folder(folder: Path, *, tiny: bool, seed: int = 0) -> tuple[Any, Path]:
    """(the perturbed transformers SiglipModel, the folder it was saved to). `tiny`: 32 px, width 64,
    2 layers, 24 tokens; else SigLIP-B/16-224 in every respect but the vocabulary (1,000 pieces)."""
    transformers = pytest.importorskip("transformers")
    import torch

    if tiny:
        common = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        }
        vision = {**common, "image_size": 32, "patch_size": 8}
        text = {**common, "max_position_embeddings": 24}
    else:
        vision, text = {}, {}  # transformers' defaults are SigLIP-B/16-224
    # SigLIP's special ids (transformers' defaults are CLIP's 49406/49407, outside this vocabulary)
    text |= {"vocab_size": VOCAB, "pad_token_id": 1, "bos_token_id": 1, "eos_token_id": 1}
    cfg = transformers.SiglipConfig(vision_config=vision, text_config=text)
    torch.manual_seed(seed)
    hf = transformers.SiglipModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        hf.logit_scale.fill_(2.5)  # exp(2.5) ~ 12; a bias near where trained SigLIPs end (about -10..-17)
        hf.logit_bias.fill_(-4.0)
    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(folder)
    spiece = train_spiece(folder / "spiece.model")
    length = cfg.text_config.max_position_embeddings
    transformers.SiglipTokenizer(str(spiece), model_max_length=length).save_pretrained(folder)
    size = cfg.vision_config.image_size
    transformers.SiglipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(folder)
    return hf, folder


def import_siglip(folder: Path, out: Path, version: str) -> Path:
    """`zeroshot import hf FOLDER --out OUT --version VERSION`, as a user runs it; returns OUT."""
    from model.cli import main

    ckpt = out.parent / f".{out.name}-{version}.pt"
    argv = [
        "import",
        "hf",
        str(folder),
        "--out",
        str(out),
        "--version",
        version,
        "--checkpoint-out",
        str(ckpt),
    ]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def siglip_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding `siglip`: a tiny random SigLIP imported from its transformers folder,
    version v1 published (CURRENT); a second checkpoint's folder is kept beside it for reload tests."""
    tmp = tmp_path_factory.mktemp("siglip-served")
    _, folder = siglip_folder(tmp / "hf-v1", tiny=True, seed=0)
    siglip_folder(tmp / "hf-v2", tiny=True, seed=1)
    import_siglip(folder, tmp / "models" / "siglip", "v1")
    return tmp / "models"
