"""A server SIGKILLed while it builds a large label set in the background (`zeroshot serve` on the
default model, in its own process): nothing half-built is left in the set's place or served, and
the next start builds the staged definition again until the set is ready."""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tests.servers import served_process

TOKEN = "admin-token-kill"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
LABELS = [f"object number {i}" for i in range(1000)]


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (240, 200, 20)).save(buf, "PNG")
    return buf.getvalue()


def view(base: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/v1/label-sets/big", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_server_killed_mid_build_serves_no_partial_set_and_builds_it_again(tmp_path: Path) -> None:
    env = {"ZEROSHOT_ADMIN_TOKEN": TOKEN}
    sets = tmp_path / "label-sets"
    with served_process(tmp_path, env) as (proc, base):
        body = {"labels": LABELS, "templates": "imagenet80"}
        r = httpx.put(f"{base}/v1/label-sets/big", json=body, headers=ADMIN, timeout=30)
        assert r.status_code == 202 and r.json()["build"]["prompts_total"] == 80_000, r.text
        deadline = time.monotonic() + 60
        while view(base)["build"]["prompts_done"] == 0:  # killed once the build is well under way
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert view(base)["status"] == "building"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert not (sets / "big.json").exists()  # the name never held the half-built set
    assert (sets / ".pending" / "big.json").exists()
    assert list(sets.glob("big.*.npy")) == []  # no matrix, whole or partial

    with served_process(tmp_path, env) as (_, base):
        first = view(base)
        assert first["status"] in ("building", "ready"), first
        files = {"image": ("a.png", png(), "image/png")}
        r = httpx.post(f"{base}/v1/classify", files=files, data={"label_set": "big"}, timeout=30)
        if first["status"] == "building" and r.status_code != 200:  # 200 only once it is whole
            assert r.status_code == 503 and r.json()["error"]["code"] == "label_set_building", r.text
        deadline = time.monotonic() + 300
        while (v := view(base))["status"] == "building":
            assert time.monotonic() < deadline, v
            time.sleep(0.2)
        assert v["status"] == "ready" and v["build"]["prompts_done"] == 80_000, v
        r = httpx.post(f"{base}/v1/classify", files=files, data={"label_set": "big"}, timeout=30)
        assert r.status_code == 200 and r.json()["results"][0]["labels"], r.text
    (matrix,) = sets.glob("big.*.npy")
    m = np.load(matrix)
    assert m.shape[0] == 1000 and np.allclose(np.linalg.norm(m, axis=1), 1, atol=1e-3)
    assert list((sets / ".pending").iterdir()) == []
