"""Export of a small random model: parity figures, refusal to publish, dynamic text length in ONNX,
int8 encoders (and the default model's int8 agreement)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model.bundle.encoders import OnnxEncoders, l2_normalize
from model.bundle.format import CURRENT, IMAGE_ENCODER_INT8, current_bundle, load_bundle, read_current
from model.bundle.preprocess import PreprocessConfig, preprocess_image
from model.bundle.prompts import get_templates
from model.bundle.tokenizer import ClipTokenizer
from model.bundle.zeroshot import label_matrix
from model.clip import build_model
from model.data.synthetic import SyntheticShapes, all_classes, class_name
from model.evaluate import EVAL_SEED
from model.export import ExportError, export_bundle, requantize_image_encoder
from tests.conftest import DEFAULT_MODEL_DIR
from tests.servers import require_default_model

TEXTS = [
    "a red circle",
    "there is a small blue square on the left",
    "a photo of a dog.",
    "x",
    "ümlaut & emoji 🎉",
]


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model("tiny").eval()
    for mod in m.modules():  # give BatchNorm non-trivial statistics so eval mode is really tested
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    shapes = SyntheticShapes(image_size=64, seed=3, split="all", length=6)
    return np.stack([preprocess_image(s.image, PreprocessConfig(image_size=64)) for s in shapes])


def test_export_publishes_a_valid_bundle(tiny: torch.nn.Module, images: np.ndarray, tmp_path: Path) -> None:
    tok = ClipTokenizer.clip_bpe()
    b = export_bundle(tiny, tok, tmp_path / "m", images, TEXTS, version="v1")
    assert read_current(tmp_path / "m") == "v1"
    m = b.manifest
    assert m["architecture"]["embed_dim"] == 128 and m["architecture"]["image_size"] == 64
    assert m["preprocessing"]["image_size"] == 64
    assert m["tokenizer"]["eot_id"] == 49407
    assert m["parity"]["image_max_abs_diff"] <= 1e-4 and m["parity"]["text_max_abs_diff"] <= 1e-4
    assert m["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-4)
    assert load_bundle(b.path).sha == b.sha

    enc = OnnxEncoders(b, device="cpu")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(tiny.encode_image(torch.from_numpy(images)), dim=-1).numpy()
    assert np.abs(enc.encode_images(images) - ref).max() <= 1e-4
    # The ONNX text encoder takes any length: padding to the longest equals padding to 77.
    dyn = enc.encode_token_ids(tok.encode_batch(TEXTS))
    full = enc.encode_token_ids(tok.encode_batch(TEXTS, pad_to=77))
    assert tok.encode_batch(TEXTS).shape[1] < 77
    assert np.abs(dyn - full).max() <= 1e-5
    # Batched, length-sorted encoding gives the same answer as one at a time.
    one_by_one = np.concatenate([enc.encode_texts([t]) for t in TEXTS])
    assert np.abs(enc.encode_texts(TEXTS, batch_size=2) - one_by_one).max() <= 1e-5


def test_disagreeing_export_is_refused_and_nothing_is_published(
    tiny: torch.nn.Module, images: np.ndarray, tmp_path: Path
) -> None:
    tok = ClipTokenizer.clip_bpe()
    export_bundle(tiny, tok, tmp_path / "m", images, TEXTS, version="good")
    with pytest.raises(ExportError, match="disagree with torch"):
        export_bundle(tiny, tok, tmp_path / "m", images, TEXTS, version="bad", tolerance=-1.0)
    assert read_current(tmp_path / "m") == "good"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted([CURRENT, "good"])
    assert current_bundle(tmp_path / "m").version == "good"


def test_export_without_publishing(tiny: torch.nn.Module, images: np.ndarray, tmp_path: Path) -> None:
    export_bundle(tiny, ClipTokenizer.clip_bpe(), tmp_path / "m", images, TEXTS, version="v1", publish=False)
    assert (tmp_path / "m" / "v1" / "manifest.json").is_file()
    assert not (tmp_path / "m" / CURRENT).exists()


def test_mismatched_preprocessing_is_refused(
    tiny: torch.nn.Module, images: np.ndarray, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="preprocessing size 224"):
        export_bundle(
            tiny,
            ClipTokenizer.clip_bpe(),
            tmp_path / "m",
            images,
            TEXTS,
            preprocess=PreprocessConfig(image_size=224),
        )


def int8_graph_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_image_encoder_is_exported_measured_and_served_only_when_present(
    tiny: torch.nn.Module, images: np.ndarray, tmp_path: Path
) -> None:
    from model.bundle.format import BundleError

    tok = ClipTokenizer.clip_bpe()
    b = export_bundle(tiny, tok, tmp_path / "q", images, TEXTS, version="v1", int8=True)
    q = b.manifest["int8"]
    assert "image_encoder.int8.onnx" in b.manifest["files"]  # hashed like every other file
    assert (
        q["images_checked"] == len(images) and 0.9 < q["cosine_to_fp32_min"] <= q["cosine_to_fp32_mean"] <= 1
    )
    # A ResNet is quantized statically (QDQ around every Conv), calibrated on the sample images.
    assert q["method"] == "static" and q["calibration_images"] == len(images)
    ops = int8_graph_ops(b.file("image_encoder.int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    fp32 = OnnxEncoders(b, device="cpu").encode_images(images)
    int8 = OnnxEncoders(b, device="cpu", image_precision="int8")
    assert int8.image_precision == "int8"
    cos = (fp32 * int8.encode_images(images)).sum(axis=1)
    assert cos.min() == pytest.approx(q["cosine_to_fp32_min"], abs=1e-4)
    assert np.abs(cos - 1).max() > 1e-7  # really another encoder, not the fp32 file again
    plain = export_bundle(tiny, tok, tmp_path / "p", images, TEXTS, version="v1")
    with pytest.raises(BundleError, match="--int8"):
        OnnxEncoders(plain, device="cpu", image_precision="int8")


def test_int8_of_a_vit_is_dynamic_and_calibration_images_are_used(images: np.ndarray, tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = build_model("tiny-vit").eval()
    tok = ClipTokenizer.clip_bpe()
    b = export_bundle(vit, tok, tmp_path / "v", images, TEXTS, version="v1", int8=True)
    assert b.manifest["int8"]["method"] == "dynamic" and "calibration_images" not in b.manifest["int8"]
    assert "QuantizeLinear" not in int8_graph_ops(b.file("image_encoder.int8.onnx"))
    # A ResNet calibrated on other images than the parity sample says so in the manifest.
    torch.manual_seed(0)
    resnet = build_model("tiny").eval()
    cal = np.concatenate([images, images[::-1] * 0.5])
    r = export_bundle(resnet, tok, tmp_path / "r", images, TEXTS, version="v1", int8=True, calibration=cal)
    assert r.manifest["int8"]["calibration_images"] == len(cal)


def test_int8_default_model_agrees_with_fp32_on_its_eval(tmp_path: Path) -> None:
    """What `zeroshot export --int8` writes for the default model (calibrated on the export's own
    sample images) gives the fp32 top-1 on at least 99% of the 2,100 eval images (bench/encoders.py
    measures its speed)."""
    require_default_model()
    bundle = current_bundle(DEFAULT_MODEL_DIR)
    enc = OnnxEncoders(bundle, device="cpu")
    size = enc.preprocess.image_size
    record = requantize_image_encoder(bundle, tmp_path)
    assert record["method"] == "static" and record["calibration_images"] == 64
    q = ort.InferenceSession(str(tmp_path / IMAGE_ENCODER_INT8), providers=["CPUExecutionProvider"])
    pre = PreprocessConfig(image_size=size)
    pixels = np.stack(
        [
            preprocess_image(s.image, pre)
            for split, n in (("heldout", 600), ("seen", 1500))
            for s in SyntheticShapes(image_size=size, seed=EVAL_SEED, split=split, length=n)
        ]
    )
    matrix = label_matrix(enc, [class_name(*c) for c in all_classes()], get_templates("synthetic"))
    chunks = [pixels[i : i + 256] for i in range(0, len(pixels), 256)]
    a = np.concatenate([enc.encode_images(x) for x in chunks])
    b = np.concatenate([l2_normalize(q.run(None, {"pixel_values": x})[0]) for x in chunks])
    agreement = ((a @ matrix.T).argmax(1) == (b @ matrix.T).argmax(1)).mean()
    assert agreement >= 0.99, agreement
    assert (a * b).sum(axis=1).mean() > 0.999


def test_training_eval_and_zeroshot_eval_score_the_same_images_the_same_way(
    tiny: torch.nn.Module, images: np.ndarray, tmp_path: Path
) -> None:
    """The eval a run logs (torch) and `zeroshot eval` of its bundle (ONNX) are one path: the same
    images, prompts and maths, so they predict the same class for (nearly) every image."""
    from model.checkpoint_inputs import ModelInputs
    from model.evaluate import synthetic_report
    from model.torch_encoders import TorchEncoders
    from model.train_config import TrainConfig
    from model.train_eval import run_eval

    tok = ClipTokenizer.clip_bpe()
    b = export_bundle(tiny, tok, tmp_path / "m", images, TEXTS, version="v1")
    n = 60
    torch_side = synthetic_report(TorchEncoders(tiny, tok), n, n, ("synthetic",))["results"]["synthetic"]
    onnx_side = synthetic_report(OnnxEncoders(b, device="cpu"), n, n, ("synthetic",))["results"]["synthetic"]
    for split in ("heldout", "seen"):
        a, o = torch_side[split], onnx_side[split]
        assert a["images"] == o["images"] == n
        assert abs(a["top1"] - o["top1"]) <= 1 / n, (split, a["top1"], o["top1"])
        differ = [c for c in a["per_class_top1"] if a["per_class_top1"][c] != o["per_class_top1"][c]]
        assert len(differ) <= 1, differ  # a near-tie may flip one image, no more
    logged = run_eval(tiny, ModelInputs(tok, TorchEncoders(tiny, tok).preprocess), TrainConfig(eval_images=n))
    assert logged == {"heldout_top1": torch_side["heldout"]["top1"], "seen_top1": torch_side["seen"]["top1"]}
