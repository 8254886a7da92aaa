"""`zeroshot import hf` of a SigLIP folder, against transformers' own SiglipModel at SigLIP-B/16-224
size (every parameter perturbed): the bundle, through its own preprocessing and tokenizer, gives the
normalized features transformers gives through its own processor, on real photos and 200+ varied
prompts, within 1e-4; the manifest states SigLIP's preprocessing, scoring and tokenizer.

Preprocessing tolerance: none is needed. Both sides run the same Pillow bicubic resize to 224 x 224
and the same float32 (x / 255 - 0.5) / 0.5 (tests/model/test_preprocess.py holds them within 1e-6, and
measures 0), so the pixels fed to both models are compared for exact equality here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.bundle.encoders import OnnxEncoders
from model.bundle.format import current_bundle
from model.bundle.preprocess import PreprocessConfig, preprocess_image
from model.cli import main
from tests.conftest import photos
from tests.model.test_parity_hf import _prompts
from tests.siglip_checkpoint import siglip_folder

pytestmark = pytest.mark.slow
TOL = 1e-4


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """(transformers' model, the slow SiglipTokenizer and image processor it was saved with, bundle)."""
    transformers = pytest.importorskip("transformers")
    tmp = tmp_path_factory.mktemp("siglip-b16")
    hf, folder = siglip_folder(tmp / "hf", tiny=False)
    out = tmp / "models" / "siglip"
    assert main(["import", "hf", str(folder), "--out", str(out), "--checkpoint-out", str(tmp / "ck.pt")]) == 0
    processor = transformers.SiglipProcessor(
        image_processor=transformers.SiglipImageProcessorPil.from_pretrained(folder),
        tokenizer=transformers.SiglipTokenizer.from_pretrained(folder),
    )
    return hf, processor, out


def _normalized(out: Any) -> np.ndarray:
    out = getattr(out, "pooler_output", out)  # transformers 5 may return an output object
    return F.normalize(out, dim=-1).numpy()


def test_the_manifest_states_siglips_recipe(imported: tuple[Any, Any, Path]) -> None:
    hf, _, out = imported
    m = current_bundle(out).manifest
    assert m["architecture"]["family"] == "siglip" and m["architecture"]["context_length"] == 64
    pre = m["preprocessing"]
    assert (pre["resize"], pre["crop"], pre["interpolation"]) == ("square", "none", "bicubic")
    assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.5] * 3
    assert m["scoring"] == {"kind": "sigmoid", "logit_bias": pytest.approx(float(hf.logit_bias.detach()))}
    assert m["logit_scale"] == pytest.approx(float(hf.logit_scale.detach().exp()), rel=1e-6)
    assert m["tokenizer"]["kind"] == "sentencepiece_fixed" and m["tokenizer"]["context_length"] == 64
    assert m["parity"]["image_max_abs_diff"] <= TOL and m["parity"]["text_max_abs_diff"] <= TOL
    assert json.loads((out / m["version"] / "manifest.json").read_text())["scoring"]["kind"] == "sigmoid"


def test_image_features_match_transformers_on_photos(imported: tuple[Any, Any, Path]) -> None:
    hf, processor, out = imported
    bundle = current_bundle(out)
    pre = PreprocessConfig.from_dict(bundle.manifest["preprocessing"])
    images = [Image.fromarray(a) for a in photos().values()]
    ours_pixels = np.stack([preprocess_image(im, pre) for im in images])
    hf_pixels = processor(images=images, return_tensors="np")["pixel_values"]
    assert np.array_equal(ours_pixels, hf_pixels)  # see the module docstring: no tolerance needed
    with torch.no_grad():
        ref = _normalized(hf.get_image_features(pixel_values=torch.from_numpy(hf_pixels)))
    got = OnnxEncoders(bundle, device="cpu").encode_images(ours_pixels)
    assert np.abs(got - ref).max() <= TOL
    assert np.abs(ref[0] - ref[1]).max() > 0.01  # the photos really differ


def test_text_features_and_ids_match_transformers(imported: tuple[Any, Any, Path]) -> None:
    hf, processor, out = imported
    texts = _prompts()
    assert len(texts) >= 200
    enc = OnnxEncoders(current_bundle(out), device="cpu")
    ids = processor(text=texts, padding="max_length", max_length=64, truncation=True, return_tensors="np")
    hf_ids = np.asarray(ids["input_ids"])
    assert np.array_equal(enc.tokenizer.encode_batch(texts), hf_ids)
    with torch.no_grad():
        ref = _normalized(hf.get_text_features(input_ids=torch.from_numpy(hf_ids)))
    got = enc.encode_texts(texts, batch_size=64)
    assert np.abs(got - ref).max() <= TOL
    assert len({tuple(np.round(r, 3)) for r in ref}) > 150  # the prompts give different features
