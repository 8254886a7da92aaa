"""Hostile and awkward inputs against a live server: each gets its specific status and a clear
message, odd-but-valid images are classified, and the server stays healthy with no 5xx anywhere."""

from __future__ import annotations

import base64
import io
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from model.data.synthetic import SyntheticShapes, all_classes, class_name
from tests.reliability.conftest import ADMIN_TOKEN, live_server, server_settings

CLASSES = [class_name(*c) for c in all_classes()]
SAMPLE = SyntheticShapes(64, seed=5, split="seen", length=4)[0]  # the default model gets it right
LABELS = ["cat", "dog"]


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (the pixel data is a few bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def gif_frames(n: int) -> bytes:
    frames = [Image.new("P", (32, 32), i % 256) for i in range(n)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def palette_with_transparency() -> bytes:
    img = SAMPLE.image.convert("P", palette=Image.Palette.ADAPTIVE)
    img.info["transparency"] = 0
    return encode(img, "PNG", transparency=0)


GOOD = encode(SAMPLE.image, "PNG")
JPEG = encode(SAMPLE.image, "JPEG", quality=95)
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'


def multipart(image: bytes | None = GOOD, labels: Any = LABELS, name: str = "x.png", **fields: Any) -> dict:
    files = [] if image is None else [("image", (name, image, "application/octet-stream"))]
    data: dict[str, Any] = dict(fields)
    if labels is not None:
        data["labels"] = labels
    return {"files": files, "data": data} if files else {"data": data}


def as_json(**body: Any) -> dict:
    return {"json": {"images": [base64.b64encode(GOOD).decode()], "labels": LABELS, **body}}


# (id, request kwargs for POST /v1/classify, status, error code or None for success)
CASES: list[tuple[str, dict, int, str | None]] = [
    # images that must be refused, each for its own reason
    ("empty file", multipart(b""), 422, "invalid_image"),
    ("truncated JPEG", multipart(JPEG[: len(JPEG) // 2], name="x.jpg"), 422, "invalid_image"),
    ("JPEG header only", multipart(JPEG[:20], name="x.jpg"), 422, "invalid_image"),
    ("text renamed .jpg", multipart(b"hello, I am not a picture\n" * 10, name="x.jpg"), 422, "invalid_image"),
    ("random bytes", multipart(np.random.default_rng(0).bytes(4096)), 422, "invalid_image"),
    ("SVG", multipart(SVG, name="x.svg"), 415, "unsupported_format"),
    (
        "PDF",
        multipart(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", name="x.pdf"),
        415,
        "unsupported_format",
    ),
    ("ICO", multipart(encode(Image.new("RGB", (16, 16)), "ICO"), name="x.ico"), 415, "unsupported_format"),
    ("PCX", multipart(encode(Image.new("RGB", (16, 16)), "PCX"), name="x.pcx"), 415, "unsupported_format"),
    ("PNG bomb 100k x 100k", multipart(png_bomb(100_000, 100_000)), 413, "image_too_large"),
    ("PNG bomb 60k x 1k", multipart(png_bomb(60_000, 1_000)), 413, "image_too_large"),
    ("PNG with a corrupt body", multipart(png_bomb(64, 64)), 422, "invalid_image"),
    ("image field sent as text", {"data": {"image": "not a file", "labels": LABELS}}, 422, "invalid_image"),
    ("no image at all", multipart(None), 422, "missing_image"),
    # odd but valid images: classified, not refused
    ("many-frame GIF", multipart(gif_frames(300), name="x.gif"), 200, None),
    ("CMYK JPEG", multipart(encode(SAMPLE.image.convert("CMYK"), "JPEG"), name="x.jpg"), 200, None),
    ("16-bit PNG", multipart(encode(SAMPLE.image.convert("L").convert("I;16"), "PNG")), 200, None),
    ("palette PNG with transparency", multipart(palette_with_transparency()), 200, None),
    ("RGBA PNG", multipart(encode(SAMPLE.image.convert("RGBA"), "PNG")), 200, None),
    ("greyscale PNG", multipart(encode(SAMPLE.image.convert("L"), "PNG")), 200, None),
    ("1x1 PNG", multipart(encode(Image.new("RGB", (1, 1), "red"), "PNG")), 200, None),
    ("20000x1 PNG", multipart(encode(Image.new("RGB", (20000, 1), "blue"), "PNG")), 200, None),
    ("1x20000 PNG", multipart(encode(Image.new("RGB", (1, 20000), "blue"), "PNG")), 200, None),
    ("WEBP", multipart(encode(SAMPLE.image, "WEBP"), name="x.webp"), 200, None),
    ("BMP", multipart(encode(SAMPLE.image, "BMP"), name="x.bmp"), 200, None),
    ("float TIFF", multipart(encode(SAMPLE.image.convert("F"), "TIFF"), name="x.tif"), 200, None),
    ("wrong file extension", multipart(JPEG, name="x.png"), 200, None),
    # bodies
    (
        "wrong content type",
        {"content": b"labels=cat", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("no content type", {"content": b"{}"}, 415, "unsupported_media_type"),
    (
        "multipart without boundary",
        {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
        400,
        "invalid_multipart",
    ),
    (
        "invalid JSON",
        {"content": b'{"images": [', "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    (
        "JSON that is not UTF-8",
        {"content": b'{"a": "\xff"}', "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    ("JSON array body", {"json": ["images"]}, 422, "invalid_request"),
    ("JSON with an unknown field", as_json(colour="red"), 422, "invalid_request"),
    ("JSON image not a string", {"json": {"images": [12], "labels": LABELS}}, 422, "invalid_request"),
    ("invalid base64", {"json": {"images": ["not base64!!"], "labels": LABELS}}, 422, "invalid_base64"),
    (
        "data URL not base64",
        {"json": {"images": ["data:image/png,abc"], "labels": LABELS}},
        422,
        "invalid_base64",
    ),
    (
        "base64 of text",
        {"json": {"images": [base64.b64encode(b"hi").decode()], "labels": LABELS}},
        422,
        "invalid_image",
    ),
    # labels
    ("too many labels", multipart(labels=[f"l{i}" for i in range(1001)]), 422, "too_many_labels"),
    ("too many labels in JSON", as_json(labels=[f"l{i}" for i in range(1001)]), 422, "too_many_labels"),
    ("1 MB label in a form field", multipart(labels=["x" * 1_048_600]), 413, "field_too_large"),
    ("1 MB label in JSON", as_json(labels=["cat", "x" * 1_048_600]), 422, "label_too_long"),
    ("label longer than the context", multipart(labels=["cat", "zebra " * 90]), 422, "label_too_long"),
    ("empty label", multipart(labels=["cat", ""]), 422, "invalid_labels"),
    ("blank label", multipart(labels=["cat", " \t "]), 422, "invalid_labels"),
    ("empty label list in JSON", as_json(labels=[]), 422, "invalid_labels"),
    ("duplicate labels", multipart(labels=["cat", "dog", "cat"]), 422, "duplicate_labels"),
    ("NUL in a label", multipart(labels=["ca\x00t", "dog"]), 422, "invalid_labels"),
    ("escape character in a label", multipart(labels=["cat\x1b[31m", "dog"]), 422, "invalid_labels"),
    ("newline in a label", as_json(labels=["cat\ndog", "bird"]), 422, "invalid_labels"),
    ("labels JSON of numbers", multipart(labels="[1, 2]"), 422, "invalid_labels"),
    ("labels broken JSON", multipart(labels='["cat", '), 422, "invalid_labels"),
    ("unicode, emoji and braces", multipart(labels=["猫 🐈", "{dog}", "gato ñ"]), 200, None),
    # label sets and templates
    ("unknown label set", multipart(labels=None, label_set="nope"), 404, "label_set_not_found"),
    (
        "label set name with a path",
        as_json(labels=None, label_set="../../etc/passwd"),
        422,
        "invalid_label_set_name",
    ),
    ("labels and a label set", multipart(label_set="nope"), 422, "invalid_request"),
    ("template without {}", multipart(templates='["a photo"]'), 422, "invalid_templates"),
    ("unknown template set", multipart(templates="klingon"), 422, "invalid_templates"),
    ("templates JSON of numbers", as_json(templates=[1, 2]), 422, "invalid_request"),
    # top_k
    ("top_k 0", multipart(top_k="0"), 422, "invalid_top_k"),
    ("top_k negative", multipart(top_k="-5"), 422, "invalid_top_k"),
    ("top_k not a number", multipart(top_k="lots"), 422, "invalid_top_k"),
    ("top_k huge", multipart(top_k="99999999999999999999"), 200, None),
    ("top_k huge in JSON", as_json(top_k=10**30), 200, None),
]


@pytest.fixture(scope="module", params=["default", "siglip"])
def model(request: pytest.FixtureRequest) -> str:
    """The battery runs against the default CLIP bundle and against a SigLIP one (sigmoid scoring,
    square preprocessing, fixed-length SentencePiece tokenizer, all from its manifest)."""
    return str(request.param)


@pytest.fixture(scope="module")
def server(
    model: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    kw: dict[str, Any] = {}
    if model == "siglip":
        kw = {"models_dir": request.getfixturevalue("siglip_models"), "model_name": "siglip"}
    with live_server(server_settings(tmp_path_factory.mktemp(f"hostile-{model}"), **kw)) as base:
        yield base


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("kwargs", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input(http: httpx.Client, kwargs: dict, status: int, code: str | None) -> None:
    r = http.post("/v1/classify", **kwargs)
    assert r.status_code == status, r.text[:500]
    if code is None:
        labels = r.json()["results"][0]["labels"]
        assert labels and all(-1 <= x["cosine"] <= 1 for x in labels)
    else:
        err = r.json()["error"]
        assert err["code"] == code and len(err["message"]) > 10, err
    assert http.get("/healthz").status_code == 200


def test_exif_rotation_is_undone_before_classifying(http: httpx.Client) -> None:
    """A photo stored sideways with an EXIF orientation tag is seen upright."""
    upright = SyntheticShapes(64, seed=9, split="seen", length=8)
    img = next(s for s in upright if "triangle" in s.label).image.resize((128, 96))
    img.paste((255, 255, 255), (0, 0, 128, 20))  # a white band on top: the orientation is unmistakable
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways = img.rotate(90, expand=True)  # stored rotated 90 degrees counter-clockwise

    def embed(data: bytes) -> np.ndarray:
        r = http.post("/v1/embeddings/images", files=[("image", ("p.jpg", data, "image/jpeg"))])
        assert r.status_code == 200, r.text
        return np.array(r.json()["embeddings"][0])

    straight = embed(encode(img, "JPEG", quality=95))
    tagged = embed(encode(sideways, "JPEG", quality=95, exif=exif.tobytes()))
    untagged = embed(encode(sideways, "JPEG", quality=95))
    assert float(straight @ tagged) > 0.99  # the same picture once the tag is applied
    assert float(straight @ untagged) < float(straight @ tagged) - 0.01  # and the tag mattered
    top = [
        http.post(
            "/v1/classify", files=[("image", ("p.jpg", b, "image/jpeg"))], data={"labels": CLASSES}
        ).json()["results"][0]["labels"][0]["label"]
        for b in (encode(img, "JPEG", quality=95), encode(sideways, "JPEG", quality=95, exif=exif.tobytes()))
    ]
    assert top[0] == top[1]


def test_an_oversized_body_is_refused_before_it_is_sent(server: str) -> None:
    """Content-Length of 1 GB: the answer (413) comes after the headers alone, nothing is buffered."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000000\r\n\r\n" + b"x" * 1024
        )
        t = time.monotonic()
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 413") and b"body_too_large" in head
    assert time.monotonic() - t < 5


def test_wrong_api_keys_are_refused(tmp_path: Path) -> None:
    with (
        live_server(server_settings(tmp_path, api_keys="right-key")) as base,
        httpx.Client(base_url=base) as c,
    ):
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key"},
            {"X-API-Key": "right-ke"},
            {"Authorization": "Basic cmlnaHQta2V5"},
        ):
            r = c.post("/v1/classify", headers=headers, **multipart())
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert c.post("/v1/classify", headers={"X-API-Key": "right-key"}, **multipart()).status_code == 200
        assert (
            c.put("/v1/label-sets/x", json={"labels": ["a"]}, headers={"X-API-Key": "right-key"}).status_code
            == 401
        )
        ok = c.put(
            "/v1/label-sets/x", json={"labels": ["a"]}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert ok.status_code == 200


def test_the_server_is_healthy_and_never_answered_5xx(http: httpx.Client, model: str) -> None:
    """Runs after the battery (same module): no request above produced a server error."""
    assert http.get("/readyz").status_code == 200
    r = http.post("/v1/classify", files=[("image", ("x.png", GOOD, "image/png"))], data={"labels": CLASSES})
    assert r.status_code == 200
    if model == "default":  # the trained model knows the sample; the SigLIP's weights are random
        assert r.json()["results"][0]["labels"][0]["label"] == SAMPLE.label
    metrics = http.get("/metrics").text
    statuses = {
        line.split('status="')[1][:3] for line in metrics.splitlines() if "zeroshot_requests_total{" in line
    }
    assert statuses and not any(s.startswith("5") for s in statuses), statuses
