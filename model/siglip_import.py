"""What a Hugging Face SigLIP folder says beside its weights: the image processor's recipe and the
tokenizer, turned into the bundle's own preprocessing and tokenizer so that the server reproduces
the checkpoint's processor with no SigLIP-specific code.

SigLIP's processor (transformers' SiglipImageProcessor) resizes straight to height x width (no crop,
aspect ratio not kept) with the PIL filter `resample`, rescales by 1/255 and normalizes with
image_mean/image_std (0.5 for every published checkpoint). Its text is padded to a fixed length,
`max_length` of the processor (64 for SigLIP-B/16), because the text tower is non-causal and pooled at
the last position: the bundle's tokenizer facts say so, and the server pads every prompt to it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model.bundle.hf_tokenizer import FixedLengthTokenizer
from model.bundle.preprocess import PreprocessConfig
from model.siglip import SiglipConfig
from model.weights import WeightsError

log = logging.getLogger(__name__)

# PIL's resampling filters by their integer value, as preprocessor_config.json stores them.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
PROCESSOR_CONFIG = "preprocessor_config.json"
TOKENIZER_JSON = "tokenizer.json"
SPIECE = "spiece.model"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path} must hold a JSON object")
    return data


def siglip_preprocess(folder: Path, image_size: int) -> PreprocessConfig:
    """The bundle's preprocessing for a SigLIP folder: its preprocessor_config.json when present, else
    SigLIP's published recipe (bicubic, mean = std = 0.5) at the model's own image size."""
    cfg = _read_json(folder / PROCESSOR_CONFIG) or {}
    refuse = [
        f"{key}={cfg[key]!r}"
        for key, ok in (("do_resize", True), ("do_rescale", True), ("do_normalize", True))
        if key in cfg and cfg[key] is not ok
    ]
    if "rescale_factor" in cfg and abs(float(cfg["rescale_factor"]) - 1 / 255) > 1e-9:
        refuse.append(f"rescale_factor={cfg['rescale_factor']!r}")
    if cfg.get("do_center_crop"):
        refuse.append("do_center_crop=true")
    size = cfg.get("size", {"height": image_size, "width": image_size})
    if not isinstance(size, Mapping) or size.get("height") != image_size or size.get("width") != image_size:
        refuse.append(f"size={size!r} (the model takes {image_size} x {image_size})")
    resample = _PIL_RESAMPLE.get(int(cfg.get("resample", 3)))
    if resample is None:
        refuse.append(f"resample={cfg.get('resample')!r}")
    if refuse:
        raise WeightsError(
            f"{folder / PROCESSOR_CONFIG}: {', '.join(refuse)} is not SigLIP's recipe "
            "(resize to the model's square size, rescale 1/255, normalize), the one this importer reproduces"
        )
    mean = tuple(float(x) for x in cfg.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(float(x) for x in cfg.get("image_std", (0.5, 0.5, 0.5)))
    return PreprocessConfig(image_size, str(resample), mean, std, resize="square")  # type: ignore[arg-type]


def siglip_tokenizer(folder: Path, context_length: int) -> FixedLengthTokenizer:
    """The checkpoint's tokenizer, padding to the text tower's length; lower-cased when its
    tokenizer_config.json says do_lower_case (SigLIP 1's SiglipTokenizer default: true)."""
    tcfg = _read_json(folder / "tokenizer_config.json") or {}
    length = int(tcfg.get("model_max_length", context_length))
    if length > 10**6:  # transformers writes a huge sentinel when no maximum was set
        length = context_length
    if length != context_length:
        raise WeightsError(
            f"tokenizer_config.json pads to {length} tokens but the text tower has {context_length} "
            "positions; SigLIP pools at the last position, so the two must agree"
        )
    path = folder / TOKENIZER_JSON
    if not path.is_file():  # the tokenizer is read into memory, so the converted file can go at once
        with tempfile.TemporaryDirectory() as tmp:
            converted = spiece_to_tokenizer_json(folder / SPIECE, Path(tmp) / TOKENIZER_JSON)
            return _load_tokenizer(converted, context_length, tcfg)
    return _load_tokenizer(path, context_length, tcfg)


def _load_tokenizer(path: Path, context_length: int, tcfg: Mapping[str, Any]) -> FixedLengthTokenizer:
    options = {
        "eos_token": _token(tcfg.get("eos_token"), "</s>"),
        "pad_token": _token(tcfg.get("pad_token"), "</s>"),
        "unk_token": _token(tcfg.get("unk_token"), "<unk>"),
        "lowercase": bool(tcfg.get("do_lower_case", True)),
    }
    try:
        return FixedLengthTokenizer.from_file(path, context_length, **options)
    except (ValueError, OSError) as e:  # tokenizers raises a bare Exception on an unreadable file
        raise WeightsError(f"{path}: {e}") from None
    except Exception as e:
        raise WeightsError(f"{path} is not a tokenizer.json `tokenizers` can read: {e}") from None


def spiece_to_tokenizer_json(spiece: Path, out: Path) -> Path:
    """SigLIP 1's spiece.model as a tokenizer.json, converted as transformers 5 builds a tokenizer from
    a SentencePiece file (SpmConverter.build_tokenizer_from_spm_proto: its Unigram pieces and scores,
    precompiled normalizer, Metaspace pre-tokenizer), with the specials </s> and <unk> and a
    post-processor appending </s>. tests/model/test_hf_tokenizer.py holds its ids equal to
    SiglipTokenizer's over the same spiece.model on >= 1,000 strings."""
    if not spiece.is_file():
        raise WeightsError(
            f"{spiece.parent} has neither {TOKENIZER_JSON} nor {SPIECE}: SigLIP's tokenizer is needed"
        )
    try:
        from tokenizers import AddedToken, processors
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf
    except ImportError as e:
        raise WeightsError(
            f"reading {spiece} needs transformers, sentencepiece and protobuf ({e.name} is missing): "
            "pip install transformers sentencepiece protobuf, or put a tokenizer.json beside it"
        ) from None
    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(spiece.read_bytes())
    except Exception as e:  # protobuf's DecodeError, or a truncated file
        raise WeightsError(f"{spiece} is not a SentencePiece model: {e}") from None
    if proto.trainer_spec.model_type != 1:  # 1 = unigram, which every SigLIP vocabulary is
        raise WeightsError(f"{spiece} is not a Unigram SentencePiece model (SigLIP's kind)")
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, [(p.piece, p.score) for p in proto.pieces])
    eos = proto.pieces[proto.trainer_spec.eos_id].piece if proto.trainer_spec.eos_id >= 0 else "</s>"
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (eos, unk)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, proto.trainer_spec.eos_id)]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    log.info("converted %s to %s", spiece, out)
    return out


def _token(value: Any, default: str) -> str:
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) and value else default


def siglip_inputs(folder: Path, cfg: SiglipConfig) -> tuple[PreprocessConfig, FixedLengthTokenizer]:
    """What a SigLIP bundle needs beside the weights: preprocessing and tokenizer, from the folder."""
    return siglip_preprocess(folder, cfg.vision.image_size), siglip_tokenizer(folder, cfg.text.context_length)
