"""End to end over HTTP: our server against the Hugging Face pipeline baseline, on the same weights.

    .venv/bin/python bench/http_load.py [--concurrency 4] [--seconds 15] [--big-labels 1000]

Builds a randomly initialised ViT-B/32 with `transformers` (QuickGELU, the paper's sizes), saves it
as a Hugging Face folder for the baseline (bench/baseline_hf.py) and converts the same weights into
one of our bundles. Each server runs alone, in its own process; this process is the load generator:
`--concurrency` requests kept in flight for `--seconds` per scenario, reporting throughput,
p50/p95/p99 latency and errors.
  (a) one 512x512 JPEG photo + 10 labels ("a photo of a {}.")
  (b) one photo + a 1,000-label set: ours registered once with the 80 ImageNet templates;
      the pipeline encodes its 1,000 labels with one template on every request
  (c) 8 photos per request + 10 labels
Also: the raw image-encoder throughput (onnxruntime, in process) at the batch sizes the server formed,
so the gap between the two is the server's overhead; and the cold build time of the big label set.
Writes bench/results/http_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELS10 = ["cat", "dog", "astronaut", "coffee", "rocket", "car", "tree", "house", "bird", "boat"]
TOKEN = "bench-admin-token"


def photos() -> list[bytes]:
    from PIL import Image
    from skimage import data

    out = []
    for arr in (data.astronaut(), data.chelsea(), data.coffee(), data.rocket()):
        buf = io.BytesIO()
        Image.fromarray(arr).resize((512, 512)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build(tmp: Path) -> tuple[Path, Path]:
    """A random ViT-B/32 as a Hugging Face folder and, with the same weights, as our bundle."""
    import torch
    import transformers

    from model.export import export_bundle
    from model.preprocess import PreprocessConfig, preprocess_bytes
    from model.tokenizer import ClipTokenizer
    from model.weights import model_from_hf

    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config={"hidden_act": "quick_gelu"},
        vision_config={"hidden_act": "quick_gelu"},
        projection_dim=512,
    )
    hf = transformers.CLIPModel(cfg).eval()
    hf_dir = tmp / "hf"
    hf.save_pretrained(hf_dir)
    ClipTokenizer.clip_bpe().save(hf_dir / "tokenizer.json")
    ours = model_from_hf(hf.state_dict(), cfg.to_dict())
    pre = PreprocessConfig(image_size=224)
    sample = np.stack([preprocess_bytes(p, pre) for p in photos()])
    export_bundle(ours, ClipTokenizer.clip_bpe(), tmp / "models" / "b32", sample, LABELS10, version="v1")
    return hf_dir, tmp / "models"


def start(cmd: list[str], url: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd} did not start")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


Request = Callable[[int], dict[str, Any]]  # request number -> httpx.post kwargs


async def load(url: str, make: Request, concurrency: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as c:
        end = time.monotonic() + seconds
        counter = iter(range(10**9))

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < end:
                t = time.monotonic()
                try:
                    r = await c.post(url, **make(next(counter)))
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.monotonic() - t)
                errors += not ok

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - t0
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def raw_image_rate(models: Path, batch: int, seconds: float = 3.0) -> float:
    from app.runtime.encoders import OnnxEncoders
    from model.bundle import current_bundle

    enc = OnnxEncoders(current_bundle(models / "b32"), device="cpu")
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    enc.encode_images(x)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        enc.encode_images(x)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--big-labels", type=int, default=1000)
    ap.add_argument("--jpeg-draft", action="store_true", help="serve with ZEROSHOT_JPEG_DRAFT=true")
    ap.add_argument("--skip-baseline", action="store_true", help="measure our server only")
    args = ap.parse_args()
    imgs = photos()
    big = [f"object category number {i}" for i in range(args.big_labels)]

    def files(i: int, n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
        return [("image", (f"{k}.jpg", imgs[(i + k) % len(imgs)], "image/jpeg")) for k in range(n)]

    results: dict[str, Any] = {
        "machine": platform.machine(),
        "concurrency": args.concurrency,
        "ours": {},
        "hf": {},
    }
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        print("building a random ViT-B/32 (transformers) and its bundle ...", flush=True)
        hf_dir, models = build(tmp)
        # --- ours ---
        port = 8111
        base = f"http://127.0.0.1:{port}"
        env = {
            "ZEROSHOT_MODELS_DIR": str(models),
            "ZEROSHOT_MODEL_NAME": "b32",
            "ZEROSHOT_ADMIN_TOKEN": TOKEN,
            "ZEROSHOT_LABEL_SETS_DIR": str(tmp / "sets"),
            "ZEROSHOT_RELOAD_INTERVAL_S": "0",
            "ZEROSHOT_JPEG_DRAFT": "true" if args.jpeg_draft else "false",
        }
        proc = start([sys.executable, "-m", "model.cli", "serve", "--port", str(port)], f"{base}/readyz", env)
        try:
            t = time.monotonic()
            r = httpx.put(
                f"{base}/v1/label-sets/big",
                json={"labels": big, "templates": "imagenet80"},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=3600,
            )
            r.raise_for_status()
            results["ours"]["label_set_build_s"] = time.monotonic() - t
            print(
                f"ours: registered {len(big)} labels x 80 templates in {time.monotonic() - t:.1f} s",
                flush=True,
            )
            scenarios: dict[str, Request] = {
                "a": lambda i: {
                    "files": files(i, 1),
                    "data": {"labels": json.dumps(LABELS10), "templates": "default"},
                },
                "b": lambda i: {"files": files(i, 1), "data": {"label_set": "big"}},
                "c": lambda i: {
                    "files": files(i, 8),
                    "data": {"labels": json.dumps(LABELS10), "templates": "default"},
                },
            }
            for name, make in scenarios.items():
                before = httpx.get(f"{base}/v1/models").json()["batcher"]
                row = asyncio.run(load(f"{base}/v1/classify", make, args.concurrency, args.seconds))
                after = httpx.get(f"{base}/v1/models").json()["batcher"]
                row["mean_batch"] = (after["images"] - before["images"]) / max(
                    1, after["batches"] - before["batches"]
                )
                results["ours"][name] = row
                print(f"ours ({name}): {row}", flush=True)
        finally:
            stop(proc)
        # raw encoder at the batch the server formed in (a), and at 8 for (c)
        mean_a = max(1, round(results["ours"]["a"]["mean_batch"]))
        results["raw_images_per_s"] = {str(b): raw_image_rate(models, b) for b in sorted({1, mean_a, 8})}
        print(f"raw image encoder: {results['raw_images_per_s']}", flush=True)
        results["jpeg_draft"] = args.jpeg_draft
        if args.skip_baseline:
            raw = results["raw_images_per_s"][str(mean_a)]
            served = results["ours"]["a"]["requests_per_s"]
            print(
                f"(a) server {served:.2f} images/s vs raw encoder {raw:.2f} at batch {mean_a}: "
                f"{100 * served / raw:.0f}%"
            )
            return
        # --- the Hugging Face pipeline baseline, same weights ---
        port = 8112
        hbase = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "bench/baseline_hf.py", "--model", str(hf_dir), "--port", str(port)]
        proc = start(cmd, f"{hbase}/healthz")
        try:
            hf_scenarios: dict[str, Request] = {
                "a": lambda i: {"files": files(i, 1), "data": {"labels": json.dumps(LABELS10)}},
                "b": lambda i: {"files": files(i, 1), "data": {"labels": json.dumps(big)}},
                "c": lambda i: {"files": files(i, 8), "data": {"labels": json.dumps(LABELS10)}},
            }
            for name, make in hf_scenarios.items():
                row = asyncio.run(load(f"{hbase}/classify", make, args.concurrency, args.seconds))
                results["hf"][name] = row
                print(f"hf ({name}): {row}", flush=True)
        finally:
            stop(proc)
    print()
    print(
        f"{'scenario':<34}{'ours req/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'HF req/s':>10}{'p50 ms':>9}{'ratio':>8}"
    )
    for name, what in (
        ("a", "1 image + 10 labels"),
        ("b", f"1 image + {len(big)} labels"),
        ("c", "8 images + 10 labels"),
    ):
        o, h = results["ours"][name], results["hf"][name]
        ratio = o["requests_per_s"] / max(h["requests_per_s"], 1e-9)
        print(
            f"({name}) {what:<30}{o['requests_per_s']:>11.2f}{o['p50_ms']:>9.0f}{o['p99_ms']:>9.0f}"
            f"{h['requests_per_s']:>10.2f}{h['p50_ms']:>9.0f}{ratio:>7.1f}x"
        )
    raw = results["raw_images_per_s"][str(mean_a)]
    share = results["ours"]["a"]["requests_per_s"] / raw
    served = results["ours"]["a"]["requests_per_s"]
    print(f"(a) server {served:.2f} images/s vs raw encoder {raw:.2f} at batch {mean_a}: {100 * share:.0f}%")

    out = ROOT / "bench/results/http_load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
