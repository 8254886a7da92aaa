"""Hot reload: a new version published under CURRENT is served without a restart; a broken one is
refused and the old model keeps serving; admin routes are off without a token."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from model.bundle.format import current_bundle, set_current
from model.data.synthetic import SyntheticShapes
from tests.conftest import DEFAULT_MODEL_DIR

AUTH = {"Authorization": "Bearer s3cret-token"}


def publish_copy(model_dir: Path, version: str, corrupt: bool = False) -> None:
    """Publish a copy of the default bundle under a new version (optionally with a damaged encoder)."""
    src = current_bundle(DEFAULT_MODEL_DIR).path
    dst = model_dir / version
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["version"] = version
    (dst / "manifest.json").write_text(json.dumps(manifest))
    if corrupt:
        with (dst / "image_encoder.onnx").open("r+b") as f:
            f.seek(1000)
            f.write(b"\x00" * 64)
    set_current(model_dir, version)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} has no CURRENT: run `make setup` first (make test does)")
    publish_copy(tmp_path / "m", "v1")
    return tmp_path


def request(c: TestClient, model: str | None = None) -> str:
    buf = io.BytesIO()
    SyntheticShapes(64, seed=1, split="all", length=1)[0].image.save(buf, format="PNG")
    r = c.post(
        "/v1/classify",
        files=[("image", ("x.png", buf.getvalue(), "image/png"))],
        data={"labels": ["red circle", "blue square"], **({} if model is None else {"model": model})},
    )
    assert r.status_code == 200, r.text
    assert model is None or r.json()["model"]["name"] == model
    return str(r.json()["model"]["version"])


def test_admin_reload_swaps_and_refuses_broken_bundles(models: Path) -> None:
    s = Settings(
        models_dir=models, model_name="m", device="cpu", reload_interval_s=0, admin_token="s3cret-token"
    )
    with TestClient(create_app(s)) as c:
        assert request(c) == "v1"
        unchanged = {"changed": False, "version": "v1"}
        assert c.post("/v1/admin/reload", headers=AUTH).json() == {**unchanged, "models": {"m": unchanged}}
        publish_copy(models / "m", "v2")
        swapped = {"changed": True, "version": "v2"}
        assert c.post("/v1/admin/reload", headers=AUTH).json() == {**swapped, "models": {"m": swapped}}
        assert request(c) == "v2"
        publish_copy(models / "m", "v3", corrupt=True)
        r = c.post("/v1/admin/reload", headers=AUTH)
        assert r.status_code == 409 and "image_encoder.onnx" in r.json()["error"]["message"]
        assert request(c) == "v2"  # the old model keeps serving
        m = c.get("/v1/models").json()
        assert m["version"] == "v2" and "v3 refused" in m["reload_error"]
        assert c.get("/readyz").status_code == 200


def test_admin_routes_need_a_configured_token(models: Path) -> None:
    off = Settings(models_dir=models, model_name="m", device="cpu", reload_interval_s=0)
    with TestClient(create_app(off)) as c:
        r = c.post("/v1/admin/reload", headers=AUTH)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
    on = Settings(
        models_dir=models, model_name="m", device="cpu", reload_interval_s=0, admin_token="s3cret-token"
    )
    with TestClient(create_app(on)) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cre"}):
            r = c.post("/v1/admin/reload", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_watcher_picks_up_a_new_version_with_no_failed_request(models: Path) -> None:
    s = Settings(models_dir=models, model_name="m", device="cpu", reload_interval_s=0.1)
    with TestClient(create_app(s)) as c:
        seen = [request(c)]
        publish_copy(models / "m", "v2")
        deadline = time.monotonic() + 30
        while seen[-1] != "v2" and time.monotonic() < deadline:
            seen.append(request(c))  # every request must succeed while the swap happens
        assert seen[0] == "v1" and seen[-1] == "v2"


def test_a_model_published_after_start_makes_the_service_ready(tmp_path: Path) -> None:
    s = Settings(models_dir=tmp_path, model_name="m", device="cpu", reload_interval_s=0.1)
    with TestClient(create_app(s)) as c:
        assert c.get("/readyz").status_code == 503
        (tmp_path / "m").mkdir()
        publish_copy(tmp_path / "m", "v1")
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert request(c) == "v1"


def test_publishing_under_concurrent_load_fails_no_request(models: Path) -> None:
    """Four clients keep requests in flight while v2 and then a corrupt v3 are published: every request
    succeeds, answers move to v2, and the corrupt v3 never serves."""
    s = Settings(models_dir=models, model_name="m", device="cpu", reload_interval_s=0.05, max_wait_ms=5)
    stop = threading.Event()
    answers: list[tuple[float, str]] = []
    failures: list[str] = []

    def client_loop(c: TestClient) -> None:
        while not stop.is_set():
            try:
                answers.append((time.monotonic(), request(c)))
            except AssertionError as e:  # request() asserts 200
                failures.append(str(e))

    with TestClient(create_app(s)) as c:
        threads = [threading.Thread(target=client_loop, args=(c,)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        publish_copy(models / "m", "v2")
        deadline = time.monotonic() + 30
        while c.get("/v1/models").json()["version"] != "v2" and time.monotonic() < deadline:
            time.sleep(0.05)
        switched = time.monotonic()
        time.sleep(0.3)
        publish_copy(models / "m", "v3", corrupt=True)
        while "v3 refused" not in (c.get("/v1/models").json()["reload_error"] or ""):
            assert time.monotonic() < deadline, "the corrupt v3 was never tried"
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    versions = [v for _, v in answers]
    assert versions[0] == "v1" and "v2" in versions and "v3" not in versions
    late = [v for t, v in answers if t > switched + 0.1]  # answered after the swap: new model only
    assert late and set(late) == {"v2"}


def test_two_models_are_served_and_each_reloads_on_its_own_under_load(models: Path) -> None:
    """Two real bundles at once (m, and n: a copy); four clients on both while n gets v2: no request
    fails, n's answers move to v2 and m's stay on v1; each shows the memory its load added."""
    publish_copy(models / "n", "v1")
    s = Settings(models_dir=models, models="m,n", device="cpu", reload_interval_s=0.05, max_wait_ms=5)
    stop = threading.Event()
    answers: list[tuple[str, float, str]] = []
    failures: list[str] = []

    def client_loop(c: TestClient, model: str) -> None:
        while not stop.is_set():
            try:
                answers.append((model, time.monotonic(), request(c, model)))
            except AssertionError as e:
                failures.append(str(e))

    with TestClient(create_app(s)) as c:
        listed = c.get("/v1/models").json()["models"]
        assert [(x["name"], x["version"]) for x in listed] == [("m", "v1"), ("n", "v1")]
        assert listed[0]["memory"]["rss_growth_bytes"] > 0  # the first load adds sessions and arenas
        threads = [threading.Thread(target=client_loop, args=(c, m)) for m in ("m", "n", "m", "n")]
        for t in threads:
            t.start()
        time.sleep(0.3)
        publish_copy(models / "n", "v2")
        deadline = time.monotonic() + 30
        while c.get("/v1/models").json()["models"][1]["version"] != "v2":
            assert time.monotonic() < deadline, "n never moved to v2"
            time.sleep(0.05)
        switched = time.monotonic()
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert c.get("/readyz").status_code == 200
    assert not failures, failures[:3]
    late = {(m, v) for m, t, v in answers if t > switched + 0.1}
    assert late == {("m", "v1"), ("n", "v2")}
    assert {v for m, _, v in answers if m == "m"} == {"v1"}  # m was never reloaded
