"""The OpenVINO backend on the default model: fp32 agrees with onnxruntime to rounding, bf16 closely
enough to serve (cosine >= 0.999, top-1 agreement >= 99.5% on the default model's eval images);
bf16 is refused on a CPU without native bf16, and the settings refuse what cannot run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.main import create_app
from app.settings import Settings
from model.bundle import openvino_encoders
from model.bundle.encoders import OnnxEncoders, open_encoders
from model.bundle.format import BundleError, current_bundle
from model.bundle.prompts import load_templates
from model.bundle.zeroshot import label_matrix
from model.data.synthetic import all_classes, class_name
from model.evaluate import _encode_split
from tests.conftest import DEFAULT_MODEL_DIR
from tests.servers import service_settings

TEXTS = [f"a photo of a {c} {s}." for c in ("red", "green", "blue", "yellow") for s in ("circle", "star")]


@pytest.fixture(scope="module")
def bundle() -> Any:
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} has no CURRENT: run `make setup` first (make test does)")
    return current_bundle(DEFAULT_MODEL_DIR)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.99999), ("bf16", 0.999)])
def test_openvino_features_match_onnxruntime(bundle: Any, precision: str, floor: float) -> None:
    ref = OnnxEncoders(bundle, device="cpu")
    ov = open_encoders(bundle, "openvino", precision)
    assert ov.provider == f"OpenVINO CPU ({precision})" and ov.image_precision == precision
    size = ref.preprocess.image_size
    pixels = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    assert cosines(ov.encode_images(pixels), ref.encode_images(pixels)).min() >= floor
    assert cosines(ov.encode_texts(TEXTS), ref.encode_texts(TEXTS)).min() >= floor
    assert ov.encode_images(pixels[:1]).shape == (1, ref.embed_dim)  # batch sizes change: dynamic shapes


def test_bf16_answers_agree_with_fp32_on_the_default_models_eval_images(bundle: Any) -> None:
    """Top-1 among the 36 classes, image by image, on held-out and seen eval images."""
    classes = [class_name(*c) for c in all_classes()]
    templates = load_templates("synthetic")
    picks = []
    for enc in (OnnxEncoders(bundle, device="cpu"), open_encoders(bundle, "openvino", "bf16")):
        matrix = label_matrix(enc, classes, templates)
        feats = np.concatenate([_encode_split(enc, split, 300)[0] for split in ("heldout", "seen")])
        picks.append((feats @ matrix.T).argmax(axis=1))
    agreement = float((picks[0] == picks[1]).mean())
    assert len(picks[0]) == 600 and agreement >= 0.995, agreement


def test_bf16_is_refused_on_a_cpu_without_native_bf16(bundle: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_encoders, "native_bf16", lambda core: False)
    with pytest.raises(BundleError, match=r"no native bf16.*ZEROSHOT_PRECISION=fp32"):
        open_encoders(bundle, "openvino", "bf16")
    assert open_encoders(bundle, "openvino", "fp32").image_precision == "fp32"  # fp32 still runs


def test_settings_refuse_what_cannot_run() -> None:
    for kw, why in (
        ({"precision": "bf16"}, "needs backend openvino"),
        ({"backend": "openvino", "image_precision": "int8"}, "no fp16 or int8"),
        ({"backend": "openvino", "precision": "fp16"}, "no fp16 or int8"),
        ({"backend": "openvino", "device": "cuda"}, "no GPU device"),
        ({"backend": "openvino", "device": "tensorrt"}, "no GPU device"),
        ({"precision": "fp16", "image_precision": "int8"}, "not with image_precision int8"),
    ):
        with pytest.raises(ValidationError, match=why):
            Settings(**kw)  # type: ignore[arg-type]


def test_the_server_serves_on_openvino_bf16_and_says_so(tmp_path: Path) -> None:
    s = service_settings(tmp_path, backend="openvino", precision="bf16")
    with TestClient(create_app(s)) as c:
        m = c.get("/v1/models").json()
        assert (m["backend"], m["provider"], m["image_precision"]) == (
            "openvino",
            "OpenVINO CPU (bf16)",
            "bf16",
        )
        png = (Path(__file__).parents[2] / "docs" / "yellow-cross.png").read_bytes()
        r = c.post(
            "/v1/classify",
            files=[("image", ("y.png", png, "image/png"))],
            data={"labels": ["yellow cross", "red circle", "blue heart"]},
        )
        assert r.status_code == 200 and r.json()["results"][0]["labels"][0]["label"] == "yellow cross"
