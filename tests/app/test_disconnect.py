"""A client that goes away: answered 499 (never a 5xx), logged at info without a traceback, and its
images that the encoder has not reached are dropped, not run. Driven through the ASGI interface, so
the test decides the moment the client disconnects."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client import generate_latest

from app.main import create_app
from tests.fakes import GatedEncoders, fake_runtime, fake_settings


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def body(colour: tuple[int, int, int]) -> bytes:
    images = [base64.b64encode(png(colour)).decode()]
    return json.dumps({"images": images, "labels": ["red", "blue"]}).encode()


class Client:
    """One HTTP request as the ASGI server hands it over: the body in `chunks` (all of it, unless
    not `complete`); after them, the client disconnects when `gone` is set (or once the response
    is complete)."""

    def __init__(self, app: Any, chunks: list[bytes], complete: bool = True) -> None:
        self.app, self.chunks, self.complete = app, list(chunks), complete
        self.gone = asyncio.Event()
        self.status: int | None = None
        self.finished = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {
                "type": "http.request",
                "body": chunk,
                "more_body": bool(self.chunks) or not self.complete,
            }
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif not message.get("more_body"):
            self.finished.set()
            self.gone.set()  # a finished response: the server reports the connection as done

    async def post(self, path: str, content_type: str, length: int) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", content_type.encode()), (b"content-length", str(length).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await self.app(scope, self.receive, self.send)


def requests_counted(app: Any) -> dict[str, float]:
    counts: dict[str, float] = {}
    for metric in app.state.metrics.registry.collect():
        for s in metric.samples:
            if s.name == "zeroshot_requests_total" and s.labels.get("route") == "/v1/classify":
                counts[s.labels["status"]] = counts.get(s.labels["status"], 0) + s.value
    return counts


async def _with_engine(app: Any, test: Any) -> None:
    await app.state.engine.start()
    try:
        await test()
    finally:
        await app.state.engine.stop()


def test_a_disconnect_mid_upload_is_a_499_logged_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = create_app(fake_settings(tmp_path), fake_runtime)
    full = body((200, 0, 0))

    async def test() -> None:
        client = Client(app, [full[: len(full) // 2]], complete=False)
        client.gone.set()  # the rest of the body never comes
        await client.post("/v1/classify", "application/json", len(full))
        assert client.status == 499
        # the next client is served as usual
        ok = Client(app, [full])
        await ok.post("/v1/classify", "application/json", len(full))
        assert ok.status == 200

    asyncio.run(_with_engine(app, test))
    assert requests_counted(app) == {"499": 1, "200": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert any("client disconnected" in r.getMessage() for r in caplog.records)


def test_a_client_gone_while_queued_is_dropped_before_the_encoder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    encoders = GatedEncoders()

    app = create_app(fake_settings(tmp_path, max_wait_ms=0), encoders.runtime_factory())
    first_body, second_body = body((200, 0, 0)), body((0, 0, 200))

    async def test() -> None:
        encoders.armed = True
        first = Client(app, [first_body])
        holder = asyncio.create_task(first.post("/v1/classify", "application/json", len(first_body)))
        await asyncio.to_thread(encoders.entered.wait, 10)  # the encoder is busy with the first
        second = Client(app, [second_body])
        waiting = asyncio.create_task(second.post("/v1/classify", "application/json", len(second_body)))
        while app.state.engine.models.default.batcher.pending < 2:  # the second's image is queued
            await asyncio.sleep(0.01)
        second.gone.set()
        await asyncio.wait_for(waiting, 10)
        assert second.status == 499
        batcher = app.state.engine.models.default.batcher
        assert (batcher.pending, batcher.cancelled) == (1, 1)  # its place is freed at once
        encoders.release.set()
        await asyncio.wait_for(holder, 10)
        assert first.status == 200
        assert batcher.pending == 0

    asyncio.run(_with_engine(app, test))
    assert encoders.calls == [1]  # the second image never reached the encoder
    assert (
        'zeroshot_queue_cancelled_total{model="default"} 1.0'
        in generate_latest(app.state.metrics.registry).decode()
    )
    assert requests_counted(app) == {"200": 1, "499": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
