"""Decode + preprocess throughput: how many CPU cores it takes to keep an image encoder fed.

    .venv/bin/python bench/preprocess.py [--images 64] [--seconds 3] [--threads 1,2,...] [--size 224]

Makes `--images` photo-like JPEGs in memory (smooth colour gradients and blobs plus sensor-like
noise, quality 90; 512x384, 384x512 and 512x512 in turn; seeded, no downloads) and runs them through
`preprocess_bytes` (decode, EXIF, resize, crop, normalise) at `--size` px with the server's default
settings: once in this thread alone ("serial", as the server did before ZEROSHOT_DECODE_WORKERS),
then on a ThreadPoolExecutor of each thread count in `--threads` (default 1 to the CPUs available),
one task per image as the server's DecodePool submits them. Each row runs for at least `--seconds`
of whole passes over the images, with JPEG draft decoding (ZEROSHOT_JPEG_DRAFT) off and then on.
Speed-up is against the serial row with the same draft setting. CPU ms: the process's CPU time per
image; cores: its CPU time over the wall time, which shows when a shared machine lent fewer cores
than there are threads.

Prints a table; writes `--out` (bench/results/preprocess.json).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

from app.settings import Settings
from model.bundle.encoders import available_cpus
from model.bundle.preprocess import PreprocessConfig, preprocess_bytes

SIZES = ((512, 384), (384, 512), (512, 512))


def photo(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG that compresses like a photo: no flat colour, no pure noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b = rng.uniform(-1, 1, 2)
        img[..., c] = 128 + 90 * (a * x / width + b * y / height) / 2
        for _ in range(4):  # soft blobs: the shapes and shading a real scene has
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(30, 160)
            img[..., c] += rng.uniform(-70, 70) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    img += rng.normal(0, 8, img.shape)  # grain: keeps the DCT from zeroing the high frequencies
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def map_all(
    mapper: Callable[..., Iterable[np.ndarray]], fn: Callable[[bytes], np.ndarray], files: list[bytes]
) -> None:
    for _ in mapper(fn, files):  # the pool's map yields in order, each result once it is done
        pass


def measure(run_pass: Callable[[], object], n: int, seconds: float) -> dict[str, float]:
    """Whole passes over the n images until `seconds` have gone: images/s, and CPU ms per image (the
    process's CPU time, so what other load on a shared machine takes from the wall clock shows)."""
    run_pass()  # warm-up: imports, the normalisation table, the pool's threads
    passes, cpu0, t0 = 0, time.process_time(), time.perf_counter()
    while True:
        run_pass()
        passes += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    images = passes * n
    cpu = time.process_time() - cpu0
    return {
        "images": images,
        "seconds": elapsed,
        "images_per_s": images / elapsed,
        "cpu_ms_per_image": 1000 * cpu / images,
        "cores_busy": cpu / elapsed,  # below the thread count: the threads waited (GIL, other load)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0, help="at least this long per row")
    ap.add_argument("--threads", default=None, help="comma list of pool sizes; default 1..CPUs available")
    ap.add_argument("--size", type=int, default=224, help="the model's input size (CLIP: 224)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/preprocess.json"))
    args = ap.parse_args()
    cpus = available_cpus()
    counts = [int(t) for t in args.threads.split(",")] if args.threads else list(range(1, cpus + 1))
    if args.images < 1 or min(counts) < 1:
        ap.error("--images and --threads must be >= 1")

    rng = np.random.default_rng(0)
    files = [photo(rng, *SIZES[i % len(SIZES)]) for i in range(args.images)]
    s, cfg = Settings.model_construct(), PreprocessConfig(image_size=args.size)  # the defaults, not env

    def decode(draft: bool) -> Callable[[bytes], np.ndarray]:
        return lambda b: preprocess_bytes(
            b, cfg, allowed_formats=s.allowed_formats, max_pixels=s.max_image_pixels, jpeg_draft=draft
        )

    rows: list[dict[str, Any]] = []

    def record(threads: int, pool: bool, draft: bool, m: dict[str, float], serial: float) -> None:
        per_thread, speedup = m["images_per_s"] / threads, m["images_per_s"] / serial
        rows.append({"threads": threads, "pool": pool, "draft": draft, **m,
                     "images_per_s_per_thread": per_thread, "speedup": speedup})  # fmt: skip

    for draft in (False, True):
        fn = decode(draft)
        serial = measure(functools.partial(map_all, map, fn, files), len(files), args.seconds)
        record(1, False, draft, serial, serial["images_per_s"])
        for t in counts:
            with ThreadPoolExecutor(max_workers=t, thread_name_prefix="decode") as ex:
                m = measure(functools.partial(map_all, ex.map, fn, files), len(files), args.seconds)
            record(t, True, draft, m, serial["images_per_s"])

    def cell(threads: int, pool: bool, draft: bool) -> str:
        r = next(r for r in rows if (r["threads"], r["pool"], r["draft"]) == (threads, pool, draft))
        return (f"{r['images_per_s']:9.1f}{r['images_per_s_per_thread']:9.1f}{r['speedup']:8.2f}x"
                f"{r['cpu_ms_per_image']:7.2f}{r['cores_busy']:6.2f}")  # fmt: skip

    print(f"{args.images} JPEGs (512x384, 384x512, 512x512, q90) -> {args.size} px, {cpus} CPUs available")
    print(f"{'':>10}{'draft off':^40} |{'draft on':^40}")
    head = f"{'img/s':>9}{'per thr':>9}{'speed-up':>9}{'cpu ms':>7}{'cores':>6}"
    print(f"{'threads':>10}{head} |{head}")
    for threads, pooled in [(1, False), *((t, True) for t in counts)]:
        label = str(threads) if pooled else "serial"
        print(f"{label:>10}{cell(threads, pooled, False)} |{cell(threads, pooled, True)}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"cpus_available": cpus, "os_cpu_count": os.cpu_count(), "processor": platform.processor(),
                    "python": platform.python_version(), "pillow": PIL.__version__},
        "images": args.images, "sizes": [list(wh) for wh in SIZES], "quality": 90, "image_size": args.size,
        "seconds_per_row": args.seconds, "rows": rows,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
