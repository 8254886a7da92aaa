"""Label sets built in the background (app/runtime/set_builds.py): the previous version serves while a
replacement builds, a staged set left by a killed server is built at the next start, a failed build
says why, a DELETE stops a build, and a hot reload builds the registered sets before the swap."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.runtime.label_sets import LabelSetStore
from model.bundle.prompts import resolve_templates
from model.bundle.zeroshot import label_matrix
from tests.fakes import FakeEncoders, fake_runtime, fake_settings

TOKEN = "admin-token-123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
V1 = ["red circle", "blue square", "green star"]
V2 = ["yellow cross", "purple heart"]


class TextGate(FakeEncoders):
    """Once armed, text-encoder calls wait for `release` (only those with a prompt holding `only`, when
    set: not the warm-up's); with `fail`, they raise."""

    def __init__(self) -> None:
        super().__init__()
        self.armed, self.fail, self.only = False, False, ""
        self.entered, self.release = threading.Event(), threading.Event()

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None) -> Any:
        if self.fail and texts:
            raise RuntimeError("the text encoder broke")
        if self.armed and any(self.only in t for t in texts):
            self.entered.set()
            assert self.release.wait(20), "the test never released the text encoder"
        return super().encode_texts(texts, batch_size, pad_to)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def classify(c: TestClient, name: str) -> Any:
    return c.post("/v1/classify", files={"image": ("a.png", png())}, data={"label_set": name})


def labels_of(r: Any) -> set[str]:
    assert r.status_code == 200, r.text
    return {x["label"] for x in r.json()["results"][0]["labels"]}


def wait_status(c: TestClient, name: str, status: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (view := c.get(f"/v1/label-sets/{name}").json()).get("status") != status:
        assert time.monotonic() < deadline, view
        time.sleep(0.02)
    return view


def app_with(tmp: Path, enc: TextGate, **kw: Any) -> Any:
    return create_app(fake_settings(tmp, admin_token=TOKEN, **kw), enc.runtime_factory())


def test_a_replaced_set_serves_its_previous_version_until_the_new_one_is_built(tmp_path: Path) -> None:
    enc = TextGate()
    with TestClient(app_with(tmp_path, enc, label_set_wait_s=0.2)) as c:
        assert c.put("/v1/label-sets/s", json={"labels": V1}, headers=ADMIN).json()["status"] == "ready"
        enc.armed = True
        r = c.put("/v1/label-sets/s", json={"labels": V2}, headers=ADMIN)
        assert r.status_code == 202 and r.json()["status"] == "building", r.text
        assert enc.entered.wait(10)
        assert labels_of(classify(c, "s")) == set(V1)  # the previous version, whole, meanwhile
        view = c.get("/v1/label-sets/s").json()
        assert view["status"] == "building" and view["labels"] == V1 and view["staged"]["labels"] == len(V2)
        enc.release.set()
        view = wait_status(c, "s", "ready")
        assert view["labels"] == V2 and view["staged"] is None
        assert labels_of(classify(c, "s")) == set(V2)
    assert not list((tmp_path / "label-sets" / ".pending").glob("*.json"))


def test_a_new_set_is_refused_with_retry_after_until_built(tmp_path: Path) -> None:
    enc = TextGate()
    with TestClient(app_with(tmp_path, enc, label_set_wait_s=0)) as c:
        enc.armed = True  # after the warm-up
        assert c.put("/v1/label-sets/s", json={"labels": V1}, headers=ADMIN).status_code == 202
        r = classify(c, "s")
        assert r.status_code == 503 and r.json()["error"]["code"] == "label_set_building"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert [v["status"] for v in c.get("/v1/label-sets").json()["label_sets"]] == ["building"]
        enc.release.set()
        wait_status(c, "s", "ready")
        assert labels_of(classify(c, "s")) == set(V1)


def test_put_with_wait_answers_when_built(tmp_path: Path) -> None:
    enc = TextGate()
    with TestClient(app_with(tmp_path, enc, label_set_wait_s=0)) as c:
        enc.armed = True  # after the warm-up
        threading.Timer(0.3, enc.release.set).start()
        r = c.put("/v1/label-sets/s?wait=true", json={"labels": V1}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["status"] == "ready", r.text
        assert r.json()["embeddings"]["source"] == "encoded"


def test_a_staged_set_left_by_a_killed_server_is_built_at_the_next_start(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path, admin_token=TOKEN)
    store = LabelSetStore(settings.label_sets_dir)
    templates = resolve_templates("synthetic")
    store.stage(store.define("s", V1, templates, "synthetic"))  # what a server killed mid-build leaves
    (settings.label_sets_dir / "s.0123456789abcdef.0123456789abcdef.npy.tmp-1").write_bytes(b"half")
    enc = TextGate()
    with TestClient(create_app(settings, enc.runtime_factory())) as c:
        view = wait_status(c, "s", "ready")
        assert view["labels"] == V1
        r = classify(c, "s")
        rt = fake_runtime(settings, "default", "fake-1")
        expected = label_matrix(FakeEncoders(), V1, templates)  # the whole matrix, as a fresh encode gives
        stored = store.load_matrix(store.get("s"), rt.sha, rt.encoders.embed_dim)
        assert stored is not None and np.allclose(stored, expected, atol=1e-6)
        assert labels_of(r) == set(V1)


def test_a_failed_build_says_why_and_the_set_is_not_served(tmp_path: Path) -> None:
    enc = TextGate()
    with TestClient(app_with(tmp_path, enc, label_set_wait_s=5)) as c:
        enc.fail = True
        r = c.put("/v1/label-sets/s", json={"labels": V1}, headers=ADMIN)
        assert r.status_code == 409 and r.json()["error"]["code"] == "label_set_build_failed", r.text
        assert "the text encoder broke" in r.json()["error"]["message"]
        view = c.get("/v1/label-sets/s").json()
        assert view["status"] == "failed" and view["build"]["error"]["code"] == "label_set_build_failed"
        r = classify(c, "s")
        assert r.status_code == 409 and r.json()["error"]["code"] == "label_set_build_failed"
        enc.fail = False  # registering it again, once the cause is gone, works
        assert c.put("/v1/label-sets/s", json={"labels": V1}, headers=ADMIN).json()["status"] == "ready"
        assert labels_of(classify(c, "s")) == set(V1)


def test_delete_stops_a_build_and_leaves_nothing(tmp_path: Path) -> None:
    enc = TextGate()
    with TestClient(app_with(tmp_path, enc, label_set_wait_s=0)) as c:
        enc.armed = True  # after the warm-up
        assert c.put("/v1/label-sets/s", json={"labels": V1}, headers=ADMIN).status_code == 202
        assert enc.entered.wait(10)
        assert c.delete("/v1/label-sets/s", headers=ADMIN).status_code == 200
        enc.release.set()
        time.sleep(0.3)  # the build's next slice sees it was cancelled
        assert c.get("/v1/label-sets/s").status_code == 404
        assert classify(c, "s").status_code == 404
    folder = tmp_path / "label-sets"
    assert sorted(p.name for p in folder.rglob("s.*")) == [] and not list(folder.rglob("s.json"))


@pytest.mark.parametrize("while_preparing", [False, True])
def test_a_hot_reload_builds_the_registered_sets_before_the_swap(
    tmp_path: Path, while_preparing: bool
) -> None:
    enc = TextGate()
    settings = fake_settings(tmp_path, admin_token=TOKEN)
    with TestClient(create_app(settings, enc.runtime_factory())) as c:
        assert c.put("/v1/label-sets/s", json={"labels": V1}, headers=ADMIN).json()["status"] == "ready"
        (settings.models_dir / "default" / "CURRENT").write_text("fake-2\n")
        engine = c.app.state.engine  # type: ignore[attr-defined]
        before = engine.cache.encoded_prompts
        if while_preparing:
            enc.armed, enc.only = True, "circle"  # the set's prompts, not the new model's warm-up
            done: dict[str, Any] = {}
            t = threading.Thread(target=lambda: done.update(r=c.post("/v1/admin/reload", headers=ADMIN)))
            t.start()
            assert enc.entered.wait(10)  # the reload is building the set for fake-2
            running = c.get("/v1/models").json()["reload_preparation"]["running"]
            assert running["model"]["version"] == "fake-2" and running["sets_total"] == 1
            r = classify(c, "s")  # the old model serves, with the set, meanwhile
            assert r.json()["model"]["version"] == "fake-1" and labels_of(r) == set(V1)
            enc.armed = False
            enc.release.set()
            t.join(20)
            assert done["r"].status_code == 200
        else:
            assert c.post("/v1/admin/reload", headers=ADMIN).status_code == 200
        prepared = engine.cache.encoded_prompts
        assert prepared - before == len(V1) * len(resolve_templates(None))  # built for fake-2, before
        last = c.get("/v1/models").json()["reload_preparation"]["last"]
        assert last["sets_done"] == 1 and last["failed"] == [] and last["model"]["version"] == "fake-2"
        for _ in range(3):
            r = classify(c, "s")
            assert r.json()["model"]["version"] == "fake-2" and labels_of(r) == set(V1)
        assert engine.cache.encoded_prompts == prepared  # no on-demand build after the swap


def test_a_hot_reload_under_load_with_a_registered_set_fails_no_request(tmp_path: Path) -> None:
    enc = TextGate()
    settings = fake_settings(tmp_path, admin_token=TOKEN)
    with TestClient(create_app(settings, enc.runtime_factory())) as c:
        body = {"labels": [f"object number {i}" for i in range(200)], "templates": "imagenet7"}
        assert c.put("/v1/label-sets/s", json=body, headers=ADMIN).json()["status"] == "ready"
        engine = c.app.state.engine  # type: ignore[attr-defined]
        statuses: list[tuple[int, str]] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                r = classify(c, "s")
                statuses.append(
                    (r.status_code, r.json()["model"]["version"] if r.status_code == 200 else r.text)
                )

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        (settings.models_dir / "default" / "CURRENT").write_text("fake-2\n")
        assert c.post("/v1/admin/reload", headers=ADMIN).status_code == 200
        swapped_at = engine.cache.encoded_prompts
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(20)
    assert statuses and all(code == 200 for code, _ in statuses), [s for s in statuses if s[0] != 200][:3]
    versions = [v for _, v in statuses]
    assert versions[0] == "fake-1" and versions[-1] == "fake-2"  # requests ran on both sides of the swap
    assert engine.cache.encoded_prompts == swapped_at  # nothing was built on demand after the swap
