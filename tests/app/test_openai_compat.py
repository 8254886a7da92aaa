"""POST /v1/embeddings in OpenAI's shapes: the official `openai` package, pointed at a live server on
127.0.0.1 (over the fake encoder), gets the same vectors as /v1/embeddings/texts and /images."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from app.main import create_app
from tests.fakes import FAKE_DIM, fake_runtime, fake_settings
from tests.servers import live_server


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


RED = png((255, 0, 0))
RED_URL = "data:image/png;base64," + base64.b64encode(RED).decode()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = fake_settings(tmp_path_factory.mktemp("openai"), api_keys="sk-test-key")
    with live_server(settings, create_app(settings, fake_runtime)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test-key", max_retries=0)


def ours(base: str, route: str, body: dict[str, object]) -> np.ndarray:
    r = httpx.post(
        f"{base}/v1/embeddings/{route}", json=body, headers={"Authorization": "Bearer sk-test-key"}
    )
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"], np.float32)


def test_the_openai_package_embeds_texts_as_the_native_route_does(client: openai.OpenAI, base: str) -> None:
    texts = ["a red circle", "a blue square", "a photo of a dog"]
    native = ours(base, "texts", {"texts": texts})
    # unasked, the package asks for base64 and decodes it; asked for base64, it hands the strings over
    for fmt in (None, "float", "base64"):
        kw = {} if fmt is None else {"encoding_format": fmt}
        got = client.embeddings.create(model="default", input=texts, **kw)  # type: ignore[call-overload]
        assert got.object == "list" and got.model == "default"
        assert [d.index for d in got.data] == [0, 1, 2]
        if fmt == "base64":
            vectors = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in got.data])
        else:
            vectors = np.array([d.embedding for d in got.data], np.float32)
        assert vectors.shape == (3, FAKE_DIM)
        np.testing.assert_allclose(vectors, native, atol=1e-6)
        assert got.usage.prompt_tokens == got.usage.total_tokens > 3 * 2  # start and end tokens at least
    one = client.embeddings.create(model="default", input="a red circle")
    assert len(one.data) == 1 and len(one.data[0].embedding) == FAKE_DIM


def test_an_image_as_a_data_url_and_a_mixed_list_keep_their_order(client: openai.OpenAI, base: str) -> None:
    got = client.embeddings.create(model="default", input=["a red circle", RED_URL, "a blue square"])
    vectors = np.array([d.embedding for d in got.data], np.float32)
    image = ours(base, "images", {"images": [base64.b64encode(RED).decode()]})
    texts = ours(base, "texts", {"texts": ["a red circle", "a blue square"]})
    np.testing.assert_allclose(vectors[1], image[0], atol=1e-6)
    np.testing.assert_allclose(vectors[[0, 2]], texts, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "gpt-4", "input": "x"}, 404, "model_not_found"),
        ({"model": "default", "input": "x", "dimensions": 3}, 422, "unsupported_dimensions"),
        ({"model": "default", "input": "x", "encoding_format": "int8"}, 422, "unsupported_encoding_format"),
        ({"model": "default", "input": []}, 422, "invalid_input"),
        ({"model": "default", "input": [[1, 2, 3]]}, 422, "invalid_input"),
        ({"model": "default", "input": [""]}, 422, "invalid_input"),
        ({"model": "default", "input": ["data:text/plain;base64,aGk="]}, 422, "invalid_input"),
        ({"model": "default", "input": ["data:image/png;base64,!!!"]}, 422, "invalid_base64"),
        ({"model": "default", "input": ["https://example.com/cat.jpg"]}, 403, "url_fetch_disabled"),
        ({"model": "default"}, 422, "invalid_request"),
        ({"model": "default", "input": "x", "colour": "red"}, 422, "invalid_request"),
    ],
)
def test_bad_requests_get_a_clear_4xx(base: str, body: dict[str, object], status: int, code: str) -> None:
    r = httpx.post(f"{base}/v1/embeddings", json=body, headers={"Authorization": "Bearer sk-test-key"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_the_package_raises_the_servers_error_and_the_key_is_checked(
    client: openai.OpenAI, base: str
) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="no-such-model", input="x")
    assert "no-such-model" in str(e.value)
    stranger = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.embeddings.create(model="default", input="x")
    right = client.embeddings.create(model="default", input="x", dimensions=FAKE_DIM)
    assert len(right.data[0].embedding) == FAKE_DIM


def test_the_route_is_in_the_openapi_schema(base: str) -> None:
    schema = httpx.get(f"{base}/openapi.json").json()
    body = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "input", "encoding_format", "dimensions"} <= set(body["properties"])
