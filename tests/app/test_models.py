"""Several models in one server (ZEROSHOT_MODELS): each listed, routed to by `model`, reloaded on its
own and labelled in the metrics; an unknown model is a 404 naming those served; /readyz waits for
every one. The two fake models have features of different widths, so an answer shows which ran."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from app.main import create_app
from app.runtime.engine import Engine
from app.runtime.model import ModelRuntime
from app.settings import Settings
from model.bundle.prompts import resolve_templates
from tests.fakes import FakeEncoders, fake_runtime, fake_settings

TOKEN = "admin-token-123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
DIMS = {"default": 32, "second": 16}


def by_width(settings: Settings, name: str, version: str) -> ModelRuntime:
    """The fake runtime, with features DIMS[name] wide; a version named broken-* fails to load."""
    if version.startswith("broken"):
        raise RuntimeError(f"{name}/{version} is damaged")
    rt = fake_runtime(settings, name, version)
    return ModelRuntime(rt.name, rt.version, rt.sha, rt.logit_scale, FakeEncoders(DIMS[name]), rt.manifest)


def two_models(tmp: Path, second: str | None = "s-1", **kw: Any) -> Settings:
    """Settings serving `default` (CURRENT fake-1) and `second` (CURRENT `second`; None: no CURRENT)."""
    s = fake_settings(tmp, models="default,second", admin_token=TOKEN, **kw)
    (s.models_dir / "second").mkdir(exist_ok=True)
    if second is not None:
        (s.models_dir / "second" / "CURRENT").write_text(second + "\n")
    return s


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def classify(c: TestClient, model: str | None = None, json_body: bool = False, **fields: Any) -> Any:
    extra = {} if model is None else {"model": model}
    if json_body:
        body = {"images": [base64.b64encode(png()).decode()], "labels": ["a", "b"], **extra, **fields}
        return c.post("/v1/classify", json=body)
    data = {"labels": ["a", "b"], **extra, **fields}
    return c.post("/v1/classify", files=[("image", ("x.png", png(), "image/png"))], data=data)


def test_both_models_are_listed_and_requests_go_to_the_model_they_name(tmp_path: Path) -> None:
    with TestClient(create_app(two_models(tmp_path), by_width)) as c:
        m = c.get("/v1/models").json()
        assert m["name"] == "default" and m["version"] == "fake-1"  # the default, as with one model
        assert [(x["name"], x["version"], x["loaded"]) for x in m["models"]] == [
            ("default", "fake-1", True),
            ("second", "s-1", True),
        ]
        for x in m["models"]:  # what loading it added to the process, per model (Linux: /proc)
            assert isinstance(x["memory"]["rss_growth_bytes"], int) and x["memory"]["rss_growth_bytes"] >= 0
            assert x["memory"]["version"] == x["version"] and x["batcher"]["batches"] >= 0

        for json_body in (False, True):
            r = classify(c, "second", json_body)
            assert r.status_code == 200, r.text
            assert r.json()["model"] == {"name": "second", "version": "s-1"}
            assert classify(c, json_body=json_body).json()["model"]["name"] == "default"
        texts = {n: c.post("/v1/embeddings/texts", json={"texts": ["a"], "model": n}).json() for n in DIMS}
        assert {n: (t["model"]["name"], t["dim"]) for n, t in texts.items()} == {
            "default": ("default", 32),
            "second": ("second", 16),
        }
        files = [("image", ("x.png", png(), "image/png"))]
        r = c.post("/v1/embeddings/images", files=files, data={"model": "second"})
        assert r.status_code == 200 and r.json()["dim"] == 16
        body = {"images": [base64.b64encode(png()).decode()], "model": "second"}
        assert c.post("/v1/embeddings/images", json=body).json()["dim"] == 16
        data_url = "data:image/png;base64," + base64.b64encode(png()).decode()
        r = c.post("/v1/embeddings", json={"model": "second", "input": ["a", data_url]})
        assert r.status_code == 200 and [len(d["embedding"]) for d in r.json()["data"]] == [16, 16]
        after = {x["name"]: x["batcher"]["images"] for x in c.get("/v1/models").json()["models"]}
        assert after == {"default": 2, "second": 5}  # each model's images went through its own batcher


def test_an_unknown_model_is_a_404_naming_the_models_served(tmp_path: Path) -> None:
    with TestClient(create_app(two_models(tmp_path), by_width)) as c:
        files = [("image", ("x.png", png(), "image/png"))]
        answers = [
            classify(c, "third"),
            classify(c, "third", json_body=True),
            c.post("/v1/embeddings/texts", json={"texts": ["a"], "model": "third"}),
            c.post("/v1/embeddings/images", files=files, data={"model": "third"}),
            c.post("/v1/embeddings", json={"model": "third", "input": "a"}),
            c.post("/v1/admin/reload?model=third", headers=ADMIN),
        ]
        c.put("/v1/label-sets/s?wait=true", json={"labels": ["a", "b"]}, headers=ADMIN)
        answers.append(c.get("/v1/label-sets/s?model=third"))
        for r in answers:
            assert r.status_code == 404, r.text
            e = r.json()["error"]
            assert e["code"] == "model_not_found" and e["detail"]["models"] == ["default", "second"]
            assert "'third'" in e["message"] and "default, second" in e["message"]
        assert c.get("/v1/label-sets/s?model=second").status_code == 200


def test_readyz_waits_for_every_model_and_names_those_not_ready(tmp_path: Path) -> None:
    s = two_models(tmp_path, second=None)
    with TestClient(create_app(s, by_width)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        not_ready = r.json()["error"]["detail"]["not_ready"]
        assert list(not_ready) == ["second"] and "CURRENT" in not_ready["second"]
        assert "second" in r.json()["error"]["message"]
        assert classify(c).status_code == 200  # the model that is loaded serves meanwhile
        r = classify(c, "second")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        shown = {x["name"]: x["loaded"] for x in c.get("/v1/models").json()["models"]}
        assert shown == {"default": True, "second": False}

        (s.models_dir / "second" / "CURRENT").write_text("s-1\n")
        r = c.post("/v1/admin/reload?model=second", headers=ADMIN)
        assert r.status_code == 200 and r.json()["models"] == {"second": {"changed": True, "version": "s-1"}}
        assert c.get("/readyz").status_code == 200


def test_each_model_reloads_on_its_own(tmp_path: Path) -> None:
    s = two_models(tmp_path)
    with TestClient(create_app(s, by_width)) as c:
        (s.models_dir / "second" / "CURRENT").write_text("s-2\n")
        r = c.post("/v1/admin/reload", headers=ADMIN)
        assert r.json()["models"] == {
            "default": {"changed": False, "version": "fake-1"},
            "second": {"changed": True, "version": "s-2"},
        }
        assert classify(c, "second").json()["model"]["version"] == "s-2"
        assert classify(c).json()["model"]["version"] == "fake-1"

        (s.models_dir / "second" / "CURRENT").write_text("broken-3\n")
        r = c.post("/v1/admin/reload", headers=ADMIN)
        assert r.status_code == 409 and "second" in r.json()["error"]["message"]
        assert r.json()["error"]["detail"]["serving"] == {"default": "fake-1", "second": "s-2"}
        assert classify(c, "second").json()["model"]["version"] == "s-2"  # the old one keeps serving


def test_the_metrics_carry_the_model(tmp_path: Path) -> None:
    with TestClient(create_app(two_models(tmp_path), by_width)) as c:
        assert classify(c, "second").status_code == 200
        text = c.get("/metrics").text
    assert 'zeroshot_batch_size_count{model="second"} 1.0' in text
    assert 'zeroshot_batch_size_count{model="default"}' not in text  # no request reached it
    for name in DIMS:
        assert f'zeroshot_queue_depth{{model="{name}"}} 0.0' in text
        assert f'zeroshot_model_loaded{{model="{name}"}} 1.0' in text
        assert f'zeroshot_model_info{{model="{name}",name="{name}"' in text
        assert f'zeroshot_queue_rejected_total{{model="{name}"}} 0.0' in text


def test_a_label_set_is_built_for_every_model_before_it_serves(tmp_path: Path) -> None:
    with TestClient(create_app(two_models(tmp_path), by_width)) as c:
        r = c.put("/v1/label-sets/pets?wait=true", json={"labels": ["cat", "dog"]}, headers=ADMIN)
        assert r.status_code == 200, r.text
        build = r.json()["build"]
        assert build["status"] == "ready" and [m["name"] for m in build["models"]] == ["default", "second"]
        prompts = 2 * len(resolve_templates(None)) * 2  # labels x templates x models
        assert build["prompts_done"] == build["prompts_total"] == prompts
        engine: Engine = c.app.state.engine  # type: ignore[attr-defined]
        second = engine.models.get("second").runtime().encoders
        encoded = second.texts_encoded  # type: ignore[attr-defined]
        r = c.post(
            "/v1/classify",
            files=[("image", ("x.png", png(), "image/png"))],
            data={"label_set": "pets", "model": "second"},
        )
        assert r.status_code == 200 and r.json()["model"]["name"] == "second"
        assert second.texts_encoded == encoded  # type: ignore[attr-defined]  # built already: no encoding


def test_the_door_admits_on_one_model_and_moves_the_request_to_the_one_it_names(tmp_path: Path) -> None:
    async def main() -> list[tuple[int, int]]:
        engine = Engine(two_models(tmp_path), by_width)
        await engine.start()
        default, second = engine.models.get("default").batcher, engine.models.get("second").batcher
        seen = []
        try:
            with engine.admit() as ticket:
                seen.append((default._incoming, second._incoming))  # the door: the default (same room)
                engine._route(ticket, "second")
                seen.append((default._incoming, second._incoming))
                assert ticket.runtime.name == "second"
            seen.append((default._incoming, second._incoming))
        finally:
            await engine.stop()
        return seen

    assert asyncio.run(main()) == [(1, 0), (0, 1), (0, 0)]


def test_the_models_setting() -> None:
    assert Settings(models="a, b").served_models == ("a", "b")
    assert Settings(models='["a", "b.v2"]').served_models == ("a", "b.v2")
    assert Settings(model_name="solo").served_models == ("solo",)  # unset: model_name alone
    for bad, why in (("a,a", "given twice"), ("a,../b", "not a model folder name")):
        with pytest.raises(ValidationError, match=why):
            Settings(models=bad)


def test_the_openapi_schema_documents_the_model_field_everywhere(tmp_path: Path) -> None:
    spec = create_app(two_models(tmp_path), by_width).openapi()
    bodies = {
        ("/v1/classify", "multipart/form-data"),
        ("/v1/classify", "application/json"),
        ("/v1/embeddings/images", "multipart/form-data"),
        ("/v1/embeddings/images", "application/json"),
        ("/v1/embeddings/texts", "application/json"),
        ("/v1/label-sets/{name}/calibration", "application/json"),
    }
    for path, kind in bodies:
        schema = spec["paths"][path]["post"]["requestBody"]["content"][kind]["schema"]
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        assert "model" in schema["properties"], (path, kind)
        assert "default" in schema["properties"]["model"]["description"]  # says what omitting it means
    for path, method in (("/v1/label-sets/{name}", "get"), ("/v1/admin/reload", "post")):
        params = {p["name"] for p in spec["paths"][path][method].get("parameters", [])}
        assert "model" in params, path


def test_each_model_can_have_its_own_backend_and_precision(tmp_path: Path) -> None:
    options = {"second": {"backend": "openvino", "precision": "bf16"}}
    s = two_models(tmp_path, model_options=options)
    seen: dict[str, tuple[str, str]] = {}

    def factory(settings: Settings, name: str, version: str) -> ModelRuntime:
        seen[name] = (settings.backend, settings.precision)
        return by_width(settings, name, version)

    with TestClient(create_app(s, factory)) as c:
        assert c.get("/readyz").status_code == 200
    assert seen == {"default": ("onnxruntime", "fp32"), "second": ("openvino", "bf16")}
    assert s.for_model("default") is s  # no options: the settings themselves
    for bad, why in (
        ({"third": {"backend": "openvino"}}, "third, not served"),
        ({"second": {"max_batch": "4"}}, "max_batch cannot be set per model"),
    ):
        with pytest.raises(ValidationError, match=why):
            two_models(tmp_path, model_options=bad)
    with pytest.raises(ValidationError, match="needs backend openvino"):  # checked like the settings
        two_models(tmp_path, model_options={"second": {"precision": "bf16"}}).for_model("second")
