"""fp16 bundles: `export --fp16` writes both fp16 files, gated against torch fp32; a model whose fp16
graph overflows is refused and nothing is published; serving ZEROSHOT_PRECISION=fp16 runs them; the
default model's fp16 encoders give fp32's top-1 on its eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from model.bundle.encoders import OnnxEncoders, l2_normalize, open_encoders, open_session
from model.bundle.format import (
    CURRENT,
    IMAGE_ENCODER,
    IMAGE_ENCODER_FP16,
    TEXT_ENCODER,
    TEXT_ENCODER_FP16,
    BundleError,
    current_bundle,
)
from model.bundle.preprocess import PreprocessConfig, preprocess_image
from model.bundle.prompts import get_templates
from model.bundle.tokenizer import ClipTokenizer
from model.bundle.zeroshot import label_matrix
from model.clip import build_model
from model.data.synthetic import SyntheticShapes, all_classes, class_name
from model.evaluate import EVAL_SEED
from model.export import ExportError, export_bundle, sample_inputs
from model.fp16 import MIN_COSINE, _distinct_prompts, convert_to_fp16
from tests.conftest import DEFAULT_MODEL_DIR
from tests.servers import require_default_model


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model("tiny").eval()
    with torch.no_grad():  # every parameter moved off its initial value, so nothing is trivially 0/1
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, list[str]]:
    return sample_inputs(64, n_images=8)


def float_types(path: Path) -> set[str]:
    return {onnx.TensorProto.DataType.Name(t.data_type) for t in onnx.load(str(path)).graph.initializer}


def test_export_fp16_writes_both_files_gated_and_served(
    tiny: torch.nn.Module, sample: tuple[np.ndarray, list[str]], tmp_path: Path
) -> None:
    images, texts = sample
    b = export_bundle(tiny, ClipTokenizer.clip_bpe(), tmp_path / "m", images, texts, version="v1", fp16=True)
    record = b.manifest["fp16"]
    assert record["image_cosine_min"] >= MIN_COSINE and record["text_cosine_min"] >= MIN_COSINE
    assert record["top1_agreement"] >= 0.995 and record["images_checked"] == 8
    assert record["texts_checked"] >= 200  # the issue asks for >= 200 prompts
    for name in (IMAGE_ENCODER_FP16, TEXT_ENCODER_FP16):
        assert name in b.manifest["files"]  # hashed like every other file
        assert "FLOAT16" in float_types(b.file(name))  # really fp16 inside
    assert "FLOAT16" not in float_types(b.file(IMAGE_ENCODER))
    # float32 in and out, so the server's code is the same for every precision
    sess = open_session(b.file(IMAGE_ENCODER_FP16))
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"

    fp32 = OnnxEncoders(b, device="cpu")
    half = open_encoders(b, "onnxruntime", "fp16", "cpu")
    assert isinstance(half, OnnxEncoders) and half.precision == "fp16" and half.image_precision == "fp16"
    assert (fp32.encode_images(images) * half.encode_images(images)).sum(1).min() >= MIN_COSINE
    t32, t16 = fp32.encode_texts(texts[:40]), half.encode_texts(texts[:40])
    assert (t32 * t16).sum(1).min() >= MIN_COSINE
    # an fp16 session is not the fp32 one under another name
    assert not np.array_equal(t32, t16)


def test_fp16_that_overflows_is_refused_and_nothing_is_published(
    tiny: torch.nn.Module, sample: tuple[np.ndarray, list[str]], tmp_path: Path
) -> None:
    """Features beyond fp16's range (65,504) become inf in fp16: fp32 export passes (its features
    are normalized), the fp16 gate must not."""
    images, texts = sample
    big = build_model("tiny").eval()
    big.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        big.visual.attnpool.c_proj.weight.mul_(1e6)
        big.visual.attnpool.c_proj.bias.mul_(1e6)
    with pytest.raises(ExportError, match="fp16 encoders fail the gate: image cosine"):
        export_bundle(big, ClipTokenizer.clip_bpe(), tmp_path / "m", images, texts, version="v1", fp16=True)
    assert not (tmp_path / "m" / "v1").exists() and not (tmp_path / "m" / CURRENT).exists()
    # the same model without --fp16 exports: the refusal is the fp16 gate's
    export_bundle(big, ClipTokenizer.clip_bpe(), tmp_path / "m", images, texts, version="v1")


def test_fp16_served_only_when_the_bundle_has_it(
    tiny: torch.nn.Module, sample: tuple[np.ndarray, list[str]], tmp_path: Path
) -> None:
    images, texts = sample
    plain = export_bundle(tiny, ClipTokenizer.clip_bpe(), tmp_path / "p", images, texts[:20], version="v1")
    with pytest.raises(BundleError, match="export --fp16"):
        open_encoders(plain, "onnxruntime", "fp16", "cpu")
    with pytest.raises(BundleError, match="not with image precision int8"):
        open_encoders(plain, "onnxruntime", "fp16", "cpu", image_precision="int8")
    with pytest.raises(BundleError, match="no int8, fp16 or GPU"):
        open_encoders(plain, "openvino", "fp16", "cpu")
    # precision int8 is the int8 image encoder, as image_precision int8
    with pytest.raises(BundleError, match="--int8"):
        open_encoders(plain, "onnxruntime", "int8", "cpu")


def test_distinct_prompts_ignores_padding_only() -> None:
    a = np.array([[49406, 5, 49407, 0], [49406, 6, 49407, 0]])
    b = np.array([[49406, 5, 49407, 0, 0, 0], [49406, 0, 49407, 0, 0, 0]])  # "!" is id 0, kept inside
    assert _distinct_prompts([a, b]) == [0, 1, 3]


def test_fp16_default_model_agrees_with_fp32_on_its_eval(tmp_path: Path) -> None:
    """What `export --fp16` writes for the default model gives fp32's top-1 on >= 99.5% of the 2,100
    eval images, with the fp16 text encoder building the label matrix too."""
    require_default_model()
    bundle = current_bundle(DEFAULT_MODEL_DIR)
    for src, dst in ((IMAGE_ENCODER, IMAGE_ENCODER_FP16), (TEXT_ENCODER, TEXT_ENCODER_FP16)):
        convert_to_fp16(bundle.file(src), tmp_path / dst)
    enc = OnnxEncoders(bundle, device="cpu")
    img16, txt16 = open_session(tmp_path / IMAGE_ENCODER_FP16), open_session(tmp_path / TEXT_ENCODER_FP16)
    size = enc.preprocess.image_size
    pre = PreprocessConfig(image_size=size)
    pixels = np.stack(
        [
            preprocess_image(s.image, pre)
            for split, n in (("heldout", 600), ("seen", 1500))
            for s in SyntheticShapes(image_size=size, seed=EVAL_SEED, split=split, length=n)
        ]
    )
    labels, templates = [class_name(*c) for c in all_classes()], get_templates("synthetic")
    matrix32 = label_matrix(enc, labels, templates)

    class Half:  # the fp16 text encoder behind the same interface, so prompt ensembling is shared
        tokenizer, embed_dim = enc.tokenizer, enc.embed_dim

        def encode_token_ids(self, ids: np.ndarray) -> np.ndarray:
            return l2_normalize(txt16.run(None, {"input_ids": ids})[0])

        def encode_texts(
            self, texts: list[str], batch_size: int = 256, pad_to: int | None = None
        ) -> np.ndarray:
            from model.bundle.encoders import encode_by_length

            return encode_by_length(self, texts, batch_size, pad_to)

    matrix16 = label_matrix(Half(), labels, templates)
    chunks = [pixels[i : i + 256] for i in range(0, len(pixels), 256)]
    a = np.concatenate([enc.encode_images(x) for x in chunks])
    b = np.concatenate([l2_normalize(img16.run(None, {"pixel_values": x})[0]) for x in chunks])
    agreement = ((a @ matrix32.T).argmax(1) == (b @ matrix16.T).argmax(1)).mean()
    assert agreement >= 0.995, agreement
    assert (a * b).sum(axis=1).min() >= MIN_COSINE


def test_the_server_serves_fp16_and_says_so(
    tiny: torch.nn.Module, sample: tuple[np.ndarray, list[str]], tmp_path: Path
) -> None:
    """ZEROSHOT_PRECISION=fp16 serves the fp16 files; /v1/models shows the precision, the gate's
    figures and the GPU settings reach the encoders."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    images, texts = sample
    export_bundle(tiny, ClipTokenizer.clip_bpe(), tmp_path / "tiny", images, texts, version="v1", fp16=True)
    s = Settings(
        models_dir=tmp_path,
        model_name="tiny",
        precision="fp16",
        device="cpu",
        label_sets_dir=tmp_path / "sets",
        reload_interval_s=0,
        max_batch=8,
        gpu_mem_limit_mb=512,
    )
    assert s.gpu_options().mem_limit_mb == 512 and s.gpu_options().max_batch == 8
    with TestClient(create_app(s)) as c:
        m = c.get("/v1/models").json()
        assert (m["precision"], m["image_precision"]) == ("fp16", "fp16")
        assert m["fp16"]["top1_agreement"] >= 0.995
        png = (Path(__file__).parents[2] / "docs" / "yellow-cross.png").read_bytes()
        r = c.post(
            "/v1/classify", files=[("image", ("y.png", png, "image/png"))], data={"labels": ["a", "b"]}
        )
        assert r.status_code == 200, r.text
