"""Graceful shutdown of `zeroshot serve`: on SIGTERM readiness fails first while requests are still
served, then the process exits by itself."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.servers import served_process


def test_sigterm_drains_then_exits(tmp_path: Path) -> None:
    with served_process(tmp_path, {"ZEROSHOT_DRAIN_S": "2"}) as (proc, base):
        img = (ROOT / "docs" / "yellow-cross.png").read_bytes()
        files = {"image": ("y.png", img, "image/png")}
        proc.send_signal(signal.SIGTERM)
        t = time.monotonic()
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        r = httpx.post(f"{base}/v1/classify", files=files, data={"labels": ["yellow cross", "red cross"]})
        assert r.status_code == 200  # still serving while the balancer drains it
        assert r.json()["results"][0]["labels"][0]["label"] == "yellow cross"
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert time.monotonic() - t >= 1.5  # it waited out the drain period
