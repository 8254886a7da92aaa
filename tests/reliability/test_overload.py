"""Overload: far more requests than the model can take. The excess is refused at once with 503 +
Retry-After, the accepted requests keep a bounded latency, nothing else fails, and the service is
fully back afterwards.

The default model is too fast to overload from the same two cores without measuring the HTTP stack
instead, so its image encoder is slowed to a known capacity (~20 images/s) and 4x that rate is
offered, open-loop, from another process. Run on the default CLIP bundle and on a tiny SigLIP one
(tests/siglip_checkpoint.py), whose own preprocessing, tokenizer and sigmoid scoring sit on the path.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.main import create_app
from model.data.synthetic import SyntheticShapes
from tests.reliability.conftest import live_server, server_settings

CALL_S = 0.1  # the slowed encoder: 0.1 s per call of at most 2 images, so ~20 images/s
RATE, SECONDS = 80.0, 4.0  # offered: 4x what it can take


def png() -> bytes:
    buf = io.BytesIO()
    SyntheticShapes(64, seed=2, split="seen", length=1)[0].image.save(buf, format="PNG")
    return buf.getvalue()


async def hammer(base: str, rate: float, seconds: float) -> list[tuple[int, float, str | None]]:
    """Open-loop load: a new request every 1/rate s for `seconds`, whether or not earlier ones are
    answered (as independent users would). Returns (status, latency s, Retry-After) per request."""
    img = png()
    out: list[tuple[int, float, str | None]] = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as c:

        async def one() -> None:
            t = time.monotonic()
            r = await c.post(
                "/v1/classify", files={"image": ("x.png", img, "image/png")}, data={"labels": ["a", "b"]}
            )
            out.append((r.status_code, time.monotonic() - t, r.headers.get("retry-after")))

        start, tasks = time.monotonic(), []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return out


def run_hammer(base: str, rate: float, seconds: float) -> list[tuple[int, float, str | None]]:
    return asyncio.run(hammer(base, rate, seconds))


@pytest.fixture(params=["default", "siglip"])
def model_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings serving the default CLIP bundle, or the SigLIP bundle of tests/siglip_checkpoint.py."""
    if request.param == "siglip":
        return {"models_dir": request.getfixturevalue("siglip_models"), "model_name": "siglip"}
    return {}


def test_overload_is_refused_quickly_and_the_service_recovers(
    tmp_path: Path, model_settings: dict[str, Any]
) -> None:
    s = server_settings(
        tmp_path, max_batch=2, max_queue=8, max_images_per_request=2, queue_timeout_s=5.0, **model_settings
    )
    app = create_app(s)
    with live_server(s, app) as base:
        served = app.state.engine.models.default  # the one model served: the metrics label it by name
        holder = served.holder
        real = holder.runtime.encode_images

        def slow(pixels: np.ndarray) -> np.ndarray:
            time.sleep(CALL_S)
            return real(pixels)

        holder.runtime.encode_images = slow
        # the load comes from another process, as it would in life (and not through this one's GIL)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = pool.submit(run_hammer, base, RATE, SECONDS).result(timeout=120)
        holder.runtime.encode_images = real
        statuses = [r[0] for r in results]
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 503]
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        assert ok and refused, (len(ok), len(refused))
        assert all(r[2] == "1" for r in refused)  # Retry-After on every refusal
        assert np.percentile([r[1] for r in refused], 95) < 1.0  # refused at once, not after a wait
        assert max(r[1] for r in ok) < s.queue_timeout_s + 1  # accepted ones: bounded by the queue
        with httpx.Client(base_url=base, timeout=30) as c:  # fully back afterwards
            for _ in range(10):
                r = c.post(
                    "/v1/classify",
                    files={"image": ("x.png", png(), "image/png")},
                    data={"labels": ["a", "b"]},
                )
                assert r.status_code == 200
            assert c.get("/readyz").status_code == 200
            assert f'zeroshot_queue_depth{{model="{served.name}"}} 0.0' in c.get("/metrics").text
        ok_ms = 1000 * np.array([r[1] for r in ok])
        refused_ms = 1000 * np.array([r[1] for r in refused])
        print(
            f"\noverload ({served.name}): {len(results)} requests at {RATE:.0f}/s: {len(ok)} served "
            f"(p50 {np.median(ok_ms):.0f} ms, max {ok_ms.max():.0f} ms), "
            f"{len(refused)} refused with 503 (p95 {np.percentile(refused_ms, 95):.0f} ms)"
        )
