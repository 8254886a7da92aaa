"""Images given by URL over the API (JSON {"url": ...} and the multipart field image_url), over the
fake encoder. The image host is a server this test starts on 127.0.0.1; nothing else is contacted."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.fakes import fake_app

LABELS = ["red", "green", "blue"]


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = {"/red.png": png((255, 0, 0)), "/blue.png": png((0, 0, 255))}


class ImageHost(ThreadingHTTPServer):
    requests: list[str]


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[ImageHost, str]]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server: ImageHost = self.server  # type: ignore[assignment]
            server.requests.append(self.path)
            body = IMAGES.get(self.path)
            if self.path == "/to-metadata":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
                return
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ImageHost(("127.0.0.1", 0), Handler)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def client(tmp: Path, **kw: Any) -> TestClient:
    return TestClient(fake_app(tmp, **kw))


def classify(c: TestClient, images: list[Any], **kw: Any) -> Any:
    return c.post("/v1/classify", json={"images": images, "labels": LABELS, **kw})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_urls_are_refused_by_default_with_a_clear_error(tmp_path: Path, host: tuple[ImageHost, str]) -> None:
    server, base = host
    before = len(server.requests)
    with client(tmp_path) as c:
        r = classify(c, [{"url": f"{base}/red.png"}])
        assert r.status_code == 403 and r.json()["error"]["code"] == "url_fetch_disabled"
        assert "ZEROSHOT_URL_FETCH" in r.json()["error"]["message"]
        r = c.post("/v1/classify", data={"labels": LABELS, "image_url": f"{base}/red.png"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "url_fetch_disabled"
        # a data: URL needs no fetching, so it works with fetching off
        r = classify(c, [{"url": "data:image/png;base64," + b64(IMAGES["/red.png"])}])
        assert r.status_code == 200, r.text
    assert len(server.requests) == before


def test_loopback_is_refused_unless_allow_listed(tmp_path: Path, host: tuple[ImageHost, str]) -> None:
    server, base = host
    before = len(server.requests)
    with client(tmp_path, url_fetch=True) as c:
        r = classify(c, [{"url": f"{base}/red.png"}])
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["code"] == "url_refused" and "loopback" in err["message"]
    assert len(server.requests) == before  # refused before connecting


def test_a_url_image_is_classified_and_embedded_as_the_same_file_uploaded(
    tmp_path: Path, host: tuple[ImageHost, str]
) -> None:
    server, base = host
    with client(tmp_path, url_fetch=True, url_allow="127.0.0.0/8") as c:
        by_url = classify(c, [{"url": f"{base}/red.png"}, b64(IMAGES["/blue.png"])])
        by_file = classify(c, [b64(IMAGES["/red.png"]), b64(IMAGES["/blue.png"])])
        assert by_url.status_code == 200, by_url.text
        assert by_url.json()["results"] == by_file.json()["results"]
        form = c.post(
            "/v1/classify",
            files=[("image", ("b.png", IMAGES["/blue.png"], "image/png"))],
            data={"labels": LABELS, "image_url": f"{base}/red.png"},
        )
        assert form.status_code == 200, form.text
        # multipart: the files first, then the URLs
        assert form.json()["results"] == list(reversed(by_file.json()["results"]))
        e_url = c.post("/v1/embeddings/images", json={"images": [{"url": f"{base}/blue.png"}]})
        e_file = c.post("/v1/embeddings/images", json={"images": [b64(IMAGES["/blue.png"])]})
        assert e_url.status_code == 200 and e_url.json()["embeddings"] == e_file.json()["embeddings"]
    assert "/red.png" in server.requests and "/blue.png" in server.requests


def test_url_failures_name_the_image_and_skip_keeps_the_others(
    tmp_path: Path, host: tuple[ImageHost, str]
) -> None:
    _, base = host
    with client(tmp_path, url_fetch=True, url_allow="127.0.0.0/8") as c:
        r = classify(c, [b64(IMAGES["/red.png"]), {"url": f"{base}/missing.png"}])
        assert r.status_code == 422 and r.json()["error"]["code"] == "url_unreachable"
        assert r.json()["error"]["message"].startswith("image 1: ")
        r = classify(c, [{"url": f"{base}/to-metadata"}])
        assert r.status_code == 403 and r.json()["error"]["code"] == "url_refused"
        r = classify(c, [b64(IMAGES["/red.png"]), {"url": "ftp://127.0.0.1/x"}], on_error="skip")
        assert r.status_code == 200, r.text
        first, second = r.json()["results"]
        assert first["labels"] and second["error"]["code"] == "url_refused"
        r = classify(c, [{"url": 7}])
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        r = classify(c, [{"url": f"{base}/red.png", "extra": 1}])
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
