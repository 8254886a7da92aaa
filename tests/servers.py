"""Servers for tests: settings over the default model, an in-process uvicorn server on a loopback
port, and a `zeroshot serve` process. Shared by tests/app, tests/e2e and tests/reliability."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from tests.conftest import DEFAULT_MODEL_DIR, ROOT


def require_default_model() -> None:
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} has no CURRENT: run `make setup` first (make test does)")


def service_settings(tmp: Path, **kw: Any) -> Settings:
    """Settings serving the default model on the CPU, label sets under tmp, no watcher; kw override."""
    require_default_model()
    base: dict[str, Any] = dict(
        models_dir=DEFAULT_MODEL_DIR.parent,
        model_name="default",
        device="cpu",
        reload_interval_s=0,
        label_sets_dir=tmp / "label-sets",
    )
    return Settings(**{**base, **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, alive: Any, timeout_s: float = 60) -> None:
    """Poll base/readyz until it answers 200; fail if `alive()` turns false or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not alive():
            pytest.fail(f"the server at {base} stopped before it was ready")
        if time.monotonic() > deadline:
            pytest.fail(f"{base}/readyz did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.05)


@contextmanager
def live_server(settings: Settings, app: FastAPI | None = None) -> Iterator[str]:
    """Serve `app` (default create_app(settings)) on a free loopback port in a thread; yields the URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app or create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, thread.is_alive)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def served_process(tmp: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`zeroshot serve` on the default model in its own process, ready; yields (process, base URL).
    Its output goes to tmp/serve.log; it is stopped (SIGTERM, then SIGKILL) if still running at exit."""
    require_default_model()
    port = free_port()
    full_env = {
        **os.environ,
        "ZEROSHOT_MODELS_DIR": str(DEFAULT_MODEL_DIR.parent),
        "ZEROSHOT_RELOAD_INTERVAL_S": "0",
        "ZEROSHOT_LABEL_SETS_DIR": str(tmp / "label-sets"),
        **env,
    }
    cmd = [sys.executable, "-m", "model.cli", "serve", "--port", str(port)]
    with (tmp / "serve.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, lambda: proc.poll() is None)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
