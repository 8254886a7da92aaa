"""zeroshot_client against a live in-process server on 127.0.0.1 (the fake encoder of tests/fakes.py:
no trained model), and against httpx.MockTransport where the server cannot show it: retries, what
goes on the wire for an image URL, headers, fields a newer server adds."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from app.main import create_app
from tests.fakes import FakeEncoders, fake_app, fake_settings
from tests.servers import live_server
from zeroshot_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ClientError,
    LabelSetBuildFailed,
    LabelSetBuildTimeout,
    NotFoundError,
    RateLimitedError,
    RequestTimeout,
    RetryPolicy,
    UnavailableError,
    ZeroshotError,
)

ADMIN = "admin-token-for-client-tests"
KEY = "client-test-key"


def png(colour: tuple[int, int, int], size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE = png((255, 0, 0)), png((0, 0, 255))
LABELS = ["red square", "blue square", "green circle"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("client")
    with live_server(fake_settings(tmp), fake_app(tmp, admin_token=ADMIN)) as url:
        yield url


@pytest.fixture
def client(base: str) -> Iterator[Client]:
    with Client(base, admin_token=ADMIN, retries=None) as c:
        yield c


def raw_post(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(base + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- against the live server ---


def test_a_path_bytes_and_a_pil_image_get_the_answer_a_raw_request_gets(
    client: Client, base: str, tmp_path: Path
) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(RED)
    raw = raw_post(base, "/v1/classify", {"images": [b64(RED)], "labels": LABELS})["results"][0]
    want = [(x["label"], x["probability"], x["cosine"]) for x in raw["labels"]]
    for image in (path, str(path), RED, Image.open(io.BytesIO(RED))):
        got = client.classify(image, LABELS)
        assert [(x.label, x.probability, x.cosine) for x in got.labels] == want, type(image)
        assert (got.mode, got.abstained, got.abstain, got.error) == ("single", False, None, None)
        assert (got.model.name, got.model.version) == ("default", "fake-1")
    assert sorted(want, key=lambda x: -x[2]) == want  # highest cosine first, as the server documents


def test_classify_many_keeps_the_order_and_sends_top_k_mode_and_thresholds(client: Client) -> None:
    red, blue = client.classify(RED, LABELS), client.classify(BLUE, LABELS)
    assert red.labels != blue.labels  # the fake's features differ, so the order below is checked
    many = client.classify_many([BLUE, RED], LABELS, top_k=1, mode="multi", min_cosine=0.99)
    assert [[x.label for x in c.labels] for c in many] == [[blue.labels[0].label], [red.labels[0].label]]
    for c in many:
        assert len(c.labels) == 1 and c.mode == "multi" and c.abstained
        assert c.abstain is not None and (c.abstain.score, c.abstain.source) == ("cosine", "request")
        assert c.abstain.threshold == 0.99 and c.abstain.value < 0.99


def test_on_error_skip_gives_the_unusable_image_its_error(client: Client) -> None:
    ok, bad = client.classify_many([RED, b"not an image"], LABELS, on_error="skip")
    assert ok.error is None and ok.top is not None and ok.top.label in LABELS
    assert bad.labels == [] and bad.top is None
    assert bad.error is not None and bad.error.code == "invalid_image"


def test_a_label_set_is_put_listed_read_used_and_deleted(client: Client) -> None:
    stored = client.put_label_set("client-pets", ["cat", "dog", "bird"], templates="default")
    assert (stored.name, stored.label_count, stored.templates) == ("client-pets", 3, "default")
    assert stored.embeddings is not None and stored.embeddings.model.version == "fake-1"
    assert "client-pets" in [s.name for s in client.label_sets()]
    full = client.get_label_set("client-pets")
    assert (full.labels, full.templates, full.template_set) == (
        ["cat", "dog", "bird"],
        ["a photo of a {}."],
        "default",
    )
    assert full.calibration is not None and full.calibration.status == "none"
    by_set = client.classify(RED, label_set="client-pets")
    assert by_set.labels == client.classify(RED, ["cat", "dog", "bird"], templates="default").labels
    assert by_set.calibration is not None and by_set.calibration.status == "none"
    client.delete_label_set("client-pets")
    with pytest.raises(NotFoundError) as e:
        client.get_label_set("client-pets")
    assert (e.value.code, e.value.status) == ("label_set_not_found", 404)
    assert "client-pets" not in [s.name for s in client.label_sets()]


def test_a_calibrated_label_set_abstains_by_its_fitted_rule(client: Client) -> None:
    client.put_label_set("client-cal", ["cat", "dog"])
    shades = [(png((20 * i, 0, 0)), "cat") for i in range(1, 6)] + [
        (png((0, 20 * i, 0)), "dog") for i in range(1, 6)
    ]
    unknown = [(png((0, 0, 20 * i)), None) for i in range(1, 6)]
    fit = client.calibrate("client-cal", shades + unknown, target_precision=0.9)
    assert fit.status == "fitted" and fit.fitted_at and fit.raw["figures"]["images"] == 15
    stored = client.get_label_set("client-cal").calibration
    assert stored is not None and (stored.status, stored.fitted_at) == ("fitted", fit.fitted_at)
    got = client.classify(RED, label_set="client-cal")
    assert got.calibration is not None and got.calibration.status == "fitted"
    assert got.abstain is not None and got.abstain.source == "calibration"
    client.delete_label_set("client-cal")


def test_an_unknown_label_set_is_the_servers_404_and_its_code(client: Client) -> None:
    with pytest.raises(ZeroshotError) as e:
        client.classify(RED, label_set="no-such-set")
    assert (e.value.code, e.value.status, e.value.retry_after) == ("label_set_not_found", 404, None)
    assert "no-such-set" in e.value.message


def test_invalid_input_is_the_servers_422_with_its_code(client: Client) -> None:
    with pytest.raises(ClientError) as e:
        client.classify(RED, ["cat", "cat"])
    assert (e.value.code, e.value.status) == ("duplicate_labels", 422)
    with pytest.raises(ClientError) as e:
        client.classify(RED, LABELS, min_probability=2)
    assert (e.value.code, e.value.status) == ("invalid_threshold", 422)


def test_changing_a_label_set_needs_the_admin_token(base: str) -> None:
    with Client(base, retries=None) as anonymous, pytest.raises(AuthenticationError) as e:
        anonymous.put_label_set("nope", ["a"])
    assert (e.value.code, e.value.status) == ("unauthorized", 401)


def test_an_image_url_reaches_the_server_and_its_refusal_is_raised(client: Client) -> None:
    # URL fetching is off by default: the server refuses it (4xx) and fetches nothing
    with pytest.raises(ClientError) as e:
        client.classify("http://127.0.0.1:9/none.png", LABELS)
    assert e.value.status is not None and 400 <= e.value.status < 500 and e.value.code


def test_embeddings_are_those_of_a_raw_request(client: Client, base: str) -> None:
    images = client.embed_images([RED, Image.open(io.BytesIO(BLUE))])
    raw = raw_post(base, "/v1/embeddings/images", {"images": [b64(RED), b64(BLUE)]})
    assert images.embeddings == raw["embeddings"] and images.dim == raw["dim"] == 32
    assert len(images.embeddings) == 2 and images.model.name == "default"
    texts = client.embed_texts(["cat", "dog"], templates=["a photo of a {}.", "a drawing of a {}."])
    body = {"texts": ["cat", "dog"], "templates": ["a photo of a {}.", "a drawing of a {}."]}
    assert texts.embeddings == raw_post(base, "/v1/embeddings/texts", body)["embeddings"]
    plain = client.embed_texts(["cat", "dog"])
    assert plain.embeddings == raw_post(base, "/v1/embeddings/texts", {"texts": ["cat", "dog"]})["embeddings"]
    assert plain.embeddings != texts.embeddings


def test_models_health_and_ready(client: Client) -> None:
    m = client.models()
    assert (m.name, m.version, m.provider) == ("default", "fake-1", "FakeExecutionProvider")
    assert m.architecture["embed_dim"] == 32 and m.logit_scale == 100.0
    assert "batcher" in m.raw and "name" not in m.raw
    assert client.health() is True and client.ready() is True


def test_the_api_key_is_sent_where_the_server_requires_one(tmp_path: Path) -> None:
    with live_server(fake_settings(tmp_path), fake_app(tmp_path, api_keys=KEY, admin_token=ADMIN)) as url:
        with Client(url, retries=None) as none, pytest.raises(AuthenticationError) as e:
            none.models()
        assert (e.value.code, e.value.status) == ("unauthorized", 401)
        with Client(url, api_key="wrong-key", retries=None) as wrong, pytest.raises(AuthenticationError):
            wrong.classify(RED, LABELS)
        with Client(url, api_key=KEY, admin_token=ADMIN) as c:
            assert c.classify(RED, LABELS).labels  # the API key
            assert c.put_label_set("keyed", ["a", "b"]).label_count == 2  # the admin token
            assert c.get_label_set("keyed").labels == ["a", "b"]
        with Client(url, admin_token=ADMIN) as admin_only:
            assert admin_only.models().version == "fake-1"  # the admin token serves as an API key


def test_the_async_client_answers_as_the_sync_one(client: Client, base: str) -> None:
    async def run() -> dict[str, Any]:
        async with AsyncClient(base, admin_token=ADMIN, retries=None) as c:
            out: dict[str, Any] = {"one": await c.classify(RED, LABELS)}
            out["many"] = await c.classify_many([BLUE, RED], LABELS, top_k=2)
            out["texts"] = await c.embed_texts(["cat"], templates="default")
            out["images"] = await c.embed_images([RED])
            out["put"] = await c.put_label_set("async-set", ["cat", "dog"])
            out["get"] = await c.get_label_set("async-set")
            out["by_set"] = await c.classify(RED, label_set="async-set")
            out["listed"] = [s.name for s in await c.label_sets()]
            await c.delete_label_set("async-set")
            try:
                await c.get_label_set("async-set")
            except ZeroshotError as e:
                out["gone"] = (e.code, e.status)
            out["models"], out["ready"] = await c.models(), await c.ready()
            out["health"] = await c.health()
            out["http"] = c._http
        return out

    out = asyncio.run(run())
    assert out["one"].labels == client.classify(RED, LABELS).labels
    assert [c.labels for c in out["many"]] == [
        c.labels for c in client.classify_many([BLUE, RED], LABELS, top_k=2)
    ]
    assert out["texts"].embeddings == client.embed_texts(["cat"], templates="default").embeddings
    assert out["images"].embeddings == client.embed_images([RED]).embeddings
    assert out["put"].label_count == 2 and out["get"].labels == ["cat", "dog"]
    assert out["by_set"].labels == client.classify(RED, ["cat", "dog"]).labels
    assert "async-set" in out["listed"] and out["gone"] == ("label_set_not_found", 404)
    assert out["models"].version == "fake-1" and out["ready"] and out["health"]
    assert out["http"].is_closed  # `async with` closed it


def test_the_context_manager_closes_the_http_client(base: str) -> None:
    with Client(base) as c:
        assert c.ready()
    assert c._http.is_closed


class GatedTexts(FakeEncoders):
    """Text-encoder calls with a prompt holding "gated" wait for `release`: a label set's build that
    stays under way until the test lets it end."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None) -> Any:
        if any("gated" in t for t in texts):
            assert self.release.wait(20), "the test never released the text encoder"
        return super().encode_texts(texts, batch_size, pad_to)


def test_a_set_still_building_is_refused_then_waited_for_by_polling(tmp_path: Path) -> None:
    enc, slept, labels = GatedTexts(), [], ["gated cat", "gated dog"]
    settings = fake_settings(tmp_path, admin_token=ADMIN, label_set_wait_s=0)  # every PUT answers 202

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    with (
        live_server(settings, create_app(settings, enc.runtime_factory())) as url,
        Client(url, admin_token=ADMIN, retries=None, sleep=sleep) as c,
    ):
        early = c.put_label_set("gated", labels, wait=False)
        assert (early.status, early.status_url, early.embeddings) == (
            "building",
            "/v1/label-sets/gated",
            None,
        )
        assert early.build is not None and (early.build.status, early.build.prompts_total) == ("building", 2)
        view = c.get_label_set("gated")
        assert (view.status, view.labels, view.staged) == ("building", labels, None)
        assert view.build is not None and view.build.eta_s is None  # no prompt done yet
        with pytest.raises(UnavailableError) as e:
            c.classify(RED, label_set="gated")
        assert e.value.code == "label_set_building" and e.value.retry_after is not None
        assert 1 <= e.value.retry_after <= 60 and slept == []
        threading.Timer(0.3, enc.release.set).start()
        done = c.put_label_set("gated", labels, poll_s=0.05)  # 202 again: the same build, followed
        assert done.status == "ready" and done.build is not None and done.build.status == "ready"
        assert done.build.prompts_done == done.build.prompts_total and done.build.error is None
        assert done.embeddings is not None and done.embeddings.model.version == "fake-1"
        assert slept and set(slept) == {0.05}
        assert c.get_label_set("gated").status == "ready"
        assert [s.status for s in c.label_sets() if s.name == "gated"] == ["ready"]
        top = c.classify(RED, label_set="gated").top
        assert top is not None and top.label in labels


# --- on the wire, with httpx.MockTransport ---


class Recorder:
    """A MockTransport handler answering from a list of (status, headers, body) in turn, keeping
    each request; an exception in the list is raised instead, as a transport failure would be."""

    def __init__(self, *answers: tuple[int, dict[str, str], Any] | Exception) -> None:
        self.answers: list[Any] = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, headers, body = answer
        content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        kind = "text/html" if isinstance(body, str) else "application/json"
        return httpx.Response(status, headers={"content-type": kind, **headers}, content=content)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def client(self, **kw: Any) -> Client:
        return Client("http://zeroshot.test", transport=httpx.MockTransport(self), sleep=self.sleep, **kw)

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


MODEL = {"name": "default", "version": "v1"}
OK = (200, {}, {"model": MODEL, "mode": "single", "results": [{"labels": []}], "timing_ms": {}})


def unavailable(retry_after: str | None) -> tuple[int, dict[str, str], Any]:
    body = {"error": {"code": "overloaded", "message": "queue full", "detail": None}}
    return 503, ({"Retry-After": retry_after} if retry_after is not None else {}), body


def test_a_url_is_sent_as_url_and_a_data_url_as_is() -> None:
    rec = Recorder(OK)
    with rec.client() as c:
        c.classify_many(
            ["https://example.com/cat.jpg", "HTTP://example.com/a.png", "data:image/png;base64,AAAA", RED],
            ["cat"],
        )
    images = rec.bodies()[0]["images"]
    assert images[:3] == [
        {"url": "https://example.com/cat.jpg"},
        {"url": "HTTP://example.com/a.png"},
        "data:image/png;base64,AAAA",
    ]
    assert base64.b64decode(images[3]) == RED


def test_only_the_fields_given_are_sent_with_the_servers_names() -> None:
    rec = Recorder(OK)
    with rec.client() as c:
        c.classify(RED, ("a", "b"), templates=("x {}",), top_k=2, min_probability=1, mode="multi")
        c.classify(RED, label_set="pets")
    full, by_set = rec.bodies()
    assert full == {
        "images": [b64(RED)],
        "labels": ["a", "b"],
        "templates": ["x {}"],
        "top_k": 2,
        "mode": "multi",
        "min_probability": 1.0,
    }
    assert isinstance(full["min_probability"], float)  # the server's thresholds are strict floats
    assert by_set == {"images": [b64(RED)], "label_set": "pets"}
    assert [r.url.path for r in rec.requests] == ["/v1/classify"] * 2


def test_each_request_carries_the_credential_its_route_needs() -> None:
    summary = {"name": "s", "labels": 1, "templates": "default", "created_at": None}
    rec = Recorder((200, {}, {**summary, "label_sets": [summary]}))
    with rec.client(api_key="the-key", admin_token="the-admin-token") as c:
        c.put_label_set("s", ["a"])
        c.label_sets()
    with rec.client(api_key="the-key") as c:
        c.put_label_set("s", ["a"])
    with rec.client() as c:
        c.put_label_set("s", ["a"])
    auth = [r.headers.get("authorization") for r in rec.requests]
    assert auth == ["Bearer the-admin-token", "Bearer the-key", "Bearer the-key", None]
    assert all("x-api-key" not in r.headers for r in rec.requests)  # it would shadow the Bearer token


def test_unknown_fields_of_a_newer_server_are_kept_in_raw() -> None:
    label = {"label": "cat", "probability": 0.9, "cosine": 0.3, "rank": 1}
    body = {"model": {**MODEL, "sha": "abc"}, "results": [{"labels": [label], "novel": True}], "region": "eu"}
    with Recorder((200, {}, body)).client() as c:
        got = c.classify(RED, ["cat"])
    assert got.labels[0].raw == {"rank": 1} and got.labels[0].probability == 0.9
    assert got.raw == {"novel": True, "region": "eu"} and got.model.raw == {"sha": "abc"}
    assert got.mode == "single" and got.calibration is None and not got.abstained


def test_a_503_with_retry_after_is_retried_after_that_wait() -> None:
    rec = Recorder(unavailable("2"), unavailable(None), OK)
    with rec.client(retries=RetryPolicy(max_retries=3, max_retry_s=30, backoff_s=0.25)) as c:
        assert c.classify(RED, ["cat"]).model.version == "v1"
    assert rec.sleeps == [2.0, 0.5]  # Retry-After, then backoff_s doubled for the second retry
    assert len(rec.requests) == 3


def test_retries_stop_at_the_budget_and_raise_the_last_error() -> None:
    rec = Recorder(unavailable("20"))  # answers 503 forever
    with (
        rec.client(retries=RetryPolicy(max_retries=5, max_retry_s=30)) as c,
        pytest.raises(UnavailableError) as e,
    ):
        c.classify(RED, ["cat"])
    assert rec.sleeps == [20.0] and len(rec.requests) == 2  # a second 20 s would pass 30 s in all
    assert (e.value.code, e.value.status, e.value.retry_after) == ("overloaded", 503, 20.0)
    rec = Recorder(unavailable("1"))
    with rec.client(retries=2) as c, pytest.raises(UnavailableError):
        c.embed_texts(["cat"])
    assert rec.sleeps == [1.0, 1.0] and len(rec.requests) == 3  # max_retries
    rec = Recorder(unavailable("1"))
    with rec.client(retries=None) as c, pytest.raises(UnavailableError):
        c.models()
    assert rec.sleeps == [] and len(rec.requests) == 1


def test_4xx_is_never_retried() -> None:
    bad = (400, {}, {"error": {"code": "invalid_json", "message": "not JSON", "detail": None}})
    rec = Recorder(bad, OK)
    with rec.client() as c, pytest.raises(ClientError) as e:
        c.classify(RED, ["cat"])
    assert (e.value.code, e.value.status, e.value.message) == ("invalid_json", 400, "not JSON")
    assert rec.sleeps == [] and len(rec.requests) == 1
    quota = (429, {"Retry-After": "7"}, {"error": {"code": "quota_exceeded", "message": "slow down"}})
    rec = Recorder(quota, OK)
    with rec.client() as c, pytest.raises(RateLimitedError) as e2:
        c.classify(RED, ["cat"])
    assert e2.value.retry_after == 7.0 and rec.sleeps == [] and len(rec.requests) == 1


def test_a_refused_connection_is_retried_and_a_timeout_is_not() -> None:
    rec = Recorder(httpx.ConnectError("refused"), OK)
    with rec.client() as c:
        assert c.classify(RED, ["cat"]).model.name == "default"
    assert rec.sleeps == [0.5] and len(rec.requests) == 2
    rec = Recorder(httpx.ReadTimeout("slow"), OK)
    with rec.client() as c, pytest.raises(RequestTimeout) as e:
        c.classify(RED, ["cat"])
    assert (e.value.code, e.value.status) == ("timeout", None) and len(rec.requests) == 1


def test_health_and_ready_say_false_on_503_without_retrying() -> None:
    rec = Recorder(unavailable("1"))
    with rec.client() as c:
        assert c.ready() is False and c.health() is False
    assert rec.sleeps == [] and [r.url.path for r in rec.requests] == ["/readyz", "/healthz"]


def test_an_error_without_the_servers_body_still_raises_with_its_status() -> None:
    with (
        Recorder((502, {}, "<html>bad gateway</html>")).client(retries=None) as c,
        pytest.raises(ZeroshotError) as e,
    ):
        c.models()
    assert (e.value.code, e.value.status) == ("http_502", 502) and "bad gateway" in e.value.message


def test_the_async_client_retries_with_its_own_sleep() -> None:
    rec = Recorder(unavailable("3"), OK)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    missing = Recorder(
        (404, {"Retry-After": "5"}, {"error": {"code": "label_set_not_found", "message": "no"}})
    )

    def client(rec: Recorder) -> AsyncClient:
        return AsyncClient("http://zeroshot.test", transport=httpx.MockTransport(rec), sleep=sleep)

    async def run() -> tuple[str, str]:
        async with client(rec) as c:
            first = await c.classify("https://example.com/x.png", ["cat"])
        async with client(missing) as c:
            try:
                await c.get_label_set("x")
            except NotFoundError as e:
                return first.model.version, e.code
        return first.model.version, "no error"

    assert asyncio.run(run()) == ("v1", "label_set_not_found")
    assert waits == [3.0] and len(rec.requests) == 2 and len(missing.requests) == 1  # 404: not retried
    assert rec.bodies()[-1]["images"] == [{"url": "https://example.com/x.png"}]


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        (lambda c: c.classify(RED, "cat"), TypeError),  # labels is a list
        (lambda c: c.embed_images(RED), TypeError),  # images is a list
        (lambda c: c.embed_texts("cat"), TypeError),
        (lambda c: c.classify(12345, ["cat"]), TypeError),
        (lambda c: c.get_label_set("../admin"), ValueError),
        (lambda c: c.put_label_set("s", ["a"], timeout_s=-1), ValueError),
        (lambda c: c.put_label_set("s", ["a"], poll_s=0), ValueError),
        (lambda c: c.put_label_set("s", "a"), TypeError),
    ],
)
def test_mistakes_are_caught_before_anything_is_sent(
    call: Callable[[Client], Any], kind: type[Exception]
) -> None:
    rec = Recorder(OK)
    with rec.client() as c, pytest.raises(kind):
        call(c)
    assert rec.requests == []


# --- label sets built in the background, on the wire ---

SET = {"name": "s", "labels": 2, "templates": "default", "created_at": "2026-12-02T00:00:00+00:00"}


def build(status: str, done: int = 1, eta: float | None = None, error: Any = None) -> dict[str, Any]:
    return {
        "status": status,
        "model": MODEL,
        "labels": 2,
        "templates": 2,
        "prompts_done": done,
        "prompts_total": 4,
        "prompts_per_s": 2.0,
        "eta_s": eta,
        "elapsed_s": 1.5,
        "started_at": "2026-12-02T00:00:01+00:00",
        "source": "encoded" if status == "ready" else None,
        "error": error,
        "queue": 0,  # a field of a newer server
    }


def accepted(eta: float | None) -> tuple[int, dict[str, str], Any]:
    body = {
        **SET,
        "status": "building",
        "build": build("building", eta=eta),
        "status_url": "/v1/label-sets/s",
    }
    return 202, {"Location": "/v1/label-sets/s"}, body


def viewed(status: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
    body = {**SET, "labels": ["a", "b"], "templates": ["a photo of a {}.", "a {}."], "template_set": None}
    body |= {
        "status": status,
        "build": build(status, **kw),
        "staged": None,
        "calibration": {"status": "none"},
    }
    return 200, {}, body


FAILURE = {"code": "label_set_build_failed", "message": "building label set 's' failed: RuntimeError: broke"}


def test_a_202_is_followed_by_gets_about_its_eta_apart_until_ready() -> None:
    rec = Recorder(
        accepted(3.0),
        viewed("building", done=2, eta=12.0),  # at most 5 s apart
        viewed("building", done=3, eta=0.05),  # at least 0.2 s
        viewed("building", done=3, eta=None),  # no ETA: 1 s
        viewed("ready", done=4),
    )
    with rec.client(admin_token="t") as c:
        got = c.put_label_set("s", ["a", "b"], ["a photo of a {}.", "a {}."])
    assert rec.sleeps == [3.0, 5.0, 0.2, 1.0]
    assert [(r.method, r.url.path) for r in rec.requests] == [("PUT", "/v1/label-sets/s")] + [
        ("GET", "/v1/label-sets/s")
    ] * 4
    assert all(r.url.query == b"" for r in rec.requests)  # never ?wait=true
    assert rec.bodies()[0] == {"labels": ["a", "b"], "templates": ["a photo of a {}.", "a {}."]}
    assert (got.name, got.label_count, got.status, got.status_url) == ("s", 2, "ready", "/v1/label-sets/s")
    assert got.build is not None and (got.build.status, got.build.prompts_done, got.build.fraction) == (
        "ready",
        4,
        1.0,
    )
    assert got.build.raw == {"queue": 0} and got.build.model.version == "v1"
    assert got.embeddings is not None and (got.embeddings.source, got.embeddings.build_ms) == (
        "encoded",
        1500.0,
    )


def test_poll_s_sets_the_pace_and_wait_false_returns_the_202_at_once() -> None:
    rec = Recorder(accepted(30.0), viewed("building", eta=30.0), viewed("ready", done=4))
    with rec.client() as c:
        assert c.put_label_set("s", ["a", "b"], poll_s=0.5).status == "ready"
    assert rec.sleeps == [0.5, 0.5] and len(rec.requests) == 3
    rec = Recorder(accepted(30.0), viewed("ready"))
    with rec.client() as c:
        got = c.put_label_set("s", ["a", "b"], wait=False)
    assert rec.sleeps == [] and [r.method for r in rec.requests] == ["PUT"]
    assert (got.status, got.status_url, got.embeddings, got.raw) == ("building", "/v1/label-sets/s", None, {})
    assert got.build is not None and (got.build.eta_s, got.build.fraction, got.build.error) == (
        30.0,
        0.25,
        None,
    )


def test_waiting_past_timeout_s_raises_a_timeout_error_with_the_last_progress() -> None:
    rec = Recorder(accepted(None), viewed("building", done=2))  # building forever
    with rec.client() as c, pytest.raises(LabelSetBuildTimeout) as e:
        c.put_label_set("s", ["a", "b"], timeout_s=3.5)
    assert rec.sleeps == [1.0, 1.0, 1.0, 0.5]  # the last sleep ends at the deadline, then one more GET
    assert [r.method for r in rec.requests] == ["PUT"] + ["GET"] * 4  # no DELETE: the build goes on
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, ZeroshotError)
    assert (e.value.code, e.value.status) == ("label_set_build_timeout", None)
    assert "3.5 s" in e.value.message and "2 of 4 prompts" in e.value.message
    assert e.value.build is not None and e.value.build.prompts_done == 2
    rec = Recorder(accepted(None), viewed("ready"))
    with rec.client() as c, pytest.raises(LabelSetBuildTimeout):
        c.put_label_set("s", ["a", "b"], timeout_s=0)
    assert rec.sleeps == [] and len(rec.requests) == 1


def test_a_build_that_fails_raises_its_code_and_message() -> None:
    rec = Recorder(accepted(2.0), viewed("building", eta=2.0), viewed("failed", error=FAILURE))
    with rec.client() as c, pytest.raises(LabelSetBuildFailed) as e:
        c.put_label_set("s", ["a", "b"])
    assert (e.value.code, e.value.message, e.value.status) == (FAILURE["code"], FAILURE["message"], 409)
    assert isinstance(e.value, ClientError) and rec.sleeps == [2.0, 2.0] and len(rec.requests) == 3
    assert e.value.build is not None and e.value.build.error is not None
    assert (e.value.build.status, e.value.build.error.message) == ("failed", FAILURE["message"])
    refused = (409, {}, {"error": {**FAILURE, "detail": None}})  # it failed within the PUT's wait
    for call in (lambda c: c.put_label_set("s", ["a"]), lambda c: c.classify(RED, label_set="s")):
        rec = Recorder(refused, OK)
        with rec.client() as c, pytest.raises(LabelSetBuildFailed) as e:
            call(c)
        assert (e.value.code, e.value.status, e.value.build) == ("label_set_build_failed", 409, None)
        assert rec.sleeps == [] and len(rec.requests) == 1  # not retried


def test_a_put_superseded_meanwhile_is_not_waited_for() -> None:
    rec = Recorder((200, {}, {**SET, "status": "superseded", "build": build("superseded")}), viewed("ready"))
    with rec.client() as c:
        got = c.put_label_set("s", ["a", "b"])
    assert (got.status, got.embeddings) == ("superseded", None) and got.build is not None
    assert rec.sleeps == [] and len(rec.requests) == 1


def test_get_label_set_shows_status_build_and_staged_and_an_older_server_reads_as_ready() -> None:
    status, headers, body = viewed("building", done=3, eta=0.5)
    body["staged"] = {"name": "s", "labels": 3, "templates": 2, "created_at": "2026-12-02T00:00:02+00:00"}
    older = {k: v for k, v in body.items() if k not in ("status", "build", "staged")}
    listed = {"label_sets": [{**SET, "status": "failed"}, {**SET, "name": "t"}]}
    rec = Recorder((status, headers, body), (200, {}, older), (200, {}, listed))
    with rec.client() as c:
        got, old, sets = c.get_label_set("s"), c.get_label_set("s"), c.label_sets()
    assert (got.status, got.labels, got.raw) == ("building", ["a", "b"], {})
    assert got.build is not None and (got.build.prompts_done, got.build.eta_s) == (3, 0.5)
    assert got.staged is not None and (got.staged.label_count, got.staged.templates) == (3, 2)
    assert got.staged.status == "building"  # a newer definition being built while this one serves
    assert (old.status, old.build, old.staged) == ("ready", None, None)
    assert [(s.name, s.status) for s in sets] == [("s", "failed"), ("t", "ready")]


def test_classify_naming_a_set_still_building_is_retried_after_its_retry_after() -> None:
    def building(wait: str) -> tuple[int, dict[str, str], Any]:
        err = {"code": "label_set_building", "message": "still being built", "detail": build("building")}
        return 503, {"Retry-After": wait}, {"error": err}

    rec = Recorder(building("4"), OK)
    with rec.client() as c:
        assert c.classify(RED, label_set="s").model.version == "v1"
    assert rec.sleeps == [4.0] and len(rec.requests) == 2
    rec = Recorder(building("60"), OK)  # past the default 30 s budget: raised at once, to decide on
    with rec.client() as c, pytest.raises(UnavailableError) as e:
        c.classify(RED, label_set="s")
    assert (e.value.code, e.value.status, e.value.retry_after) == ("label_set_building", 503, 60.0)
    assert e.value.detail["status"] == "building" and rec.sleeps == [] and len(rec.requests) == 1


def test_the_async_client_polls_times_out_and_fails_alike() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def put(rec: Recorder, **kw: Any) -> Any:
        async with AsyncClient("http://zeroshot.test", transport=httpx.MockTransport(rec), sleep=sleep) as c:
            try:
                return await c.put_label_set("s", ["a", "b"], **kw)
            except ZeroshotError as e:
                return e

    ready = asyncio.run(put(Recorder(accepted(3.0), viewed("building", eta=12.0), viewed("ready", done=4))))
    assert ready.status == "ready" and ready.embeddings.source == "encoded" and waits == [3.0, 5.0]
    waits.clear()
    late = asyncio.run(put(Recorder(accepted(None), viewed("building")), timeout_s=2))
    assert isinstance(late, LabelSetBuildTimeout) and waits == [1.0, 1.0]
    waits.clear()
    failed = asyncio.run(put(Recorder(accepted(None), viewed("failed", error=FAILURE)), poll_s=0.3))
    assert isinstance(failed, LabelSetBuildFailed) and failed.code == FAILURE["code"] and waits == [0.3]
    quick = Recorder(accepted(None))
    assert asyncio.run(put(quick, wait=False)).status == "building" and len(quick.requests) == 1
