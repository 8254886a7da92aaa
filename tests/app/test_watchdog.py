"""The watchdog: an image-encoder call that hangs turns /readyz to 503 with the reason, then /healthz
(so the orchestrator restarts the replica); both recover when the call returns. A fake encoder that
hangs until the test releases it stands in for a stuck model."""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from tests.fakes import GatedEncoders, fake_settings


def wait_for(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_hung_encoder_fails_readiness_then_liveness_and_both_recover(tmp_path: Path) -> None:
    encoders = GatedEncoders()
    settings = fake_settings(tmp_path, watchdog_ready_s=0.3, watchdog_live_s=1.0)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buf, format="PNG")
    body = {"images": [base64.b64encode(buf.getvalue()).decode()], "labels": ["green", "red"]}
    with TestClient(create_app(settings, encoders.runtime_factory())) as c:
        assert c.get("/readyz").status_code == 200 and c.get("/healthz").status_code == 200
        encoders.armed = True
        answer: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: answer.update(r=c.post("/v1/classify", json=body)))
        worker.start()
        assert encoders.entered.wait(10)
        wait_for(lambda: c.get("/readyz").status_code == 503)
        ready = c.get("/readyz").json()["error"]
        assert ready["code"] == "encoder_stalled" and "one batch of 1 images" in ready["message"]
        assert ready["detail"]["limit_s"] == 0.3
        assert c.get("/healthz").status_code == 200  # not yet past the liveness bound
        wait_for(lambda: c.get("/healthz").status_code == 503)
        assert c.get("/healthz").json()["error"]["code"] == "encoder_stalled"
        encoders.release.set()
        worker.join(10)
        assert answer["r"].status_code == 200, answer["r"].text
        assert c.get("/readyz").status_code == 200 and c.get("/healthz").status_code == 200


def test_a_dead_worker_fails_liveness(tmp_path: Path) -> None:
    with TestClient(create_app(fake_settings(tmp_path), GatedEncoders().runtime_factory())) as c:
        assert c.get("/healthz").status_code == 200
        batcher = c.app.state.engine.models.default.batcher  # type: ignore[attr-defined]
        batcher._q.put(None)  # the worker's stop signal: its thread ends as if it had died
        wait_for(lambda: not batcher.alive)
        r = c.get("/healthz")
        assert r.status_code == 503 and "worker thread has stopped" in r.json()["error"]["message"]


def test_liveness_bound_below_readiness_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="watchdog_live_s"):
        Settings(watchdog_ready_s=60, watchdog_live_s=10)
