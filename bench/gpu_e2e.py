"""bench/gpu.py's sections 3 and 4: the real server over HTTP on 127.0.0.1, and `zeroshot train`."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
from gpu_sections import Skip

ROOT = Path(__file__).resolve().parents[1]
LABELS10 = ["cat", "dog", "astronaut", "coffee", "rocket", "car", "tree", "house", "bird", "boat"]


def jpegs(n: int = 4, size: int = 512) -> list[bytes]:
    """`n` distinct size x size JPEGs (smooth colour fields with noise), made in memory."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy) + 2 * i)], -1)
        arr = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    env: dict[str, str], port: int, log: Path, timeout_s: float = 180
) -> subprocess.Popen[bytes]:
    """`zeroshot serve` on 127.0.0.1:port, its output in `log`; returns once /readyz answers 200."""
    import httpx

    cmd = [sys.executable, "-m", "model.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    deadline, refused = time.monotonic() + timeout_s, ""
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if r.status_code == 200:
                return proc
            # a model refused (say, no CUDA provider) stays refused: no use waiting for it
            reasons = r.json().get("error", {}).get("detail", {}).get("not_ready", {})
            refused = "; ".join(v for v in reasons.values() if "refused" in str(v))
        except (httpx.TransportError, ValueError, AttributeError):
            pass
        if refused or proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            tail = log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"the server did not become ready: {refused or tail}")
        time.sleep(0.25)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_section(
    models_dir: Path, name: str, device: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    """Concurrent /v1/classify requests (one 512 px JPEG + 10 labels each) to the real server."""
    missing = [m for m in ("fastapi", "uvicorn", "pydantic_settings", "httpx") if find_spec(m) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not importable")
    import httpx
    from loadgen import run_load

    bundle = models_dir / name / (models_dir / name / "CURRENT").read_text().strip()
    fp16 = "fp16" in json.loads((bundle / "manifest.json").read_text())
    env = {
        "ZEROSHOT_MODELS_DIR": str(models_dir),
        "ZEROSHOT_MODEL_NAME": name,
        "ZEROSHOT_DEVICE": device,
        "ZEROSHOT_PRECISION": "fp16" if fp16 else "fp32",
        "ZEROSHOT_LABEL_SETS_DIR": str(models_dir.parent / "label-sets"),
        "ZEROSHOT_RELOAD_INTERVAL_S": "0",
    }
    port = free_port()
    t = time.perf_counter()
    proc = start_server(env, port, models_dir.parent / "server.log")
    row: dict[str, Any] = {"model": name, "device": device, "precision": env["ZEROSHOT_PRECISION"]}
    row |= {"concurrency": concurrency, "seconds": seconds, "start_s": time.perf_counter() - t}
    try:
        imgs = jpegs()
        url = f"http://127.0.0.1:{port}/v1/classify"

        def make(i: int) -> dict[str, Any]:
            return {
                "files": [("image", (f"{i}.jpg", imgs[i % len(imgs)], "image/jpeg"))],
                "data": {"labels": json.dumps(LABELS10)},
            }

        asyncio.run(run_load(url, make, concurrency, min(1.0, seconds)))  # warm-up
        cpu0 = process_cpu_s(proc.pid)
        row |= asyncio.run(run_load(url, make, concurrency, seconds, min_requests=2 * concurrency))
        row["server_cpu_ms_per_image"] = 1000 * (process_cpu_s(proc.pid) - cpu0) / max(1, row["requests"])
        row["provider"] = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json().get("provider")
    finally:
        stop_server(proc)
    row["images_per_s"] = row["requests_per_s"]  # one image per request
    row["host_cpus"] = os.cpu_count()
    row["jpeg_decode_per_core_images_per_s"] = decode_rate(imgs, bundle, min(1.0, seconds))
    return row


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def decode_rate(imgs: list[bytes], bundle: Path, seconds: float) -> float:
    """The server's own decode + preprocessing of these JPEGs on one core, images/s."""
    from model.bundle.format import load_bundle
    from model.bundle.preprocess import PreprocessConfig, preprocess_bytes

    cfg = PreprocessConfig.from_dict(load_bundle(bundle, verify_hashes=False).manifest["preprocessing"])
    n, end = 0, time.perf_counter() + seconds
    t = time.perf_counter()
    while time.perf_counter() < end or n < 4:
        preprocess_bytes(imgs[n % len(imgs)], cfg)
        n += 1
    return n / (time.perf_counter() - t)


def train_row(
    preset: str, steps: int, batch: int, device: str, workers: int, timeout_s: float, tmp: Path
) -> dict[str, Any]:
    """`zeroshot train --data synthetic` (bf16 autocast, the default) in a subprocess; images/s from
    the per-step elapsed_s in metrics.jsonl after the first steps (bench/train_throughput.py's way).
    Evaluation and checkpoints only after the last step, so none falls inside the timed steps."""
    out = tmp / f"train-{preset.lower()}"
    cfg = tmp / f"train-{preset.lower()}.json"
    fields = {"eval_every": steps, "eval_images": 16, "checkpoint_every": steps, "keep_checkpoints": 0}
    cfg.write_text(json.dumps({**fields, "tensorboard": False}))
    cmd = [sys.executable, "-m", "model.cli", "train", "--preset", preset, "--steps", str(steps)]
    cmd += ["--batch-size", str(batch), "--out", str(out), "--num-workers", str(workers)]
    cmd += ["--config", str(cfg), "--device", device, "--precision", "bf16"]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"zeroshot train exited {done.returncode}: {done.stderr[-1500:]}")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    warm = min(10, max(1, steps // 3))
    a, b = recs[warm - 1], recs[-1]
    rate = (b["step"] - a["step"]) * batch / (b["elapsed_s"] - a["elapsed_s"])
    return {
        "preset": preset,
        "steps": steps,
        "timed_steps": b["step"] - a["step"],
        "batch_size": batch,
        "num_workers": workers,
        "precision": "bf16",
        "device": device,
        "images_per_s": rate,
        "final_loss": b["loss"],
        "wall_s": time.perf_counter() - t,
    }
