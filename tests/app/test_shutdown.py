"""Graceful shutdown of `zeroshot serve`: on SIGTERM readiness fails first while requests are still
served, then the process exits by itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL_DIR, ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_drains_then_exits(tmp_path: Path) -> None:
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} has no CURRENT: run `make setup` first (make test does)")
    port = free_port()
    env = {
        **os.environ,
        "ZEROSHOT_MODELS_DIR": str(DEFAULT_MODEL_DIR.parent),
        "ZEROSHOT_DRAIN_S": "2",
        "ZEROSHOT_RELOAD_INTERVAL_S": "0",
        "ZEROSHOT_LABEL_SETS_DIR": str(tmp_path),
    }
    cmd = [sys.executable, "-m", "model.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
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
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
