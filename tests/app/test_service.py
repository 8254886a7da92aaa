"""The service's HTTP features beyond one classify call: JSON bodies, label sets, embeddings, metrics,
API keys, the label cache, the batcher under concurrent requests, and overload. Route behaviour runs
over the fake encoder (tests/fakes.py); what needs a trained model runs over the default one."""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.main import create_app
from app.settings import Settings
from model.data.synthetic import SyntheticShapes
from tests.app.test_api import CLASSES, png
from tests.fakes import fake_runtime, fake_settings
from tests.servers import service_settings

ADMIN = {"Authorization": "Bearer admin-token-123"}
SEEN = SyntheticShapes(64, seed=7, split="seen", length=16)


def make_settings(tmp: Path, **kw: Any) -> Settings:
    return service_settings(tmp, **{"admin_token": "admin-token-123", **kw})


def make_fake(tmp: Path, **kw: Any) -> Settings:
    """Settings for the fake encoder (tests/fakes.py): no trained bundle needed."""
    return fake_settings(tmp, **{"admin_token": "admin-token-123", **kw})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(make_fake(tmp_path_factory.mktemp("svc")), fake_runtime)) as c:
        yield c


@pytest.fixture(scope="module")
def real_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path_factory.mktemp("svc-real")))) as c:
        yield c


def multipart(c: TestClient, imgs: list[bytes], labels: list[str], **form: str) -> Any:
    files = [("image", (f"{i}.png", b, "image/png")) for i, b in enumerate(imgs)]
    return c.post("/v1/classify", files=files, data={"labels": labels, **form})


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def test_json_with_base64_images_matches_multipart(client: TestClient) -> None:
    imgs = [png(SEEN[i].image) for i in range(3)]
    labels = CLASSES[:12]
    a = multipart(client, imgs, labels, templates="synthetic", top_k="12").json()
    body = {
        "images": [b64(imgs[0]), "data:image/png;base64," + b64(imgs[1]), b64(imgs[2])],
        "labels": labels,
        "templates": "synthetic",
        "top_k": 12,
    }
    r = client.post("/v1/classify", json=body)
    assert r.status_code == 200, r.text
    for ra, rb in zip(a["results"], r.json()["results"], strict=True):
        assert [x["label"] for x in ra["labels"]] == [x["label"] for x in rb["labels"]]
        np.testing.assert_allclose([x["cosine"] for x in ra["labels"]], [x["cosine"] for x in rb["labels"]])


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ({"json": {"images": ["%%%"], "labels": ["a"]}}, 422, "invalid_base64"),
        ({"json": {"images": [], "labels": ["a"]}}, 422, "missing_image"),
        ({"json": {"images": [b64(b"x")], "labels": ["a"], "colour": 1}}, 422, "invalid_request"),
        ({"json": {"images": [b64(b"x")], "labels": "a"}}, 422, "invalid_request"),
        ({"json": {"images": [b64(b"not an image")], "labels": ["a"]}}, 422, "invalid_image"),
        ({"json": {"images": [b64(b"x")]}}, 422, "invalid_labels"),
        ({"json": {"images": [b64(b"x")], "labels": ["a"], "label_set": "s"}}, 422, "invalid_request"),
        ({"json": {"images": [b64(b"x")], "label_set": "no-such-set"}}, 404, "label_set_not_found"),
        ({"json": {"images": [b64(b"x")], "label_set": "../etc"}}, 422, "invalid_label_set_name"),
        ({"json": {"images": [b64(b"x")] * 17, "labels": ["a"]}}, 413, "too_many_images"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        (
            {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}},
            400,
            "invalid_multipart",
        ),
    ],
)
def test_bad_json_and_bodies_get_clear_errors(
    client: TestClient, kwargs: dict, status: int, code: str
) -> None:
    r = client.post("/v1/classify", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_an_oversized_body_is_refused_before_it_is_read(tmp_path: Path) -> None:
    s = make_fake(tmp_path, max_upload_bytes=4096, max_images_per_request=1, max_queue=8)
    with TestClient(create_app(s, fake_runtime)) as c:
        r = c.post(
            "/v1/classify", content=b"0" * 4 * 1024 * 1024, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
            for _ in range(64):
                yield b"0" * 65536

        r = c.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert c.get("/readyz").status_code == 200


def test_label_sets_register_persist_and_survive_a_restart(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    labels = CLASSES
    img = png(SEEN[0].image)
    with TestClient(create_app(s)) as c:
        assert c.put("/v1/label-sets/shapes", json={"labels": labels}).status_code == 401
        r = c.put("/v1/label-sets/shapes", json={"labels": labels, "templates": "synthetic"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["labels"] == 36 and r.json()["embeddings"]["source"] == "encoded"
        assert c.get("/v1/label-sets").json()["label_sets"][0]["name"] == "shapes"
        shown = c.get("/v1/label-sets/shapes").json()
        assert shown["labels"] == labels and shown["template_set"] == "synthetic"
        by_set = c.post(
            "/v1/classify", files=[("image", ("a.png", img, "image/png"))], data={"label_set": "shapes"}
        )
        direct = multipart(c, [img], labels, templates="synthetic")
        assert by_set.status_code == 200, by_set.text
        assert by_set.json()["results"] == direct.json()["results"]
        assert by_set.json()["results"][0]["labels"][0]["label"] == SEEN[0].label
    assert list((tmp_path / "label-sets").glob("shapes.*.npy"))
    with TestClient(create_app(s)) as c:  # a restart loads the embeddings from disk
        r = c.post("/v1/classify", json={"images": [b64(img)], "label_set": "shapes"})
        assert r.json()["results"] == by_set.json()["results"]
        assert c.get("/v1/models").json()["label_cache"]["encoded_prompts"] == 0
        assert c.delete("/v1/label-sets/shapes", headers=ADMIN).json() == {"deleted": "shapes"}
        assert c.get("/v1/label-sets/shapes").status_code == 404
        assert c.delete("/v1/label-sets/shapes", headers=ADMIN).status_code == 404
        assert not list((tmp_path / "label-sets").glob("shapes*"))
        for bad in ({"labels": []}, {"labels": ["a", "a"]}, {"labels": ["a"], "templates": "klingon"}):
            r = c.put("/v1/label-sets/x", json=bad, headers=ADMIN)
            assert r.status_code == 422, r.text
        assert c.put("/v1/label-sets/bad.name", json={"labels": ["a"]}, headers=ADMIN).status_code == 422


def test_label_set_changes_are_off_without_an_admin_token(tmp_path: Path) -> None:
    with TestClient(create_app(make_fake(tmp_path, admin_token=None), fake_runtime)) as c:
        r = c.put("/v1/label-sets/x", json={"labels": ["a"]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
        assert c.get("/v1/label-sets").json() == {"label_sets": []}


def test_embeddings_agree_with_classify(real_client: TestClient) -> None:
    client = real_client
    img = png(SEEN[1].image)
    ri = client.post("/v1/embeddings/images", files=[("image", ("a.png", img, "image/png"))])
    rj = client.post("/v1/embeddings/images", json={"images": [b64(img)]})
    assert ri.status_code == rj.status_code == 200, ri.text
    im = np.array(ri.json()["embeddings"])
    np.testing.assert_allclose(im, rj.json()["embeddings"], atol=1e-6)
    assert im.shape == (1, 128) and ri.json()["dim"] == 128
    np.testing.assert_allclose(np.linalg.norm(im, axis=1), 1, atol=1e-5)
    labels = CLASSES[:5]
    rt = client.post("/v1/embeddings/texts", json={"texts": labels, "templates": "synthetic"})
    tx = np.array(rt.json()["embeddings"])
    cos = (im @ tx.T)[0]
    ranked = multipart(client, [img], labels, templates="synthetic").json()["results"][0]["labels"]
    for r in ranked:
        assert r["cosine"] == pytest.approx(cos[labels.index(r["label"])], abs=1e-5)
    raw = client.post("/v1/embeddings/texts", json={"texts": ["a red circle", "a blue square"]}).json()
    assert np.array(raw["embeddings"]).shape == (2, 128)
    assert client.post("/v1/embeddings/texts", json={"texts": []}).status_code == 422
    assert client.post("/v1/embeddings/texts", json={"texts": ["x " * 100]}).json()["error"]["code"] == (
        "label_too_long"
    )
    assert client.post("/v1/embeddings/texts", data={"texts": "a"}).status_code == 415


def test_the_second_request_with_the_same_labels_encodes_no_text(client: TestClient) -> None:
    labels = [f"shape number {i}" for i in range(100)]
    img = png(SEEN[2].image)

    def cache() -> dict:
        return dict(client.get("/v1/models").json()["label_cache"])

    before = cache()
    multipart(client, [img], labels)
    mid = cache()
    assert mid["encoded_prompts"] - before["encoded_prompts"] == 100  # 100 labels x 1 template
    multipart(client, [img], labels)
    multipart(client, [img], list(reversed(labels)))  # the same labels in another order: per-label hits
    after = cache()
    assert after["encoded_prompts"] == mid["encoded_prompts"]
    assert after["hits"] - mid["hits"] == 200 and after["misses"] == mid["misses"]


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    picks=st.lists(st.sampled_from(CLASSES), min_size=2, max_size=12, unique=True),
    seed=st.integers(0, 2**16),
    which=st.integers(0, 15),
)
def test_scores_are_consistent(client: TestClient, picks: list[str], seed: int, which: int) -> None:
    img = png(SEEN[which].image)
    a = multipart(client, [img], picks, templates="synthetic", top_k=str(len(picks))).json()
    shuffled = list(np.random.default_rng(seed).permutation(picks))
    b = multipart(client, [img], shuffled, templates="synthetic", top_k=str(len(picks))).json()
    la, lb = a["results"][0]["labels"], b["results"][0]["labels"]
    cos = [x["cosine"] for x in la]
    assert all(-1 <= c <= 1 for c in cos) and cos == sorted(cos, reverse=True)
    assert sum(x["probability"] for x in la) == pytest.approx(1, abs=1e-5)
    assert {x["label"]: x["cosine"] for x in la} == pytest.approx(
        {x["label"]: x["cosine"] for x in lb}, abs=1e-6
    )
    top2 = multipart(client, [img], picks, templates="synthetic", top_k="2").json()["results"][0]["labels"]
    assert [x["label"] for x in top2] == [x["label"] for x in la[:2]]


def test_metrics_count_requests_batches_and_the_model(client: TestClient) -> None:
    multipart(client, [png(SEEN[3].image)], ["a", "b"])
    client.post("/v1/classify", json={"images": ["%%%"], "labels": ["a"]})
    text = client.get("/metrics").text
    assert 'zeroshot_requests_total{method="POST",route="/v1/classify",status="200"}' in text
    assert 'zeroshot_requests_total{method="POST",route="/v1/classify",status="422"}' in text
    assert "zeroshot_batch_size_count" in text and "zeroshot_request_duration_seconds_bucket" in text
    assert (
        'zeroshot_model_info{model="default",name="default"' in text
        and 'zeroshot_queue_depth{model="default"} 0.0' in text
    )
    assert "zeroshot_label_cache_hits_total" in text and "zeroshot_label_cache_bytes" in text


def test_api_keys_guard_v1_but_not_health_or_metrics(tmp_path: Path) -> None:
    s = make_fake(tmp_path, api_keys="key-one,key-two")
    assert s.api_keys == frozenset({"key-one", "key-two"})
    img = png(SEEN[0].image)
    with TestClient(create_app(s, fake_runtime)) as c:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "key-on"}):
            r = c.post(
                "/v1/classify",
                files=[("image", ("a.png", img, "image/png"))],
                data={"labels": ["a"]},
                headers=headers,
            )
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert c.get("/v1/models", headers=headers).status_code == 401
        for headers in ({"Authorization": "Bearer key-two"}, {"X-API-Key": "key-one"}, ADMIN):
            r = c.post(
                "/v1/classify",
                files=[("image", ("a.png", img, "image/png"))],
                data={"labels": ["a"]},
                headers=headers,
            )
            assert r.status_code == 200, r.text
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    s = make_settings(tmp_path, max_wait_ms=250, max_batch=16)
    data = SyntheticShapes(64, seed=11, split="seen", length=8)
    imgs = [png(d.image) for d in data]
    with TestClient(create_app(s)) as c:
        alone = [multipart(c, [b], CLASSES, templates="synthetic").json()["results"][0] for b in imgs]
        batches_before = c.get("/v1/models").json()["batcher"]["batches"]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda b: multipart(c, [b], CLASSES, templates="synthetic"), imgs))
        assert all(r.status_code == 200 for r in together)
        for a, t, d in zip(alone, together, data, strict=True):
            got = t.json()["results"][0]
            assert [x["label"] for x in got["labels"]] == [x["label"] for x in a["labels"]]
            np.testing.assert_allclose(
                [x["cosine"] for x in got["labels"]], [x["cosine"] for x in a["labels"]], atol=1e-5
            )
            assert got["labels"][0]["label"] == d.label
        b = c.get("/v1/models").json()["batcher"]
        assert b["largest_batch"] > 1 and b["batches"] - batches_before < 8


def gate_encoder(c: TestClient, entered: threading.Event | None = None) -> threading.Event:
    """Hold the served model's image encoder until the returned event is set; `entered` is set once
    a batch is being held (its composition is then final)."""
    rt = c.app.state.engine.models.default.holder.runtime  # type: ignore[attr-defined]
    gate, real = threading.Event(), rt.encode_images

    def gated(pixels: np.ndarray) -> np.ndarray:
        if entered is not None:
            entered.set()
        gate.wait(30)
        return real(pixels)

    rt.encode_images = gated
    return gate


def test_a_full_queue_answers_503_with_retry_after_and_stays_healthy(tmp_path: Path) -> None:
    s = make_fake(tmp_path, max_queue=2, max_images_per_request=2, retry_after_s=3)
    img = png(SEEN[0].image)
    with TestClient(create_app(s, fake_runtime)) as c:
        batcher = c.app.state.engine.models.default.batcher  # type: ignore[attr-defined]
        gate = gate_encoder(c)
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(multipart, c, [img], ["a", "b"]) for _ in range(2)]
            deadline = time.monotonic() + 10
            while batcher.pending < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert batcher.pending == 2  # both admitted: the queue is full
            r = multipart(c, [img], ["a", "b"])
            assert r.status_code == 503 and r.headers["retry-after"] == "3"
            assert r.json()["error"]["code"] == "overloaded"
            assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
            gate.set()
            assert all(f.result().status_code == 200 for f in waiting)
        assert multipart(c, [img], ["a", "b"]).status_code == 200
        assert batcher.pending == 0
        assert 'zeroshot_queue_rejected_total{model="default"} 1.0' in c.get("/metrics").text


def test_a_request_past_its_deadline_is_dropped_with_503(tmp_path: Path) -> None:
    s = make_fake(tmp_path, queue_timeout_s=0.2)
    img = png(SEEN[0].image)
    with TestClient(create_app(s, fake_runtime)) as c:
        batcher = c.app.state.engine.models.default.batcher  # type: ignore[attr-defined]
        entered = threading.Event()
        gate = gate_encoder(c, entered)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(multipart, c, [img], ["a", "b"])  # occupies the encoder
            # Once its batch is in the encoder, `late` cannot join it (a request that arrives within
            # max_wait_ms of `first` would otherwise be batched with it and answered in time).
            assert entered.wait(10)
            late = pool.submit(multipart, c, [img], ["a", "b"])  # queued behind it, then too late
            while batcher.pending < 2:
                time.sleep(0.01)
            time.sleep(0.4)
            gate.set()
            assert first.result().status_code == 200
            r = late.result()
        assert (
            r.status_code == 503
            and r.json()["error"]["code"] == "queue_timeout"
            and "retry-after" in r.headers
        )
        assert c.get("/v1/models").json()["batcher"]["expired"] == 1


def test_draining_makes_readyz_fail_first(tmp_path: Path) -> None:
    app = create_app(make_fake(tmp_path), fake_runtime)
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        app.state.engine.draining = True
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        assert c.get("/healthz").status_code == 200


def test_a_large_label_set_builds_in_the_background_with_progress_while_requests_are_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.runtime.label_cache")
    labels = [f"object number {i}" for i in range(1000)]
    img = png(SEEN[0].image)
    with TestClient(create_app(make_settings(tmp_path))) as c:
        r = c.put("/v1/label-sets/big", json={"labels": labels, "templates": "imagenet80"}, headers=ADMIN)
        # 80,000 prompts take seconds: accepted at once, with where to follow the build
        assert r.status_code == 202 and r.headers["location"] == "/v1/label-sets/big", r.text
        assert r.json()["status"] == "building" and r.json()["build"]["prompts_total"] == 80_000
        busy = c.post("/v1/classify", files={"image": ("a.png", img)}, data={"label_set": "big"})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "label_set_building"
        assert 1 <= int(busy.headers["retry-after"]) <= 60  # about the build's ETA
        small = multipart(c, [img], ["red circle", "blue square"])
        assert small.status_code == 200
        seen, deadline = [], time.monotonic() + 120
        while (view := c.get("/v1/label-sets/big").json())["status"] == "building":
            assert time.monotonic() < deadline
            seen.append(view["build"]["prompts_done"])
            time.sleep(0.05)
        assert view["status"] == "ready" and view["build"]["prompts_done"] == 80_000, view
        assert seen == sorted(seen) and any(0 < n < 80_000 for n in seen)  # progress, reported as it went
        assert len(seen) > 1  # the small request above was answered while the set was still building
        ok = c.post("/v1/classify", files={"image": ("a.png", img)}, data={"label_set": "big"})
        assert ok.status_code == 200 and len(ok.json()["results"][0]["labels"]) >= 1
        assert [v["status"] for v in c.get("/v1/label-sets").json()["label_sets"]] == ["ready"]
    assert "1000 labels x 80 templates: 80000/80000 prompts encoded" in caplog.text


def test_the_openapi_schema_describes_every_route_and_both_body_kinds(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method in [
        ("/v1/classify", "post"),
        ("/v1/embeddings/images", "post"),
        ("/v1/embeddings/texts", "post"),
        ("/v1/label-sets", "get"),
        ("/v1/label-sets/{name}", "put"),
        ("/v1/label-sets/{name}", "delete"),
        ("/v1/models", "get"),
        ("/v1/admin/reload", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths[path], (path, method)
    body = paths["/v1/classify"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert body["application/json"]["schema"]["examples"]
    ok = paths["/v1/classify"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/ClassifyResponse") and "ClassifyResponse" in spec["components"]["schemas"]
    assert "/" not in paths and client.get("/docs").status_code == 200


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`ZEROSHOT_{n.upper()}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"


def test_jpeg_draft_serves_large_photos_the_same_way(tmp_path: Path) -> None:
    img = SEEN[0].image.resize((640, 480))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    with TestClient(create_app(make_settings(tmp_path, jpeg_draft=True))) as c:
        r = c.post(
            "/v1/classify",
            files=[("image", ("a.jpg", buf.getvalue(), "image/jpeg"))],
            data={"labels": CLASSES, "templates": "synthetic"},
        )
        assert r.status_code == 200 and r.json()["results"][0]["labels"][0]["label"] == SEEN[0].label


def test_the_server_runs_numpy_blas_on_one_thread(tmp_path: Path) -> None:
    """OpenBLAS threads spin after a large label product and slow the image encoder twofold
    (bench/README.md), so the server's startup limits BLAS to one thread. Checked in a fresh
    interpreter: the limit is process-wide."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = f"""
import json
from threadpoolctl import threadpool_info
from fastapi.testclient import TestClient
from app.main import create_app
from tests.servers import service_settings
from pathlib import Path
import numpy as np
np.ones((4, 4)) @ np.ones((4, 4))
before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
with TestClient(create_app(service_settings(Path({str(tmp_path)!r})))) as c:
    assert c.get("/readyz").status_code == 200
    after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
print(json.dumps({{"before": before, "after": after}}))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["after"] and all(n == 1 for n in seen["after"]), seen
    assert len(seen["before"]) == len(seen["after"])
