"""The HTTP API through FastAPI's TestClient (lifespan included): the routes and their errors over the
fake encoder (tests/fakes.py), and what the default model answers over HTTP."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from model.data.synthetic import SyntheticShapes, all_classes, class_name
from tests.conftest import DEFAULT_MODEL_DIR
from tests.fakes import fake_app

CLASSES = [class_name(*c) for c in all_classes()]


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def settings(**kw: object) -> Settings:
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} has no CURRENT: run `make setup` first (make test does)")
    return Settings(models_dir=DEFAULT_MODEL_DIR.parent, model_name="default", device="cpu", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The routes over the fake encoder: no trained bundle needed."""
    app = fake_app(tmp_path_factory.mktemp("api"), max_labels_per_request=50, max_upload_bytes=64 * 1024)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def real_client() -> Iterator[TestClient]:
    """The default model, for what only a trained model can show."""
    with TestClient(create_app(settings(max_labels_per_request=50, max_upload_bytes=64 * 1024))) as c:
        yield c


def classify(client: TestClient, images: list[bytes], labels: list[str] | str, **form: str) -> dict:
    files = [("image", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    data: dict[str, object] = {"labels": labels, **form}
    r = client.post("/v1/classify", files=files, data=data)
    assert r.status_code == 200, r.text
    return r.json()


def test_held_out_and_seen_images_are_classified_over_http(real_client: TestClient) -> None:
    client = real_client
    held = SyntheticShapes(64, seed=4242, split="heldout", length=12)
    seen = SyntheticShapes(64, seed=4242, split="seen", length=12)
    for data, need in ((held, 10), (seen, 12)):
        body = classify(client, [png(s.image) for s in data], CLASSES, templates="synthetic", top_k="3")
        top = [r["labels"][0]["label"] for r in body["results"]]
        truth = [s.label for s in data]
        assert sum(t == p for t, p in zip(truth, top, strict=True)) >= need, list(
            zip(truth, top, strict=True)
        )
    assert body["model"]["name"] == "default" and body["model"]["version"]
    assert set(body["timing_ms"]) >= {"decode_ms", "encode_ms", "total_ms"}


def test_scores_are_consistent_and_label_order_does_not_matter(client: TestClient) -> None:
    img = png(SyntheticShapes(64, seed=7, split="all", length=1)[0].image)
    labels = CLASSES[:10]
    a = classify(client, [img], labels, top_k="10")["results"][0]["labels"]
    b = classify(client, [img], json.dumps(labels[::-1]), top_k="10")["results"][0]["labels"]
    assert [x["cosine"] for x in a] == sorted((x["cosine"] for x in a), reverse=True)
    assert sum(x["probability"] for x in a) == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0 <= x["cosine"] <= 1.0 for x in a)
    by_label = {x["label"]: x for x in b}
    for x in a:
        assert by_label[x["label"]]["cosine"] == pytest.approx(x["cosine"], abs=1e-6)
        assert by_label[x["label"]]["probability"] == pytest.approx(x["probability"], abs=1e-6)


def test_second_request_with_the_same_labels_encodes_no_text(client: TestClient) -> None:
    img = png(SyntheticShapes(64, seed=8, split="all", length=1)[0].image)
    labels = [f"object number {i}" for i in range(40)]
    classify(client, [img], labels)
    before = client.get("/v1/models").json()["label_cache"]
    classify(client, [img], labels[::-1])
    after = client.get("/v1/models").json()["label_cache"]
    assert after["misses"] == before["misses"] and after["hits"] == before["hits"] + 40


def error(
    client: TestClient, status: int, code: str, files: list | None = None, data: dict | None = None
) -> str:
    img = png(SyntheticShapes(64, seed=1, split="all", length=1)[0].image)
    files = [("image", ("x.png", img, "image/png"))] if files is None else files
    r = client.post("/v1/classify", files=files, data={"labels": ["cat", "dog"]} if data is None else data)
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code and body["message"]
    return str(body["message"])


def post(client: TestClient, data: dict) -> Any:
    img = png(SyntheticShapes(64, seed=1, split="all", length=1)[0].image)
    return client.post("/v1/classify", files=[("image", ("x.png", img, "image/png"))], data=data)


def test_bad_requests_get_a_clear_4xx(client: TestClient) -> None:
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, format="ICO")
    error(client, 415, "unsupported_format", files=[("image", ("x.ico", ico.getvalue(), "image/x-icon"))])
    error(client, 422, "invalid_image", files=[("image", ("x.jpg", b"just some text", "image/jpeg"))])
    error(client, 422, "invalid_image", files=[("image", ("x.png", b"", "image/png"))])
    assert "image" in error(client, 422, "missing_image", files=[], data={"labels": "cat"})
    big = png(Image.effect_noise((256, 256), 50).convert("RGB"))
    error(client, 413, "upload_too_large", files=[("image", ("big.png", big, "image/png"))])
    error(client, 422, "invalid_labels", data={"labels": ["cat", "  "]})
    error(client, 422, "invalid_labels", data={"labels": "[1, 2]"})
    error(client, 422, "invalid_labels", data={"labels": "[not json"})
    error(client, 422, "invalid_labels", data={"labels": ["ca\x00t", "dog"]})
    assert "'cat'" in error(client, 422, "duplicate_labels", data={"labels": ["cat", "cat"]})
    error(client, 422, "too_many_labels", data={"labels": [f"l{i}" for i in range(51)]})
    assert "zebra" in error(client, 422, "label_too_long", data={"labels": ["cat", "zebra " * 100]})
    assert "klingon" in error(
        client, 422, "invalid_templates", data={"labels": ["a", "b"], "templates": "klingon"}
    )
    error(client, 422, "invalid_templates", data={"labels": ["a", "b"], "templates": '["no placeholder"]'})
    for k in ("0", "-3", "many", "1.5"):
        error(client, 422, "invalid_top_k", data={"labels": ["a", "b"], "top_k": k})
    huge = post(client, {"labels": ["a", "b"], "top_k": "10000000"})  # more than there are: all of them
    assert huge.status_code == 200 and len(huge.json()["results"][0]["labels"]) == 2
    assert client.get("/healthz").json() == {"status": "ok"}  # still healthy afterwards


def test_too_many_images(client: TestClient) -> None:
    img = png(Image.new("RGB", (8, 8)))
    error(
        client, 413, "too_many_images", files=[("image", (f"{i}.png", img, "image/png")) for i in range(17)]
    )


def test_health_ready_and_models(real_client: TestClient) -> None:
    client = real_client
    assert client.get("/readyz").json() == {"status": "ready"}
    m = client.get("/v1/models").json()
    assert m["name"] == "default" and m["architecture"]["embed_dim"] == 128
    assert m["provider"] == "CPUExecutionProvider" and len(m["sha256"]) == 64
    assert m["eval"] is None or m["eval"]["heldout_top1"] >= 0.9
    assert client.get("/nope").json()["error"]["code"] == "not_found"


def test_without_a_model_the_service_is_alive_but_not_ready(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(models_dir=tmp_path, model_name="missing"))) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert (
            r.status_code == 503
            and "CURRENT is missing" in r.json()["error"]["detail"]["not_ready"]["missing"]
        )
        r = c.post("/v1/classify", files=[("image", ("x.png", b"x", "image/png"))], data={"labels": ["a"]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROSHOT_ALLOWED_FORMATS", "jpeg, png")
    monkeypatch.setenv("ZEROSHOT_MAX_IMAGES_PER_REQUEST", "4")
    s = Settings()
    assert s.allowed_formats == frozenset({"JPEG", "PNG"}) and s.max_images_per_request == 4
    monkeypatch.setenv("ZEROSHOT_ALLOWED_FORMATS", '["webp"]')
    assert Settings().allowed_formats == frozenset({"WEBP"})
    monkeypatch.setenv("ZEROSHOT_MAX_IMAGES_PER_REQUEST", "0")
    with pytest.raises(ValueError, match="max_images_per_request"):
        Settings()


def test_an_empty_admin_token_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROSHOT_ADMIN_TOKEN", "")
    assert Settings().admin_token is None
    monkeypatch.setenv("ZEROSHOT_ADMIN_TOKEN", "short")
    with pytest.raises(ValueError, match="at least 8"):
        Settings()
