"""on_error=skip: a multi-image request classifies the good images and gives each bad one its own
error; the default (fail) stays all-or-nothing. Over the fake encoder."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.fakes import fake_app

LABELS = ["red", "green", "blue"]


def png(colour: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(fake_app(tmp_path_factory.mktemp("on-error"), max_upload_bytes=4096)) as c:
        yield c


def images_encoded(client: TestClient) -> int:
    return int(client.get("/v1/models").json()["batcher"]["images"])


def multipart(client: TestClient, files: list[bytes], **form: str) -> Any:
    parts = [("image", (f"{i}.png", b, "image/png")) for i, b in enumerate(files)]
    return client.post("/v1/classify", files=parts, data={"labels": LABELS, **form})


def test_multipart_skip_classifies_the_good_images_and_names_each_bad_one(client: TestClient) -> None:
    red, blue = png((220, 10, 10)), png((10, 10, 220))
    buf = io.BytesIO()  # noise does not compress: over the 4 KiB upload limit
    Image.effect_noise((64, 64), 80).convert("RGB").save(buf, format="PNG")
    files = [red, b"just some text", blue, buf.getvalue()]
    assert len(files[3]) > 4096
    # the default fails the whole request, as before: on the first problem found
    r = multipart(client, files)
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
    assert multipart(client, files[:3]).json()["error"]["code"] == "invalid_image"
    r = multipart(client, files, on_error="skip")
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4
    assert results[1] == {"error": {"code": "invalid_image", "message": results[1]["error"]["message"]}}
    assert results[3]["error"]["code"] == "upload_too_large" and "image 3" in results[3]["error"]["message"]
    # the good ones get the answers they get when sent alone
    alone = multipart(client, [red, blue]).json()["results"]
    assert [results[0], results[2]] == alone
    assert all("error" not in x for x in alone)


def test_json_skip_with_bad_base64_and_formats(client: TestClient) -> None:
    good = base64.b64encode(png((10, 200, 10))).decode()
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, format="ICO")
    images = ["not base64 !!", good, "data:image/png,raw", base64.b64encode(ico.getvalue()).decode()]
    r = client.post("/v1/classify", json={"images": images, "labels": LABELS})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_base64"
    r = client.post("/v1/classify", json={"images": images, "labels": LABELS, "on_error": "skip"})
    assert r.status_code == 200, r.text
    codes = [x.get("error", {}).get("code") for x in r.json()["results"]]
    assert codes == ["invalid_base64", None, "invalid_base64", "unsupported_format"]
    assert len(r.json()["results"][1]["labels"]) == 3


def test_skip_with_every_image_bad_runs_no_encoder(client: TestClient) -> None:
    before = images_encoded(client)
    r = multipart(client, [b"junk", b"\x89PNG\r\n\x1a\nbroken"], on_error="skip")
    assert r.status_code == 200, r.text
    assert [x["error"]["code"] for x in r.json()["results"]] == ["invalid_image", "invalid_image"]
    assert images_encoded(client) == before


def test_request_level_errors_still_fail_the_request(client: TestClient) -> None:
    r = multipart(client, [png((1, 2, 3))] * 17, on_error="skip")
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_images"
    r = multipart(client, [png((1, 2, 3))], on_error="sometimes")
    assert r.status_code == 422 and "on_error must be one of fail, skip" in r.json()["error"]["message"]
    r = client.post("/v1/classify", json={"images": [], "labels": LABELS, "on_error": "skip"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_image"
