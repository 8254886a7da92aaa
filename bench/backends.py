"""onnxruntime fp32 against OpenVINO fp32 and bf16 on the same ONNX files, side by side.

    .venv/bin/python bench/backends.py            # the default model and a random ViT-B/32
    .venv/bin/python bench/backends.py --no-b32   # the default model only (no 1-2 minute build)

For each bundle and each backend: image encoder images/s at batch 8 and 32, text encoder prompts/s
on 32 prompts of ~10 tokens, run in interleaved rounds (one round of each backend, then the next) so
a noisy machine slows all alike; the median round counts. Only the backend being timed has
encoders alive. Then the lowest cosine of each backend's
features to onnxruntime fp32's, and the cost of a shape seen for the first time (OpenVINO compiles
dynamic shapes lazily): the first call at a new batch size or text length against the same call
again. Writes bench/results/backends.json.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.bundle.encoders import Backend, Encoders, open_encoders  # noqa: E402
from model.bundle.format import Bundle, current_bundle  # noqa: E402

BACKENDS: tuple[tuple[Backend, str], ...] = (
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
)
PROMPTS = [f"a photo of a small {c} {s}." for c in ("red", "green", "blue", "pale") for s in "abcdefgh"]


def timed(fn: Callable[[], Any], repeat: int) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def first_call(enc: Encoders, size: int) -> dict[str, dict[str, float]]:
    """ms of the first call at a new image batch (5) and a new text length (60 tokens), and again."""
    x = np.zeros((5, 3, size, size), np.float32)
    long_text = ["word " * 55]
    out = {}
    for name, fn in (
        ("image_batch_5", lambda: enc.encode_images(x)),
        ("text_60_tokens", lambda: enc.encode_texts(long_text)),
    ):
        first = timed(fn, 1)
        again = timed(fn, 3)
        out[name] = {"first_ms": round(1000 * first, 2), "again_ms": round(1000 * again, 2)}
    return out


def bench(bundle: Bundle, rounds: int) -> dict[str, Any]:
    """Rounds of each backend in turn, with only that backend's encoders alive while it is timed:
    two runtimes' idle threads spin and took each other's cores (measured: onnxruntime's ViT-B/32
    at 8 images/s beside OpenVINO's sessions, against 49 alone)."""
    size = int(bundle.architecture["image_size"])
    rng = np.random.default_rng(0)
    pixels = {n: rng.standard_normal((n, 3, size, size)).astype(np.float32) for n in (8, 32)}
    big = size >= 224
    reps = {8: 2 if big else 20, 32: 1 if big else 10, "text": 2 if big else 20}
    names = [f"{b} {p}" for b, p in BACKENDS]
    samples: dict[str, dict[str, list[float]]] = {n: {"img8": [], "img32": [], "text": []} for n in names}
    features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out: dict[str, Any] = {n: {} for n in names}
    for r in range(rounds):
        for name, (backend, precision) in zip(names, BACKENDS, strict=True):
            enc = open_encoders(bundle, backend, precision, "cpu")
            if r == 0:  # the first calls at shapes never seen, before the warm-up below
                out[name]["first_call"] = first_call(enc, size)
            for x in pixels.values():  # warm: every shape timed below
                enc.encode_images(x)
            enc.encode_texts(PROMPTS)
            img, txt = functools.partial(enc.encode_images), functools.partial(enc.encode_texts, PROMPTS)
            samples[name]["img8"].append(8 / timed(functools.partial(img, pixels[8]), reps[8]))
            samples[name]["img32"].append(32 / timed(functools.partial(img, pixels[32]), reps[32]))
            samples[name]["text"].append(len(PROMPTS) / timed(txt, reps["text"]))
            features[name] = (enc.encode_images(pixels[8]), enc.encode_texts(PROMPTS))
            del enc, img, txt
            gc.collect()
    ref_i, ref_t = features["onnxruntime fp32"]
    for name in names:
        med = {k: statistics.median(v) for k, v in samples[name].items()}
        i, t = features[name]
        out[name] |= {
            "images_per_s_batch8": round(med["img8"], 1),
            "images_per_s_batch32": round(med["img32"], 1),
            "prompts_per_s": round(med["text"], 1),
            "image_cosine_min": float((i * ref_i).sum(1).min()),
            "text_cosine_min": float((t * ref_t).sum(1).min()),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--no-b32", action="store_true", help="skip the random ViT-B/32 (its build takes minutes)"
    )
    args = ap.parse_args()
    bundles = {"default": current_bundle(ROOT / "models" / "default")}
    if not args.no_b32:
        from bench.http_load import build

        _, models = build(Path(tempfile.mkdtemp(prefix="openvino-b32-")))
        bundles["ViT-B/32 (random)"] = current_bundle(models / "b32")
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "bundles": {}}
    for name, bundle in bundles.items():
        print(f"{name} ...", flush=True)
        report["bundles"][name] = r = bench(bundle, args.rounds)
        base = r["onnxruntime fp32"]
        print(
            f"{'backend':<18}{'img/s b8':>10}{'img/s b32':>11}{'prompts/s':>11}"
            f"{'img cos':>10}{'text cos':>10}"
        )
        for be, m in r.items():
            ratio = m["images_per_s_batch32"] / base["images_per_s_batch32"]
            print(
                f"{be:<18}{m['images_per_s_batch8']:>10.0f}{m['images_per_s_batch32']:>11.0f}"
                f"{m['prompts_per_s']:>11.0f}{m['image_cosine_min']:>10.5f}{m['text_cosine_min']:>10.5f}"
                f"  ({ratio:.2f}x images at batch 32, "
                f"{m['prompts_per_s'] / base['prompts_per_s']:.2f}x prompts; first calls {m['first_call']})"
            )
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "backends.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {res / 'backends.json'}")


if __name__ == "__main__":
    main()
