"""Reliability II, bounds on one request's work: bounded JSON and multipart parsing, template and
prompt budgets, and labels that only the tokenizer's cleaning tells apart (over the fake encoder)."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.fakes import fake_app

ADMIN = {"Authorization": "Bearer admin-token-123"}


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = fake_app(
        tmp_path_factory.mktemp("limits"),
        admin_token=ADMIN["Authorization"].split()[1],
        max_templates_per_request=20,
        max_prompts_per_request=100,
        max_prompts_per_label_set=400,
    )
    with TestClient(app) as c:
        yield c


def error_of(r: object, status: int, code: str) -> dict:
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    err = r.json()["error"]  # type: ignore[attr-defined]
    assert err["code"] == code and err["message"], err
    return err


def test_deeply_nested_json_is_a_400_without_a_traceback(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    deep = "[" * 100_000 + "]" * 100_000
    r = client.post("/v1/classify", content=deep, headers={"content-type": "application/json"})
    assert "nested more than 200 levels" in error_of(r, 400, "invalid_json")["message"]
    # the same depth inside a value, and in the form fields that hold JSON
    body = '{"images": [], "labels": ' + deep + "}"
    error_of(
        client.post("/v1/classify", content=body, headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    files = [("image", ("x.png", png(), "image/png"))]
    r = client.post("/v1/classify", files=files, data={"labels": "[" * 50_000})
    error_of(r, 422, "invalid_labels")
    r = client.post("/v1/classify", files=files, data={"labels": ["a", "b"], "templates": "[" * 50_000})
    assert "nested too deeply" in error_of(r, 422, "invalid_templates")["message"]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


def test_multipart_part_headers_are_bounded(client: TestClient) -> None:
    boundary = "b0undary"

    def part(headers: str, value: str) -> str:
        return f"--{boundary}\r\n{headers}\r\n\r\n{value}\r\n"

    disposition = 'Content-Disposition: form-data; name="labels"'
    huge = part(disposition + "\r\nX-Pad: " + "a" * 100_000, "cat")
    many = part(disposition + "".join(f"\r\nX-{i}: v" for i in range(12)), "cat")
    for body in (huge, many):
        r = client.post(
            "/v1/classify",
            content=(body + f"--{boundary}--\r\n").encode(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert "headers are too large" in error_of(r, 413, "field_too_large")["message"]


def test_templates_and_prompts_per_request_are_bounded(client: TestClient) -> None:
    img = base64.b64encode(png()).decode()
    many = [f"photo {i} of a {{}}." for i in range(21)]
    r = client.post("/v1/classify", json={"images": [img], "labels": ["a", "b"], "templates": many})
    err = error_of(r, 413, "too_many_templates")
    assert "21 templates" in err["message"] and err["detail"] == {"templates": 21, "limit": 20}
    labels = [f"label {i}" for i in range(11)]
    ten = many[:10]
    r = client.post("/v1/classify", json={"images": [img], "labels": labels, "templates": ten})
    err = error_of(r, 413, "too_many_prompts")
    assert "110 prompts" in err["message"] and "at most 100" in err["message"]
    r = client.post("/v1/embeddings/texts", json={"texts": labels, "templates": ten})
    error_of(r, 413, "too_many_prompts")
    # within the budget, the same request is answered
    ok = client.post("/v1/classify", json={"images": [img], "labels": labels[:10], "templates": ten})
    assert ok.status_code == 200, ok.text
    # a label set has its own, larger budget
    r = client.put("/v1/label-sets/big", json={"labels": labels, "templates": ten}, headers=ADMIN)
    assert r.status_code == 200, r.text
    forty = [f"l{i}" for i in range(41)]
    r = client.put("/v1/label-sets/bigger", json={"labels": forty, "templates": ten}, headers=ADMIN)
    assert "per label set" in error_of(r, 413, "too_many_prompts")["message"]


@pytest.mark.parametrize(
    "twin", [" yellow cross", "Yellow Cross", "yellow\u00a0cross", "yellow  cross", "yellow &amp;cross"]
)
def test_labels_the_model_sees_alike_are_refused_naming_both(client: TestClient, twin: str) -> None:
    img = base64.b64encode(png()).decode()
    first = "yellow &cross" if "&" in twin else "yellow cross"
    r = client.post("/v1/classify", json={"images": [img], "labels": [first, twin]})
    err = error_of(r, 422, "duplicate_labels")
    assert err["detail"]["labels"] == [first, twin]
    assert repr(first) in err["message"] and repr(twin) in err["message"]
    r = client.put("/v1/label-sets/twins", json={"labels": ["cat", first, twin]}, headers=ADMIN)
    error_of(r, 422, "duplicate_labels")
    # the form path too
    r = client.post(
        "/v1/classify",
        files=[("image", ("x.png", png(), "image/png"))],
        data={"labels": json.dumps([first, twin])},
    )
    error_of(r, 422, "duplicate_labels")


def test_labels_that_differ_to_the_model_pass(client: TestClient) -> None:
    img = base64.b64encode(png()).decode()
    r = client.post(
        "/v1/classify", json={"images": [img], "labels": ["yellow cross", "yellow crosses", "yellowcross"]}
    )
    assert r.status_code == 200, r.text
    assert len({x["cosine"] for x in r.json()["results"][0]["labels"]}) == 3
