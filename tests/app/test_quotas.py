"""Per-key quotas: requests per second (token bucket), requests in flight, and prompts encoded per
minute; 429 + Retry-After beyond them, one key's excess never touching another key, and metrics by
key id (a hash prefix, never the key). Over the fake encoder."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.runtime.quotas import TokenBucket, key_id
from tests.fakes import GatedEncoders, fake_app, fake_settings

A, B = "key-a-12345", "key-b-67890"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def image() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def classify(c: TestClient, key: str, labels: list[str]) -> Any:
    return c.post("/v1/classify", json={"images": [image()], "labels": labels}, headers=auth(key))


def refused(r: Any, quota: str) -> dict:
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded" and err["detail"]["quota"] == quota
    assert int(r.headers["Retry-After"]) >= 1
    return err


def test_token_bucket_arithmetic() -> None:
    now = [100.0]
    b = TokenBucket(rate=2.0, capacity=3, clock=lambda: now[0])
    assert [b.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take() == 0.5  # one token in half a second at 2/s; nothing taken
    now[0] += 0.25
    assert b.take() == 0.25
    now[0] += 0.25
    assert b.take() == 0.0
    now[0] += 60  # refills up to the capacity, no further
    assert b.take(3) == 0.0 and b.take() > 0
    assert b.take(10) > 0 and b.tokens < 1  # a refused take leaves the tokens alone


def test_requests_per_second_per_key(tmp_path: Path) -> None:
    app = fake_app(tmp_path, api_keys=f"{A},{B}", key_requests_per_s=0.5, key_request_burst=2)
    with TestClient(app) as c:
        assert [classify(c, A, ["x", "y"]).status_code for _ in range(2)] == [200, 200]
        err = refused(classify(c, A, ["x", "y"]), "requests")
        assert "0.5 requests per second" in err["message"]
        assert classify(c, B, ["x", "y"]).status_code == 200  # the other key has its own bucket
        assert c.get("/v1/models", headers=auth(A)).status_code == 429  # every /v1 route counts
        metrics = c.get("/metrics").text
        assert f'zeroshot_key_requests_total{{key_id="{key_id(A)}",status="429"}} 2.0' in metrics
        assert f'zeroshot_key_requests_total{{key_id="{key_id(B)}",status="200"}} 1.0' in metrics
        assert A not in metrics and B not in metrics
        assert c.get("/healthz").status_code == 200  # probes are not /v1: never limited


def test_requests_in_flight_per_key(tmp_path: Path) -> None:
    encoders = GatedEncoders()
    settings = fake_settings(tmp_path, api_keys=f"{A},{B}", key_max_concurrent=1)
    with TestClient(create_app(settings, encoders.runtime_factory())) as c:
        encoders.armed = True
        held: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: held.update(r=classify(c, A, ["x", "y"])))
        worker.start()
        assert encoders.entered.wait(10)
        refused(c.get("/v1/models", headers=auth(A)), "concurrent")
        assert c.get("/v1/models", headers=auth(B)).status_code == 200
        encoders.release.set()
        worker.join(10)
        assert held["r"].status_code == 200
        assert c.get("/v1/models", headers=auth(A)).status_code == 200  # its place came back


def test_prompts_per_minute_per_key_and_cached_lists_are_free(tmp_path: Path) -> None:
    app = fake_app(tmp_path, api_keys=f"{A},{B}", key_prompts_per_minute=50)
    with TestClient(app) as c:
        first = [f"thing {i}" for i in range(30)]
        assert classify(c, A, first).status_code == 200  # 30 of 50
        assert classify(c, A, first).status_code == 200  # cached: free
        assert classify(c, A, first[:20]).status_code == 200  # cached labels, a new list: free too
        more = [f"other {i}" for i in range(30)]
        err = refused(classify(c, A, more), "prompts")
        assert "30 new prompts" in err["message"]
        err = refused(classify(c, A, [f"many {i}" for i in range(60)]), "prompts")
        assert "per minute" in err["message"]
        assert classify(c, B, more).status_code == 200  # B's budget is its own
        assert classify(c, A, more).status_code == 200  # now cached by B's request: free for A
        r = c.post("/v1/embeddings/texts", json={"texts": [f"t{i}" for i in range(30)]}, headers=auth(A))
        refused(r, "prompts")
