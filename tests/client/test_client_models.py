"""zeroshot_client against a live server serving two models (ZEROSHOT_MODELS=default,second): `model`
routes a call to the one it names, its absence to the default, and an unknown name raises the server's
404 model_not_found. The two fake models have features of different widths (32 and 16: by_width in
tests/app/test_models.py), so an answer shows which model ran; no trained model is needed."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from app.main import create_app
from tests.app.test_models import TOKEN, by_width, two_models
from tests.servers import live_server
from zeroshot_client import AsyncClient, Client, NotFoundError

LABELS = ["red square", "blue square"]
SERVED = ["default", "second"]


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE = png((255, 0, 0)), png((0, 0, 255))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = two_models(tmp_path_factory.mktemp("client-models"))
    with live_server(settings, create_app(settings, by_width)) as url:
        yield url


@pytest.fixture
def client(base: str) -> Iterator[Client]:
    with Client(base, admin_token=TOKEN, retries=None) as c:
        yield c


def calibration_images() -> list[tuple[bytes, str | None]]:
    reds = [(png((20 * i, 0, 0)), "red square") for i in range(1, 6)]
    blues = [(png((0, 0, 20 * i)), "blue square") for i in range(1, 6)]
    return reds + blues + [(png((0, 20 * i, 0)), None) for i in range(1, 6)]


# --- the sync client ---


def test_classify_runs_on_the_model_named_and_on_the_default_without_one(client: Client) -> None:
    second = client.classify(RED, LABELS, model="second")
    assert (second.model.name, second.model.version) == ("second", "s-1")
    assert second.top is not None and second.top.label in LABELS
    assert client.classify(RED, LABELS).model.name == "default"
    assert client.classify(RED, LABELS, model="default").model.name == "default"
    many = client.classify_many([RED, BLUE], LABELS, model="second", top_k=1)
    assert [c.model.name for c in many] == ["second", "second"] and all(len(c.labels) == 1 for c in many)
    assert [c.model.name for c in client.classify_many([RED, BLUE], LABELS)] == ["default", "default"]


def test_embeddings_have_the_width_of_the_model_named(client: Client) -> None:
    second = client.embed_texts(["a"], model="second")
    assert (second.model.name, second.dim, len(second.embeddings[0])) == ("second", 16, 16)
    default = client.embed_texts(["a"])
    assert (default.model.name, default.dim, len(default.embeddings[0])) == ("default", 32, 32)
    templated = client.embed_texts(["a"], templates=["a photo of a {}."], model="second")
    assert templated.dim == 16 and templated.embeddings != second.embeddings
    images = client.embed_images([RED, BLUE], model="second")
    assert (images.model.name, images.dim, [len(r) for r in images.embeddings]) == ("second", 16, [16, 16])
    assert client.embed_images([RED]).dim == 32


def test_a_label_set_is_calibrated_and_read_for_the_model_named(client: Client) -> None:
    client.put_label_set("models-cal", LABELS)
    fit = client.calibrate("models-cal", calibration_images(), target_precision=0.9, model="second")
    assert fit.status == "fitted" and fit.fitted_at
    second = client.get_label_set("models-cal", model="second").calibration
    assert second is not None and (second.status, second.fitted_at) == ("fitted", fit.fitted_at)
    default = client.get_label_set("models-cal").calibration
    assert default is not None and default.status != "fitted"  # calibrated for `second` only
    used = client.classify(RED, label_set="models-cal", model="second")
    assert used.calibration is not None and used.calibration.status == "fitted"
    assert used.model.name == "second"
    client.delete_label_set("models-cal")


def test_an_unknown_model_raises_not_found_with_its_code_and_the_models_served(client: Client) -> None:
    client.put_label_set("models-known", LABELS)
    calls: list[Callable[[], Any]] = [
        lambda: client.classify(RED, LABELS, model="third"),
        lambda: client.classify_many([RED], LABELS, model="third"),
        lambda: client.embed_texts(["a"], model="third"),
        lambda: client.embed_images([RED], model="third"),
        lambda: client.get_label_set("models-known", model="third"),
        lambda: client.calibrate("models-known", calibration_images(), model="third"),
    ]
    for call in calls:
        with pytest.raises(NotFoundError) as e:
            call()
        assert (e.value.code, e.value.status) == ("model_not_found", 404)
        assert e.value.detail == {"models": SERVED} and "'third'" in e.value.message
    client.delete_label_set("models-known")


# --- the async client ---


def test_the_async_client_routes_by_model_as_the_sync_one(base: str) -> None:
    async def run() -> dict[str, Any]:
        async with AsyncClient(base, admin_token=TOKEN, retries=None) as c:
            out: dict[str, Any] = {"one": await c.classify(RED, LABELS, model="second")}
            out["plain"] = await c.classify(RED, LABELS)
            out["many"] = await c.classify_many([RED, BLUE], LABELS, model="second")
            out["texts"] = await c.embed_texts(["a"], model="second")
            out["texts_default"] = await c.embed_texts(["a"])
            out["images"] = await c.embed_images([RED], model="second")
            await c.put_label_set("async-models", LABELS)
            out["fit"] = await c.calibrate("async-models", calibration_images(), model="second")
            out["get"] = await c.get_label_set("async-models", model="second")
            out["unknown"] = []
            for call in (
                c.classify(RED, LABELS, model="third"),
                c.embed_texts(["a"], model="third"),
                c.embed_images([RED], model="third"),
                c.get_label_set("async-models", model="third"),
            ):
                try:
                    await call
                except NotFoundError as e:
                    out["unknown"].append((e.code, e.status, e.detail))
            await c.delete_label_set("async-models")
        return out

    out = asyncio.run(run())
    assert out["one"].model.name == "second" and out["plain"].model.name == "default"
    assert [x.model.name for x in out["many"]] == ["second", "second"]
    assert (out["texts"].model.name, out["texts"].dim) == ("second", 16)
    assert (out["texts_default"].model.name, out["texts_default"].dim) == ("default", 32)
    assert (out["images"].model.name, out["images"].dim, len(out["images"].embeddings[0])) == (
        "second",
        16,
        16,
    )
    assert out["fit"].status == "fitted"
    assert out["get"].calibration is not None and out["get"].calibration.status == "fitted"
    assert out["unknown"] == [("model_not_found", 404, {"models": SERVED})] * 4


# --- on the wire ---


def test_model_is_sent_only_when_given_in_the_body_or_the_query() -> None:
    requests: list[httpx.Request] = []
    # one answer every method can read: a label set, a classification, embeddings, a calibration
    body = {
        **{"name": "s", "labels": ["a"], "templates": ["{}"], "created_at": None},
        **{"model": {"name": "second", "version": "s-1"}, "results": [{"labels": []}]},
        **{"dim": 1, "embeddings": [[1.0]], "calibration": {"status": "fitted"}},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=body)

    def send_all(c: Client, model: str | None) -> None:
        c.classify(RED, ["a"], model=model)
        c.classify_many([RED], ["a"], model=model)
        c.embed_images([RED], model=model)
        c.embed_texts(["a"], model=model)
        c.calibrate("s", [(RED, "a")], model=model)

    with Client("http://zeroshot.test", transport=httpx.MockTransport(answer), retries=None) as c:
        assert c.get_label_set("s", model="second").calibration is not None
        c.get_label_set("s")
        send_all(c, "second")
        send_all(c, None)
    with_model, without = requests[0], requests[1]
    assert (with_model.url.path, dict(with_model.url.params)) == ("/v1/label-sets/s", {"model": "second"})
    assert (without.url.path, without.url.query) == ("/v1/label-sets/s", b"")
    paths = ["/v1/classify", "/v1/classify", "/v1/embeddings/images", "/v1/embeddings/texts"]
    assert [r.url.path for r in requests[2:]] == [*paths, "/v1/label-sets/s/calibration"] * 2
    bodies = [json.loads(r.content) for r in requests[2:]]
    assert [b.get("model") for b in bodies[:5]] == ["second"] * 5
    assert not any("model" in b for b in bodies[5:])  # omitted: not sent, so the server's default
    assert bodies[0]["images"] == bodies[5]["images"] == [base64.b64encode(RED).decode()]
