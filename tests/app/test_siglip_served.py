"""A SigLIP bundle served over HTTP with no SigLIP code in the routes: the manifest's preprocessing,
tokenizer and scoring carry it. mode=multi answers the model's own sigmoid(logit_scale x cosine +
logit_bias), label by label; mode=single stays a softmax; label sets and hot reload work as for CLIP.
The bundle is a tiny random SigLIP imported from a transformers folder (tests/siglip_checkpoint.py)."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from model.bundle.format import current_bundle
from tests.servers import service_settings
from tests.siglip_checkpoint import import_siglip

ADMIN = {"Authorization": "Bearer siglip-admin"}
LABELS = ["red circle", "blue square", "green triangle", "yellow star", "a dog"]
TEMPLATES = ["a photo of a {}."]


def png(seed: int, size: int = 48) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size + 9, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def models(siglip_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's models folder: the reload test publishes a second version into it."""
    dst = tmp_path_factory.mktemp("siglip-app") / "models"
    shutil.copytree(siglip_models, dst)
    return dst


@pytest.fixture(scope="module")
def client(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("siglip-svc")
    settings = service_settings(tmp, models_dir=models, model_name="siglip", admin_token="siglip-admin")
    with TestClient(create_app(settings)) as c:
        yield c


def classify(c: TestClient, **body: Any) -> dict[str, Any]:
    body = {"images": [b64(png(1)), b64(png(2))], "templates": TEMPLATES, "top_k": len(LABELS)} | body
    r = c.post("/v1/classify", json={k: v for k, v in body.items() if v is not None})  # None: leave out
    assert r.status_code == 200, r.text
    return dict(r.json())


def features(c: TestClient) -> tuple[np.ndarray, np.ndarray]:
    ri = c.post("/v1/embeddings/images", json={"images": [b64(png(1)), b64(png(2))]})
    rt = c.post("/v1/embeddings/texts", json={"texts": LABELS, "templates": TEMPLATES})
    assert ri.status_code == rt.status_code == 200, (ri.text, rt.text)
    return np.array(ri.json()["embeddings"]), np.array(rt.json()["embeddings"])


def test_models_describes_the_siglip_bundle(client: TestClient, models: Path) -> None:
    m = client.get("/v1/models").json()
    manifest = current_bundle(models / "siglip").manifest
    assert m["architecture"]["family"] == "siglip"
    assert m["scoring"] == {"kind": "sigmoid", "logit_bias": manifest["scoring"]["logit_bias"]}
    assert m["logit_scale"] == pytest.approx(manifest["logit_scale"])


def test_multi_is_the_models_own_sigmoid_and_single_a_softmax(client: TestClient, models: Path) -> None:
    manifest = current_bundle(models / "siglip").manifest
    scale, bias = manifest["logit_scale"], manifest["scoring"]["logit_bias"]
    images, texts = features(client)
    cosine = images @ texts.T
    multi = classify(client, labels=LABELS, mode="multi")["results"]
    for i, result in enumerate(multi):
        for row in result["labels"]:
            j = LABELS.index(row["label"])
            assert row["cosine"] == pytest.approx(cosine[i, j], abs=1e-5)
            assert row["probability"] == pytest.approx(
                1 / (1 + np.exp(-(scale * cosine[i, j] + bias))), abs=1e-5
            )
    # one label alone keeps its probability: nothing is normalised over the labels sent
    alone = classify(client, labels=LABELS[:1], mode="multi")["results"][0]["labels"][0]["probability"]
    both = {x["label"]: x["probability"] for x in multi[0]["labels"]}
    assert alone == pytest.approx(both[LABELS[0]], abs=1e-6)
    single = classify(client, labels=LABELS)["results"]
    assert all(sum(x["probability"] for x in r["labels"]) == pytest.approx(1.0, abs=1e-4) for r in single)


def test_a_label_set_answers_like_the_same_labels_sent(client: TestClient) -> None:
    r = client.put("/v1/label-sets/colours", json={"labels": LABELS, "templates": TEMPLATES}, headers=ADMIN)
    assert r.status_code in (200, 201, 202), r.text
    by_set = classify(client, label_set="colours", mode="multi", templates=None)
    ad_hoc = classify(client, labels=LABELS, mode="multi")
    for a, b in zip(by_set["results"], ad_hoc["results"], strict=True):
        assert [x["label"] for x in a["labels"]] == [x["label"] for x in b["labels"]]
        np.testing.assert_allclose(
            [x["probability"] for x in a["labels"]], [x["probability"] for x in b["labels"]], atol=1e-6
        )


def test_a_calibrated_set_answers_its_fitted_sigmoid(client: TestClient) -> None:
    """Calibration over HTTP refits each label's sigmoid of the model's own logit, and multi answers
    with it; the labels are what the model itself answers, so the fit has right answers to keep."""
    images = [png(s) for s in range(3, 15)]
    feats = np.array(
        client.post("/v1/embeddings/images", json={"images": [b64(x) for x in images]}).json()["embeddings"]
    )
    _, texts = features(client)
    answered = (feats @ texts.T).argmax(axis=1)
    assert len(set(answered)) >= 2, answered  # calibration needs images of two labels
    body = [{"image": b64(x), "label": LABELS[j]} for x, j in zip(images, answered, strict=True)]
    r = client.post("/v1/label-sets/colours/calibration", json={"images": body}, headers=ADMIN)
    assert r.status_code == 200, r.text
    fit = client.get("/v1/label-sets/colours").json()["calibration"]
    assert fit["status"] == "fitted" and fit["figures"]["multi_on"] == "cosine"
    a, b = np.array(fit["a"]), np.array(fit["b"])
    got = classify(client, label_set="colours", mode="multi", templates=None)
    assert got["calibration"]["status"] == "fitted"
    cosine = features(client)[0] @ texts.T
    for i, result in enumerate(got["results"]):
        for row in result["labels"]:
            j = LABELS.index(row["label"])
            assert row["probability"] == pytest.approx(
                1 / (1 + np.exp(-(a[j] * cosine[i, j] + b[j]))), abs=1e-5
            )


def test_hot_reload_swaps_in_a_new_siglip_version(
    client: TestClient, models: Path, siglip_models: Path
) -> None:
    before, _ = features(client)
    import_siglip(siglip_models.parent / "hf-v2", models / "siglip", "v2")
    r = client.post("/v1/admin/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["changed"] and r.json()["version"] == "v2", r.text
    assert client.get("/v1/models").json()["version"] == "v2"
    after, _ = features(client)
    assert np.abs(after - before).max() > 1e-3  # the new weights answer
    again = classify(client, label_set="colours", mode="multi", templates=None)  # rebuilt for v2
    assert again["results"] and again["calibration"]["status"] == "stale"  # fitted on v1: not used
