"""Export a CLIP (or SigLIP) model to an ONNX model bundle, check it against torch, publish it atomically.

The image encoder takes [B, 3, S, S] and the text encoder [B, L] with both B and L dynamic, so the
server pads prompts only to the longest in a batch. Before a bundle becomes visible its encoders run
in onnxruntime on real inputs and must agree with torch: by default within 1e-4 max abs difference
on L2-normalized features (fp32 ONNX against fp32 torch is typically ~1e-6; 1e-4 leaves room for
kernel differences while still catching any wrong op, which shows up as 1e-2 or more).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.bundle.encoders import open_session, run_normalized
from model.bundle.format import (
    IMAGE_ENCODER,
    TEXT_ENCODER,
    TOKENIZER,
    Bundle,
    new_version,
    set_current,
    write_bundle,
)
from model.bundle.hf_tokenizer import FixedLengthTokenizer
from model.bundle.preprocess import PreprocessConfig
from model.bundle.tokenizer import ClipTokenizer
from model.clip import CLIP
from model.fp16 import Fp16Error, write_fp16_encoders
from model.quantize import quantize_image_encoder
from model.siglip import SigLIP

log = logging.getLogger(__name__)

Model = CLIP | SigLIP  # both offer encode_image, encode_text, logit_scale and logit_bias
Tokenizer = ClipTokenizer | FixedLengthTokenizer  # CLIP's BPE; SigLIP's SentencePiece, fixed length

DEFAULT_TOLERANCE = 1e-4
OPSET = 18
SAMPLE_IMAGES = 64  # rendered images export_checkpoint checks parity (and calibrates int8) on


class ExportError(Exception):
    """Export failed or the exported encoders disagree with torch; nothing was published."""


class _ImageEncoder(nn.Module):
    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


class _TextEncoder(nn.Module):
    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs and warns a lot that is not about our model (torchvision ops, deprecations)."""
    names = ["torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir"]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)


def export_onnx(model: Model, out_dir: Path) -> None:
    """Write image_encoder.onnx and text_encoder.onnx (fp32, dynamic batch and sequence) into out_dir."""
    model = model.eval().float()
    s = model.config.vision.image_size
    batch = torch.export.Dim("batch", min=1, max=65536)
    seq = torch.export.Dim("seq", min=2, max=model.config.text.context_length)
    ids = torch.zeros(2, 5, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 1, 2, getattr(model.config.text, "eot_id", 1)  # SigLIP: none
    jobs: list[tuple[nn.Module, tuple[torch.Tensor], str, str, str, dict[int, Any]]] = [
        (
            _ImageEncoder(model),
            (torch.zeros(2, 3, s, s),),
            "pixel_values",
            "image_features",
            IMAGE_ENCODER,
            {0: batch},
        ),
        (_TextEncoder(model), (ids,), "input_ids", "text_features", TEXT_ENCODER, {0: batch, 1: seq}),
    ]
    for module, args, in_name, out_name, fname, dims in jobs:
        try:
            with _quiet_exporter(), torch.no_grad():
                torch.onnx.export(
                    module.eval(),
                    args,
                    str(out_dir / fname),
                    input_names=[in_name],
                    output_names=[out_name],
                    dynamic_shapes=(dims,),
                    dynamo=True,
                    external_data=False,
                    opset_version=OPSET,
                )
        except Exception as e:  # the exporter raises many kinds; say which file failed and why
            raise ExportError(f"exporting {fname} failed: {type(e).__name__}: {e}") from e


@dataclass
class Parity:
    image_max_abs_diff: float
    text_max_abs_diff: float
    tolerance: float
    images_checked: int
    texts_checked: int

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def describe_parity(parity: Mapping[str, Any]) -> str:
    """One line for a manifest's parity figures, as export, import and retrain print them."""
    return (
        f"ONNX vs torch max abs diff {parity['image_max_abs_diff']:.1e} (image), "
        f"{parity['text_max_abs_diff']:.1e} (text), tolerance {parity['tolerance']:.0e}"
    )


def torch_features(
    model: Model, images: np.ndarray, token_ids: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """torch fp32's normalized features of the images [N, E] and of every token batch, in order."""
    model = model.eval().float()
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.from_numpy(images)), dim=-1).numpy()
        txt = [F.normalize(model.encode_text(torch.from_numpy(ids)), dim=-1).numpy() for ids in token_ids]
    return img, np.concatenate(txt)


def check_parity(
    ref: tuple[np.ndarray, np.ndarray],
    out_dir: Path,
    images: np.ndarray,
    token_ids: Sequence[np.ndarray],
    tolerance: float,
) -> Parity:
    """Run both ONNX files in onnxruntime and compare their normalized features with torch's
    (`ref`: torch_features of the same images and token batches)."""
    img_sess, txt_sess = open_session(out_dir / IMAGE_ENCODER), open_session(out_dir / TEXT_ENCODER)
    ref_img, ref_txt = ref
    img_diff = float(np.abs(ref_img - run_normalized(img_sess, {"pixel_values": images})).max())
    txt_diff, n_txt = 0.0, 0
    for ids in token_ids:  # batches of different padded lengths exercise the dynamic sequence axis
        got = run_normalized(txt_sess, {"input_ids": ids})
        want = ref_txt[n_txt : n_txt + len(ids)]
        txt_diff, n_txt = max(txt_diff, float(np.abs(want - got).max())), n_txt + len(ids)
    parity = Parity(img_diff, txt_diff, tolerance, len(images), n_txt)
    log.info(
        "ONNX vs torch: image max abs diff %.2e, text %.2e (tolerance %.0e)", img_diff, txt_diff, tolerance
    )
    if not (img_diff <= tolerance and txt_diff <= tolerance):  # `not <=` also catches NaN
        raise ExportError(
            f"ONNX encoders disagree with torch beyond {tolerance:.0e}: "
            f"image {img_diff:.2e}, text {txt_diff:.2e}; "
            "nothing was published"
        )
    return parity


def requantize_image_encoder(bundle: Bundle, out_dir: Path) -> dict[str, Any]:
    """Write into out_dir the int8 image encoder that `zeroshot export --int8` (with no calibration
    folder) writes for this bundle's fp32 one, beside a copy of it; returns its manifest record."""
    arch = bundle.manifest["architecture"]
    shutil.copy(bundle.file(IMAGE_ENCODER), out_dir / IMAGE_ENCODER)
    calibration, _ = sample_inputs(arch["image_size"], SAMPLE_IMAGES)
    return quantize_image_encoder(out_dir, calibration, arch["image_tower"])


def export_bundle(
    model: Model,
    tokenizer: Tokenizer,
    model_dir: str | Path,
    sample_images: np.ndarray,
    sample_texts: Sequence[str],
    version: str | None = None,
    preprocess: PreprocessConfig | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    publish: bool = True,
    extra_manifest: dict[str, Any] | None = None,
    int8: bool = False,
    calibration: np.ndarray | None = None,
    fp16: bool = False,
) -> Bundle:
    """Export, check parity, write the bundle atomically and (by default) make it CURRENT.

    ``sample_images`` are preprocessed real images [N, 3, S, S]; ``sample_texts`` real prompts.
    ``int8`` adds image_encoder.int8.onnx, with its agreement with fp32 on the sample images;
    ``calibration`` (preprocessed images like those served) sets a ResNet's int8 activation ranges;
    ``fp16`` adds image_encoder.fp16.onnx and text_encoder.fp16.onnx, gated (model/fp16.py).
    """
    cfg = model.config
    preprocess = preprocess or PreprocessConfig(image_size=cfg.vision.image_size)
    _check_fit(model, tokenizer, preprocess)
    texts = list(sample_texts)
    half = max(1, len(texts) // 2)
    token_batches = [tokenizer.encode_batch(texts[:half]), tokenizer.encode_batch(texts[half:], pad_to=None)]
    token_batches.append(tokenizer.encode_batch(texts[:8], pad_to=cfg.text.context_length))
    token_batches = [b for b in token_batches if len(b)]
    images = np.ascontiguousarray(sample_images, dtype=np.float32)

    def write_files(tmp: Path) -> dict[str, Any]:
        log.info("exporting ONNX encoders")
        export_onnx(model, tmp)
        ref = torch_features(model, images, token_batches)
        parity = check_parity(ref, tmp, images, token_batches, tolerance)
        tokenizer.save(tmp / TOKENIZER)
        extra: dict[str, Any] = {"parity": parity.as_dict()}
        if int8:
            log.info("quantizing the image encoder to int8")
            extra["int8"] = quantize_image_encoder(tmp, images, cfg.vision.kind, calibration)
        if fp16:
            log.info("converting both encoders to fp16")
            try:
                extra["fp16"] = write_fp16_encoders(tmp, images, token_batches, *ref)
            except Fp16Error as e:
                raise ExportError(str(e)) from None
        return extra

    manifest = {**_manifest(model, tokenizer, preprocess), **(extra_manifest or {})}
    model_dir = Path(model_dir)
    bundle = write_bundle(model_dir, version or new_version(), manifest, write_files)
    if publish:
        set_current(model_dir, bundle.version)
    return bundle


def _check_fit(model: Model, tokenizer: Tokenizer, preprocess: PreprocessConfig) -> None:
    cfg = model.config
    if preprocess.image_size != cfg.vision.image_size:
        raise ExportError(
            f"preprocessing size {preprocess.image_size} != model image size {cfg.vision.image_size}"
        )
    if isinstance(model, SigLIP):  # pooled at the last position: the tokenizer must pad to its length
        text, length = model.config.text, tokenizer.context_length
        if tokenizer.vocab_size > text.vocab_size or length != text.context_length:
            raise ExportError(
                f"tokenizer (vocab {tokenizer.vocab_size}, padded to {length}) does not "
                f"fit the model (vocab {text.vocab_size}, {text.context_length} positions)"
            )
        return
    clip = model.config.text
    if tokenizer.vocab_size > clip.vocab_size or tokenizer.eot_id != clip.eot_id:
        raise ExportError(
            f"tokenizer (vocab {tokenizer.vocab_size}, eot {tokenizer.eot_id}) does not fit the model "
            f"(vocab {clip.vocab_size}, eot {clip.eot_id})"
        )


def _manifest(model: Model, tokenizer: Tokenizer, preprocess: PreprocessConfig) -> dict[str, Any]:
    """What the server needs to know of the model (the bundle contract, docs/architecture.md)."""
    cfg = model.config
    return {
        "architecture": {
            "family": "siglip" if isinstance(model, SigLIP) else "clip",
            "embed_dim": cfg.embed_dim,
            "image_size": cfg.vision.image_size,
            "context_length": cfg.text.context_length,
            "vocab_size": cfg.text.vocab_size,
            "image_tower": cfg.vision.kind,
            "activation": cfg.activation,
            "config": cfg.to_dict(),
        },
        "preprocessing": preprocess.to_dict(),
        # CLIP's scale is capped at 100 as OpenAI trains it; SigLIP's is used as is (transformers: no cap)
        "logit_scale": float(
            model.logit_scale.detach().exp().clamp(max=100.0 if isinstance(model, CLIP) else math.inf)
        ),
        # how the model was trained to score a pair: SigLIP's sigmoid(exp(t) cos + b), or CLIP's softmax
        "scoring": {"kind": "softmax"}
        if model.logit_bias is None
        else {"kind": "sigmoid", "logit_bias": float(model.logit_bias.detach())},
        "tokenizer": tokenizer.facts(),
        "onnx": {
            "opset": OPSET,
            "image_input": "pixel_values",
            "text_input": "input_ids",
            "dtype": "float32",
        },
    }


def sample_inputs(
    image_size: int, n_images: int = 8, pre: PreprocessConfig | None = None
) -> tuple[np.ndarray, list[str]]:
    """Rendered images and 250+ varied prompts for the export's ONNX-vs-torch check.

    Few images suffice (a ViT-L/14 at 336 px takes seconds per image on a small CPU, and 8 already
    cover every op); many prompts, since the text encoder's sequence axis is dynamic.
    """
    from model.bundle.preprocess import preprocess_image
    from model.bundle.prompts import fill, get_templates
    from model.data.synthetic import SyntheticShapes, all_classes, class_name

    pre = pre or PreprocessConfig(image_size=image_size)  # the bundle's own: SigLIP's squash, say
    shapes = SyntheticShapes(image_size=image_size, seed=7, split="all", length=n_images)
    images = np.stack([preprocess_image(shapes[i].image, pre) for i in range(len(shapes))])
    texts = [p for c in all_classes() for p in fill(get_templates("imagenet7"), class_name(*c))]
    texts += [shapes[i].caption for i in range(len(shapes))]
    return images, texts


def export_checkpoint(
    checkpoint: str | Path,
    model_dir: str | Path,
    version: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    publish: bool = True,
    int8: bool = False,
    n_images: int = SAMPLE_IMAGES,
    calibration_folder: str | Path | None = None,
    fp16: bool = False,
) -> Bundle:
    """A training checkpoint -> a bundle in model_dir; the manifest names the checkpoint, so a later
    fine-tuning run can start from the bundle (model/checkpoints.py resolve_init).

    With ``int8``, a ResNet's activation ranges are calibrated on up to 256 images from
    ``calibration_folder`` (images like those it will serve), else on the rendered sample images,
    which suit only a model trained on the synthetic shapes."""
    from model.checkpoints import inputs_of, load_checkpoint, model_from_checkpoint
    from model.objectives import BowPredictive, CaptionLM

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    if isinstance(model, BowPredictive | CaptionLM):
        raise ExportError(
            f"{checkpoint} holds a {model.config.objective} model, which scores captions by their "
            "likelihood and has no text encoder to serve: only contrastive and bow-contrastive models "
            f"export to a bundle (evaluate it with `zeroshot eval --checkpoint {checkpoint}`)"
        )
    inputs = inputs_of(ckpt, model)  # CLIP's BPE and preprocessing, or those a SigLIP came with
    size = model.config.vision.image_size
    images, texts = sample_inputs(size, n_images, inputs.preprocess)
    calibration = None
    if int8 and calibration_folder is not None:
        from model.data.files import sample_image_files

        calibration = sample_image_files(calibration_folder, inputs.preprocess)
        log.info("int8 calibration: %d images from %s", len(calibration), calibration_folder)
    return export_bundle(
        model,
        inputs.tokenizer,
        model_dir,
        images,
        texts,
        version=version,
        preprocess=inputs.preprocess,
        tolerance=tolerance,
        publish=publish,
        extra_manifest={"source": {"checkpoint": str(checkpoint)}},  # as given, like `import`
        int8=int8,
        calibration=calibration,
        fp16=fp16,
    )
