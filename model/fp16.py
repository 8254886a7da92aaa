"""fp16 encoders: `zeroshot export --fp16` (and `import --fp16`) writes image_encoder.fp16.onnx and
text_encoder.fp16.onnx beside the fp32 files, for GPUs, where fp16 runs on tensor cores.

Inputs and outputs stay float32 (the server's code is the same for every precision: it sends
float32 pixels and reads float32 features); inside, weights and activations are fp16, except the
ops where fp16 loses accuracy: LayerNormalization and Softmax (their reductions overflow or round
badly in fp16) and the reductions a decomposed LayerNorm is made of. Before the bundle is published
both files must agree with torch fp32: cosine of every image's and prompt's features >= 0.999, and
the zero-shot top-1 (each image against every prompt) the same as fp32's for >= 99.5% of the images;
else the export refuses, as it does for fp32. On a CPU, onnxruntime runs an fp16 graph by casting
the ops it has no fp16 kernel for to fp32 around them, so the gate there measures fp16 weights and
the fp16 activations between ops; on a GPU every op runs in fp16 (bench/gpu.py measures it there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.bundle.encoders import open_session, run_normalized
from model.bundle.format import IMAGE_ENCODER, IMAGE_ENCODER_FP16, TEXT_ENCODER, TEXT_ENCODER_FP16

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
MIN_TOP1_AGREEMENT = 0.995
# Ops left in fp32: normalisations and their reductions (a sum of squares overflows fp16's 65,504).
KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Erf"]


class Fp16Error(Exception):
    """The fp16 encoders disagree with fp32 beyond the gate; the export publishes nothing."""


def convert_to_fp16(src: Path, dst: Path) -> None:
    """An fp32 ONNX file -> the same graph in fp16, float32 at its inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *KEEP_FP32]
    )
    onnx.save(half, str(dst))


@dataclass
class Fp16Agreement:
    image_cosine_min: float
    image_cosine_mean: float
    text_cosine_min: float
    text_cosine_mean: float
    top1_agreement: float
    images_checked: int
    texts_checked: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": [IMAGE_ENCODER_FP16, TEXT_ENCODER_FP16],
            **self.__dict__,
            "min_cosine": MIN_COSINE,
            "min_top1_agreement": MIN_TOP1_AGREEMENT,
        }

    def failures(self) -> list[str]:
        """What breaks the gate, in words; empty when it passes (`not >=` also catches NaN)."""
        out = []
        if not self.image_cosine_min >= MIN_COSINE:
            out.append(f"image cosine to fp32 {self.image_cosine_min:.5f} < {MIN_COSINE}")
        if not self.text_cosine_min >= MIN_COSINE:
            out.append(f"text cosine to fp32 {self.text_cosine_min:.5f} < {MIN_COSINE}")
        if not self.top1_agreement >= MIN_TOP1_AGREEMENT:
            out.append(f"top-1 agreement with fp32 {self.top1_agreement:.2%} < {MIN_TOP1_AGREEMENT:.1%}")
        return out


def measure_agreement(
    out_dir: Path,
    images: np.ndarray,
    token_ids: Sequence[np.ndarray],
    ref_images: np.ndarray,
    ref_texts: np.ndarray,
) -> Fp16Agreement:
    """Run the fp16 files on the inputs fp32 was checked on and compare with the reference
    (normalized torch fp32 features: ref_images [N, E], ref_texts [sum of batches, E])."""
    img = run_normalized(open_session(out_dir / IMAGE_ENCODER_FP16), {"pixel_values": images})
    txt_sess = open_session(out_dir / TEXT_ENCODER_FP16)
    txt = np.concatenate([run_normalized(txt_sess, {"input_ids": ids}) for ids in token_ids])
    img_cos, txt_cos = (img * ref_images).sum(1), (txt * ref_texts).sum(1)
    # zero-shot top-1 of each image among the distinct prompts, fp16 against fp32 (a prompt checked
    # at two paddings would otherwise be two near-equal candidates, a tie noise could flip)
    keep = _distinct_prompts(token_ids)
    same = np.argmax(img @ txt[keep].T, axis=1) == np.argmax(ref_images @ ref_texts[keep].T, axis=1)
    return Fp16Agreement(
        float(img_cos.min()),
        float(img_cos.mean()),
        float(txt_cos.min()),
        float(txt_cos.mean()),
        float(same.mean()),
        len(images),
        len(txt),
    )


def _distinct_prompts(token_ids: Sequence[np.ndarray]) -> list[int]:
    """Row indices (over all batches, in order) of the first occurrence of each prompt, a prompt
    being its token ids without the trailing padding (zeros after the end-of-text token)."""
    seen: set[tuple[int, ...]] = set()
    keep, i = [], 0
    for ids in token_ids:
        for row in ids:
            nonzero = np.flatnonzero(row)
            key = tuple(int(t) for t in row[: nonzero[-1] + 1 if len(nonzero) else 0])
            if key not in seen:
                seen.add(key)
                keep.append(i)
            i += 1
    return keep


def write_fp16_encoders(
    out_dir: Path,
    images: np.ndarray,
    token_ids: Sequence[np.ndarray],
    ref_images: np.ndarray,
    ref_texts: np.ndarray,
) -> dict[str, Any]:
    """Write both fp16 files beside the fp32 ones in out_dir and gate them; the manifest record."""
    for src, dst in ((IMAGE_ENCODER, IMAGE_ENCODER_FP16), (TEXT_ENCODER, TEXT_ENCODER_FP16)):
        convert_to_fp16(out_dir / src, out_dir / dst)
    agreement = measure_agreement(out_dir, images, token_ids, ref_images, ref_texts)
    log.info(
        "fp16 vs torch fp32: cosine min %.5f (image), %.5f (text), top-1 agreement %.2f%%",
        agreement.image_cosine_min,
        agreement.text_cosine_min,
        100 * agreement.top1_agreement,
    )
    if failed := agreement.failures():
        raise Fp16Error(f"fp16 encoders fail the gate: {'; '.join(failed)}; nothing was published")
    return agreement.as_dict()
