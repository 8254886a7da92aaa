"""The label-embedding cache over HTTP: what a request costs cold, warm, and against a large set.

    .venv/bin/python bench/label_cache.py [--models-dir models] [--name default] [--repeat 200]

Serves the bundle in-process (FastAPI TestClient: the whole app - parsing, decode, batcher, cache,
ranking, JSON - without a socket) and prints median latencies for:
  - the image encoder alone, one image (the floor a classify request cannot go below);
  - one image + 100 labels never seen (text encoding included), and the same request again (cached);
  - one image + 2 cached labels (per-request overhead of the service);
  - registering 1,000 labels x 80 templates (imagenet80) cold, and a request against it once warm.
Writes bench/results/label_cache.json.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from model.data.synthetic import SyntheticShapes

TOKEN = "bench-admin-token"


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--name", default="default")
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()

    buf = io.BytesIO()
    SyntheticShapes(64, seed=3, split="seen", length=1)[0].image.save(buf, format="PNG")
    img = buf.getvalue()
    files = [("image", ("x.png", img, "image/png"))]

    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(
            models_dir=args.models_dir,
            model_name=args.name,
            device="cpu",
            reload_interval_s=0,
            label_sets_dir=Path(tmp),
            admin_token=TOKEN,
            max_wait_ms=0,
        )
        with TestClient(create_app(s)) as c:
            rt = c.app.state.engine.models.default.holder.runtime  # type: ignore[attr-defined]
            cache = c.app.state.engine.cache  # type: ignore[attr-defined]
            pixels = np.zeros(
                (1, 3, rt.encoders.preprocess.image_size, rt.encoders.preprocess.image_size), np.float32
            )

            def post(labels: list[str]) -> None:
                r = c.post("/v1/classify", files=files, data={"labels": json.dumps(labels)})
                assert r.status_code == 200, r.text

            rows: dict[str, float] = {}
            rows["image encoder alone, 1 image"] = median_ms(lambda: rt.encode_images(pixels), args.repeat)
            cold = []
            for k in range(5):  # five label lists nobody asked for before
                labels = [f"thing {k}-{i}" for i in range(100)]
                before = cache.encoded_prompts
                cold.append(median_ms(lambda labels=labels: post(labels), 1))
                assert cache.encoded_prompts - before == 100
            rows["1 image + 100 new labels (cold)"] = statistics.median(cold)
            before = cache.encoded_prompts
            rows["1 image + the same 100 labels (cached)"] = median_ms(lambda: post(labels), args.repeat)
            assert cache.encoded_prompts == before, "the cached request encoded text"
            post(["red circle", "blue square"])
            rows["1 image + 2 cached labels"] = median_ms(
                lambda: post(["red circle", "blue square"]), args.repeat
            )

            big = [f"object number {i}" for i in range(1000)]
            t = time.perf_counter()
            r = c.put(
                "/v1/label-sets/big?wait=true",  # the build is timed: hold until it ends
                json={"labels": big, "templates": "imagenet80"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert r.status_code == 200, r.text
            rows["register 1,000 labels x 80 templates (cold)"] = 1000 * (time.perf_counter() - t)

            def by_set() -> None:
                r = c.post("/v1/classify", files=files, data={"label_set": "big"})
                assert r.status_code == 200, r.text

            by_set()
            rows["1 image + 1,000-label set (cached)"] = median_ms(by_set, args.repeat)

    floor = rows["image encoder alone, 1 image"]
    print(f"model {args.name} on {platform.machine()}, median of {args.repeat} requests")
    print(f"{'':45s} {'ms':>10s} {'over encoder alone':>20s}")
    for k, v in rows.items():
        print(f"{k:45s} {v:10.2f} {v - floor:+20.2f}")
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "label_cache.json").write_text(
        json.dumps({"model": args.name, "machine": platform.machine(), "median_ms": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
