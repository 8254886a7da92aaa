"""Parity with an independent implementation: a randomly initialised `transformers` CLIPModel at
ViT-B/32 size, converted into our model and exported as an ONNX bundle, gives the same normalized
features as `transformers` itself, for real photos and 200+ varied prompts (max abs diff <= 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.bundle.encoders import OnnxEncoders
from model.bundle.preprocess import PreprocessConfig, preprocess_image
from model.bundle.prompts import fill, get_templates
from model.bundle.tokenizer import ClipTokenizer
from model.export import export_bundle
from model.weights import model_from_hf
from tests.conftest import photos

TOL = 1e-4
LABELS = [
    "dog",
    "cat",
    "astronaut in a white suit",
    "cup of coffee",
    "rocket on a launch pad",
    "Golden Retriever",
    "tabby cat",
    "a 1960s car",
    "résumé",
    "東京タワー",
    "pizza 🍕",
    "O'Reilly's book",
    "AT&amp;T logo",
    "two   spaces",
]


def _prompts() -> list[str]:
    texts = [p for label in LABELS for p in fill(get_templates("imagenet80")[:16], label)]
    texts += ["", "a", "x " * 120]  # empty, one letter, longer than the context (truncated)
    assert len(texts) >= 200
    return texts


@pytest.fixture(scope="module")
def hf_and_ours() -> tuple[object, torch.nn.Module]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config={"hidden_act": "quick_gelu"},
        vision_config={"hidden_act": "quick_gelu"},
        projection_dim=512,
    )
    hf = transformers.CLIPModel(cfg).eval()
    assert hf.config.vision_config.hidden_size == 768 and hf.config.vision_config.patch_size == 32
    ours = model_from_hf(hf.state_dict(), cfg.to_dict())
    return hf, ours


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    pre = PreprocessConfig(image_size=224)
    return np.stack([preprocess_image(Image.fromarray(a), pre) for a in photos().values()])


def _hf_features(hf: object, pixels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        img = hf.get_image_features(pixel_values=torch.from_numpy(pixels))  # type: ignore[attr-defined]
        txt = hf.get_text_features(input_ids=torch.from_numpy(ids))  # type: ignore[attr-defined]
    img = getattr(img, "pooler_output", img)  # transformers 5 may return an output object
    txt = getattr(txt, "pooler_output", txt)
    return F.normalize(img, dim=-1).numpy(), F.normalize(txt, dim=-1).numpy()


def test_converted_model_matches_transformers(hf_and_ours: tuple, pixels: np.ndarray) -> None:
    hf, ours = hf_and_ours
    ids = ClipTokenizer.clip_bpe().encode_batch(_prompts(), pad_to=77)
    ref_img, ref_txt = _hf_features(hf, pixels, ids)
    with torch.no_grad():
        img = F.normalize(ours.encode_image(torch.from_numpy(pixels)), dim=-1).numpy()
        txt = F.normalize(ours.encode_text(torch.from_numpy(ids)), dim=-1).numpy()
    assert np.abs(img - ref_img).max() <= TOL
    assert np.abs(txt - ref_txt).max() <= TOL
    assert np.abs(ref_img[0] - ref_img[1]).max() > 0.01  # the photos really differ


def test_onnx_bundle_matches_transformers(hf_and_ours: tuple, pixels: np.ndarray, tmp_path: Path) -> None:
    hf, ours = hf_and_ours
    tok = ClipTokenizer.clip_bpe()
    bundle = export_bundle(ours, tok, tmp_path / "hf-b32", pixels[:2], _prompts()[:40], version="v1")
    enc = OnnxEncoders(bundle, device="cpu")
    texts = _prompts()
    ref_img, ref_txt = _hf_features(hf, pixels, tok.encode_batch(texts, pad_to=77))
    got_img = enc.encode_images(pixels)
    got_txt = enc.encode_texts(texts, batch_size=64)  # dynamic padding, length-sorted batches
    assert np.abs(got_img - ref_img).max() <= TOL
    assert np.abs(got_txt - ref_txt).max() <= TOL
    assert bundle.manifest["parity"]["image_max_abs_diff"] <= TOL
