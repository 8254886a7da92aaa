"""Text encoder speed: prompts padded to the longest in the batch vs padded to 77 tokens.

    .venv/bin/python bench/text_padding.py [--bundle models/default] [--vit-b32]

Runs the bundle's ONNX text encoder in onnxruntime on typical label prompts (the 36 synthetic class
names x the 80 ImageNet templates) and prints prompts/s for both paddings, plus the largest
difference between the two results. `--vit-b32` also exports a randomly initialised ViT-B/32-sized
model (text tower 63M parameters) and measures it the same way. Writes bench/results/text_padding.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from model.bundle.encoders import OnnxEncoders
from model.bundle.format import Bundle, current_bundle
from model.bundle.prompts import fill, get_templates
from model.data.synthetic import all_classes, class_name


def prompts() -> list[str]:
    return [p for c in all_classes() for p in fill(get_templates("imagenet80"), class_name(*c))]


def measure(enc: OnnxEncoders, texts: list[str], pad_to: int | None, batch: int, repeat: int = 3) -> float:
    enc.encode_texts(texts[:batch], batch_size=batch, pad_to=pad_to)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        enc.encode_texts(texts, batch_size=batch, pad_to=pad_to)
        best = min(best, time.perf_counter() - t)
    return len(texts) / best


def bench(bundle: Bundle, label: str, texts: list[str], batch: int) -> dict[str, object]:
    enc = OnnxEncoders(bundle, device="cpu")
    lengths = enc.tokenizer.token_lengths(texts)
    dyn = measure(enc, texts, None, batch)
    full = measure(enc, texts, 77, batch)
    diff = float(np.abs(enc.encode_texts(texts[:512]) - enc.encode_texts(texts[:512], pad_to=77)).max())
    row = {
        "model": label,
        "prompts": len(texts),
        "batch": batch,
        "mean_tokens": float(np.mean(lengths)),
        "max_tokens": int(max(lengths)),
        "dynamic_prompts_per_s": dyn,
        "pad77_prompts_per_s": full,
        "speedup": dyn / full,
        "max_abs_diff": diff,
    }
    print(f"{label:<22}{row['mean_tokens']:>8.1f}{dyn:>14.0f}{full:>14.0f}{dyn / full:>9.1f}x{diff:>12.1e}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="models/default")
    ap.add_argument("--vit-b32", action="store_true", help="also measure a random ViT-B/32-sized model")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    texts = prompts()
    print(f"{'model':<22}{'tokens':>8}{'dynamic p/s':>14}{'pad-77 p/s':>14}{'speedup':>10}{'max diff':>12}")
    rows = [bench(current_bundle(args.bundle), "default (tiny)", texts, args.batch)]
    if args.vit_b32:
        import torch

        from model.bundle.tokenizer import ClipTokenizer
        from model.clip import build_model
        from model.export import export_bundle

        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            model = build_model("ViT-B-32").eval()
            images = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
            b = export_bundle(
                model, ClipTokenizer.clip_bpe(), Path(tmp) / "b32", images, texts[:32], version="v1"
            )
            rows.append(bench(b, "ViT-B/32 (random)", texts[:1024], args.batch))
    out = Path("bench/results/text_padding.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
