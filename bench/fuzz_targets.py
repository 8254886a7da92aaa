"""Fuzz targets: each takes arbitrary bytes and must end without an unexpected exception, a 5xx or an
ERROR log. bench/fuzz.py runs them under atheris (coverage-guided libFuzzer); tests/test_fuzz_targets.py
runs them over their seeds and seeded random mutations, so a crash once found stays a regression.

Targets: the image decoder, the JSON and multipart bodies of /v1/classify (through the whole app over
the fake encoder: base64, data URLs, labels, templates, top_k, on_error), the label and template
field parsers, base64 images, and the tokenizer.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from app.api.body import base64_images
from app.api.errors import ApiError
from app.api.fields import parse_labels
from app.settings import Settings
from model.bundle.preprocess import DEFAULT_FORMATS, ImageError, PreprocessConfig, preprocess_bytes
from model.bundle.prompts import TemplateError, resolve_templates
from model.bundle.tokenizer import ClipTokenizer

PRE = PreprocessConfig(image_size=32)
MAX_PIXELS = 4_000_000  # small, so that one input cannot take seconds
BOUNDARY = "fuzzboundary"


class _Errors(logging.Handler):
    """Collects ERROR records: a fuzz input that makes the service log an error is a finding."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@functools.cache
def _client() -> tuple[Any, _Errors]:
    from fastapi.testclient import TestClient

    from tests.fakes import fake_app

    app = fake_app(
        Path(tempfile.mkdtemp(prefix="fuzz-")), max_upload_bytes=256 * 1024, max_image_pixels=MAX_PIXELS
    )
    client = TestClient(app)  # raises the server's own unhandled exceptions, as a crash
    client.__enter__()
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    return client, errors


def _post(content: bytes, content_type: str) -> None:
    client, errors = _client()
    errors.records.clear()
    r = client.post("/v1/classify", content=content, headers={"content-type": content_type})
    if r.status_code >= 500:
        raise AssertionError(f"{r.status_code}: {r.text[:300]}")
    if errors.records:
        raise AssertionError(f"logged an error: {errors.records[0].getMessage()[:300]}")
    if r.status_code != 200 and "error" not in r.json():
        raise AssertionError(f"{r.status_code} without the error body: {r.text[:300]}")


def image_decoder(data: bytes) -> None:
    try:
        out = preprocess_bytes(data, PRE, allowed_formats=DEFAULT_FORMATS, max_pixels=MAX_PIXELS)
    except ImageError:
        return
    assert out.shape == (3, 32, 32), out.shape


def classify_json(data: bytes) -> None:
    _post(data, "application/json")


def classify_multipart(data: bytes) -> None:
    _post(data, f"multipart/form-data; boundary={BOUNDARY}")


def fields(data: bytes) -> None:
    """The labels field (repeated, or one JSON array), templates (a name or a JSON array), base64."""
    text = data.decode("utf-8", "replace")
    with contextlib.suppress(ApiError):
        parse_labels([text], 1000)
    with contextlib.suppress(TemplateError):
        resolve_templates(text)
    with contextlib.suppress(ApiError):
        base64_images([text], _settings())


@functools.cache
def _settings() -> Settings:
    return Settings(max_upload_bytes=256 * 1024)


@functools.cache
def _tokenizer() -> ClipTokenizer:
    return ClipTokenizer.clip_bpe()


def tokenizer(data: bytes) -> None:
    tok = _tokenizer()
    text = data.decode("utf-8", "replace")
    ids = tok.encode(text)
    assert ids[0] == tok.sot_id and ids[-1] == tok.eot_id and len(ids) <= tok.context_length, ids
    assert all(0 <= i < tok.vocab_size for i in ids)
    [n] = tok.token_lengths([text])
    assert n >= len(ids)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "image_decoder": image_decoder,
    "classify_json": classify_json,
    "classify_multipart": classify_multipart,
    "fields": fields,
    "tokenizer": tokenizer,
}


def _image(fmt: str, mode: str = "RGB", size: tuple[int, int] = (12, 9)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 120).save(buf, format=fmt)
    return buf.getvalue()


def _multipart(fields: list[tuple[str, str | bytes]]) -> bytes:
    out = b""
    for name, value in fields:
        if isinstance(value, bytes):
            head = (
                f'Content-Disposition: form-data; name="{name}"; filename="x.png"\r\nContent-Type: image/png'
            )
            body = value
        else:
            head, body = f'Content-Disposition: form-data; name="{name}"', value.encode()
        out += f"--{BOUNDARY}\r\n{head}\r\n\r\n".encode() + body + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def seeds(target: str) -> list[bytes]:
    """Valid and near-valid inputs the fuzzer starts from."""
    png = _image("PNG")
    if target == "image_decoder":
        formats = [
            ("PNG", "RGB"),
            ("PNG", "RGBA"),
            ("PNG", "P"),
            ("PNG", "I;16"),
            ("JPEG", "RGB"),
            ("JPEG", "CMYK"),
        ]
        formats += [("GIF", "P"), ("WEBP", "RGB"), ("BMP", "RGB"), ("TIFF", "RGB"), ("PNG", "L")]
        return [_image(f, m) for f, m in formats]
    b64 = base64.b64encode(png).decode()
    if target == "classify_json":
        bodies: list[dict[str, Any]] = [
            {"images": [b64], "labels": ["red circle", "blue square"]},
            {
                "images": [f"data:image/png;base64,{b64}", b64],
                "labels": ["a", "b"],
                "top_k": 1,
                "on_error": "skip",
            },
            {"images": [b64], "labels": ["cat", "dog"], "templates": ["a photo of a {}.", "a {}"]},
            {"images": [b64], "label_set": "none-such"},
        ]
        return [json.dumps(b).encode() for b in bodies]
    if target == "classify_multipart":
        return [
            _multipart([("image", png), ("labels", "red circle"), ("labels", "blue square")]),
            _multipart([("image", png), ("image", b"junk"), ("labels", '["a", "b"]'), ("on_error", "skip")]),
            _multipart(
                [("image", png), ("labels", '["a", "b"]'), ("templates", "imagenet7"), ("top_k", "1")]
            ),
        ]
    if target == "fields":
        return [
            b'["cat", "dog"]',
            b"imagenet80",
            b'["a photo of a {}.", "the {}"]',
            b64.encode(),
            b"data:;base64,AAAA",
        ]
    if target == "tokenizer":
        return [
            b"a photo of a cat.",
            "caf\u00e9 &amp; na\u00efve \U0001f600".encode(),
            b"<|endoftext|>x<|startoftext|>",
        ]
    raise KeyError(target)
