"""The browser page at GET /, driven in headless Chromium against a live server on the default model.

Needs Debian's chromium at /usr/bin/chromium and the `playwright` Python package (its own browser
downloads are not used). Skipped without them, except under CI, where it fails.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from model.data.synthetic import SyntheticShapes, all_classes, class_name
from tests.servers import live_server, service_settings

CHROMIUM = Path("/usr/bin/chromium")
CLASSES = [class_name(*c) for c in all_classes()]
TIMEOUT_MS = 15_000


def _require_browser() -> Any:
    """playwright.sync_api, or skip (fail under CI) with how to install what is missing."""
    missing = []
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
        missing.append("the playwright package (.venv/bin/pip install playwright; no `playwright install`)")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_api


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# Seen-class images that the default model ranks first with p > 0.99 (all 36 classes, default templates).
SEEN = SyntheticShapes(64, seed=1, split="seen", length=8)
FIRST, SECOND = SEEN[1], SEEN[5]  # a red triangle, a green square


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live uvicorn server on a free loopback port, in a thread; yields its base URL."""
    with live_server(service_settings(tmp_path_factory.mktemp("page"))) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _require_browser()
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Uncaught exceptions thrown by the page's scripts."""
    return []


@pytest.fixture
def page(browser: Any, server: str, page_errors: list[str]) -> Iterator[Any]:
    context = browser.new_context(base_url=server)
    context.set_default_timeout(TIMEOUT_MS)
    p = context.new_page()
    p.on("pageerror", lambda e: page_errors.append(str(e)))
    p.goto("/")
    try:
        yield p
    finally:
        context.close()


def wait_done(page: Any) -> str:
    """Waits until the running request has painted the page; returns "done" or "error"."""
    page.wait_for_selector("#classify-form:is([data-state=done], [data-state=error])")
    return str(page.get_attribute("#classify-form", "data-state"))


def shown_results(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        "#results li",
        """lis => lis.map(li => ({
            label: li.querySelector('.label').textContent,
            probability: li.querySelector('.probability').textContent,
            cosine: li.querySelector('.cosine').textContent,
            width: li.querySelector('.bar .fill').style.width,
        }))""",
    )


def check_ranking(rows: list[dict[str, Any]], truth: str, k: int) -> None:
    assert len(rows) == k, rows
    assert rows[0]["label"] == truth, rows
    probs = []
    for row in rows:
        assert row["probability"].endswith("%"), row
        p = float(row["probability"].rstrip("%"))
        c = float(row["cosine"])
        assert 0.0 <= p <= 100.0 and -1.0 <= c <= 1.0, row
        assert len(row["cosine"].split(".")[1]) == 3, row  # cosine to three decimals
        assert float(row["width"].rstrip("%")) == pytest.approx(p, abs=0.06), (
            row
        )  # the bar is the probability
        probs.append(p)
    assert probs == sorted(probs, reverse=True), rows
    assert probs[0] > 50.0, rows


def test_the_page_classifies_an_image_against_typed_labels(
    page: Any, server: str, page_errors: list[str]
) -> None:
    assert "zeroshot" in page.title()
    page.wait_for_selector("#model[data-state=ready]")
    version = httpx.get(f"{server}/v1/models").json()["version"]
    assert page.text_content("#model") == f"default · {version}"
    assert page.input_value("#templates") == "default" and page.input_value("#top-k") == "5"

    page.set_input_files(
        "#image", files=[{"name": "shape.png", "mimeType": "image/png", "buffer": png(FIRST.image)}]
    )
    # The preview has no size until the browser has decoded the image, so a bare is_visible()
    # right after the change event races it (it failed once in CI): wait for it to show.
    page.wait_for_selector("#preview", state="visible", timeout=10_000)
    # Lines and commas both separate labels; blank entries are dropped.
    page.fill("#labels", "\n".join(", ".join(CLASSES[i : i + 6]) for i in range(0, len(CLASSES), 6)) + "\n\n")
    page.fill("#top-k", "4")
    page.fill("#api-key", "secret-key")
    with page.expect_request("**/v1/classify") as req:
        page.click("#submit")
    assert req.value.headers.get("authorization") == "Bearer secret-key"
    assert wait_done(page) == "done"
    check_ranking(shown_results(page), FIRST.label, 4)
    assert page.is_hidden("#error")
    first = page.locator("#results li").first
    assert first.get_attribute("data-label") == FIRST.label
    assert 0.5 < float(first.get_attribute("data-probability") or "nan") <= 1.0

    # A new image (dropped this time) is classified again without pressing the button.
    b64 = base64.b64encode(png(SECOND.image)).decode()
    with page.expect_response("**/v1/classify"):
        page.evaluate(
            """b64 => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
                document.getElementById('drop').dispatchEvent(
                    new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""",
            b64,
        )
    page.wait_for_selector(f'#results li[data-rank="1"][data-label="{SECOND.label}"]')
    assert wait_done(page) == "done"
    check_ranking(shown_results(page), SECOND.label, 4)
    assert "dropped.png" in (page.text_content("#image-name") or "")

    # The API key is remembered by the browser.
    page.reload()
    assert page.input_value("#api-key") == "secret-key"
    assert page_errors == []


def test_api_errors_are_shown_on_the_page(page: Any, server: str, page_errors: list[str]) -> None:
    def api_message(files: list[tuple[str, tuple[str, bytes, str]]], labels: str) -> str:
        r = httpx.post(f"{server}/v1/classify", files=files, data={"labels": labels})
        assert r.status_code >= 400, r.text
        return str(r.json()["error"]["message"])

    img = png(FIRST.image)
    # No labels at all.
    page.set_input_files("#image", files=[{"name": "shape.png", "mimeType": "image/png", "buffer": img}])
    page.fill("#labels", " \n , ")
    page.click("#submit")
    assert wait_done(page) == "error"
    expected = api_message([("image", ("shape.png", img, "image/png"))], "[]")
    assert page.text_content("#error .message") == expected
    assert page.get_attribute("#error", "data-code") == "invalid_labels"
    assert page.locator("#results li").count() == 0

    # Then a good request clears the error ...
    page.fill("#labels", "red triangle\ngreen square\nblue circle")
    page.click("#submit")
    assert wait_done(page) == "done" and page.is_hidden("#error")
    assert page.locator("#results li").count() == 3

    # ... and a file that is not an image (picked, so it re-runs by itself) shows the API's message.
    text = b"just some text, not an image"
    with page.expect_response("**/v1/classify"):
        page.set_input_files(
            "#image", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": text}]
        )
    assert wait_done(page) == "error"
    expected = api_message([("image", ("notes.txt", text, "text/plain"))], '["red triangle"]')
    assert page.text_content("#error .message") == expected
    assert page.locator("#results li").count() == 0
    assert page.is_visible("#error")
    page.wait_for_selector("#preview", state="hidden")  # the browser cannot show it either: no broken icon
    assert page_errors == []


def test_static_files_are_served_and_nothing_else(server: str) -> None:
    r = httpx.get(f"{server}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = httpx.get(f"{server}/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
    assert httpx.head(f"{server}/").status_code == 200
    for bad in (
        "nope.js",
        "..%2Fapi%2Fpage.py",
        "../api/page.py",
        "%2e%2e/main.py",
        ".hidden",
        "index.html/x",
    ):
        r = httpx.get(f"{server}/static/{bad}")
        assert r.status_code == 404, (bad, r.status_code)
        assert r.json()["error"]["code"] == "not_found"
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
