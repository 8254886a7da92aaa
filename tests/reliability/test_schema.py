"""schemathesis against the live OpenAPI schema: generated requests (with real image bytes where the
schema says images) never get a 5xx, and every response conforms to the schema."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.settings import Settings
from tests.reliability.conftest import ADMIN_TOKEN, live_server, server_settings


def _image(fmt: str, size: tuple[int, int], mode: str, seed: int) -> bytes:
    rng = __import__("numpy").random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype="uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def images(fmt: str) -> st.SearchStrategy[bytes]:
    """Real, decodable files of one format: assorted sizes, modes and contents."""
    mode = st.sampled_from(["RGB", "L"] if fmt == "JPEG" else ["RGB", "L", "RGBA", "P"])
    size = st.tuples(st.integers(1, 300), st.integers(1, 300))
    return st.builds(lambda m, s, seed: _image(fmt, s, m, seed), mode, size, st.integers(0, 2**16))


for media, fmt in (
    ("image/png", "PNG"),
    ("image/jpeg", "JPEG"),
    ("image/webp", "WEBP"),
    ("image/gif", "GIF"),
):
    schemathesis.openapi.media_type(media, images(fmt))
# base64 strings in JSON bodies: real images most of the time, arbitrary base64 otherwise
schemathesis.openapi.format(
    "byte",
    st.one_of(images("PNG"), images("JPEG"), st.binary(max_size=64)).map(
        lambda b: base64.b64encode(b).decode()
    ),
)


# The schema is the app's own (no server needed to read it); the requests go to a live server.
schema = schemathesis.openapi.from_dict(create_app(Settings(models_dir=Path("unused"))).openapi())


@pytest.fixture(scope="module", params=["default", "siglip"])
def base_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server on the default CLIP bundle, and one on a SigLIP bundle (tests/siglip_checkpoint.py)."""
    tmp: Path = tmp_path_factory.mktemp(f"schema-{request.param}")
    kw: dict[str, Any] = {}
    if request.param == "siglip":
        kw = {"models_dir": request.getfixturevalue("siglip_models"), "model_name": "siglip"}
    s = server_settings(tmp, max_labels_per_request=20, max_images_per_request=4, max_queue=64, **kw)
    with live_server(s) as base:
        yield base


@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_no_5xx_and_responses_match_the_schema(base_url: str, case: schemathesis.Case) -> None:
    case.call_and_validate(
        base_url=base_url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=60,
    )
