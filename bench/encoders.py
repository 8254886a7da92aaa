"""Encoder speed: onnxruntime vs PyTorch eager on the same weights, fp32 vs int8, against the
machine's measured matrix-multiply peak.

    .venv/bin/python bench/encoders.py [--seconds 3] [--skip-b32]

1. Peak: float32 2048^3 matrix multiply in numpy (OpenBLAS), torch and onnxruntime (MLAS), all cores;
   the best of the three is the machine's measured peak.
2. A randomly initialised ViT-B/32 (the paper's sizes; random weights are fine for speed), exported
   to a bundle: image encoder images/s at batch 1, 8, 32 in onnxruntime fp32, onnxruntime int8
   (dynamic quantization of the MatMuls) and torch eager; text encoder prompts/s at batch 32 on
   typical label prompts (dynamic padding) in onnxruntime and torch. GFLOP/s from the paper's
   8.82 GFLOPs per image.
3. The default model: fp32 vs int8 image encoders on the eval images (600 held-out + 1,500 seen):
   what `zeroshot export --int8` writes (static QDQ, calibrated on the export's sample images) and,
   for comparison, dynamic quantization; cosine between the features, top-1 agreement among the 36
   classes, and the speed of fp32 and int8 at batch 1 and 32, timed back to back.
Writes bench/results/encoders.json.
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
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from model.bundle.encoders import OnnxEncoders, available_cpus, l2_normalize
from model.bundle.format import IMAGE_ENCODER, IMAGE_ENCODER_INT8, Bundle, current_bundle
from model.bundle.preprocess import PreprocessConfig, preprocess_bytes
from model.bundle.prompts import fill, get_templates
from model.bundle.tokenizer import ClipTokenizer
from model.bundle.zeroshot import label_matrix
from model.clip import build_model
from model.data.synthetic import SyntheticShapes, all_classes, class_name
from model.evaluate import EVAL_SEED
from model.export import export_bundle, requantize_image_encoder

VIT_B32_GFLOPS_PER_IMAGE = 8.82  # the paper's figure (Radford et al. 2021, Table 20)


def rate(fn: Callable[[], Any], items: int, seconds: float) -> float:
    """Items per second: median over repeated calls for about `seconds`, after two warm-up calls."""
    fn()
    fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return items / statistics.median(times)


def matmul_peak(seconds: float) -> dict[str, float]:
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ta = torch.from_numpy(a)
    flops = 2 * n**3
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])],
        "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(a, "B")],
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = available_cpus()
    mm = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(),
        opts,
        providers=["CPUExecutionProvider"],
    )
    peak = {
        "numpy_gflops": rate(lambda: a @ a, flops, seconds) / 1e9,
        "torch_gflops": rate(lambda: torch.mm(ta, ta), flops, seconds) / 1e9,
        "onnxruntime_gflops": rate(lambda: mm.run(None, {"A": a}), flops, seconds) / 1e9,
    }
    peak["best_gflops"] = max(peak.values())
    return peak


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def quantized(src: Path, dst: Path, op_types: list[str]) -> Path:
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    return dst


def label_prompts() -> list[str]:
    classes = [class_name(*c) for c in all_classes()]
    return [p for c in classes for p in fill(get_templates("imagenet80"), c)]


def vit_b32(seconds: float, threads: int) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = build_model("ViT-B-32").eval()
    rng = np.random.default_rng(0)
    texts = label_prompts()
    out: dict[str, Any] = {"image": [], "text": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sample = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
        bundle = export_bundle(
            model, ClipTokenizer.clip_bpe(), Path(tmp) / "b32", sample, texts[:32], version="v1"
        )
        fp32 = session(bundle.file(IMAGE_ENCODER), threads)
        int8 = session(
            quantized(bundle.file(IMAGE_ENCODER), Path(tmp) / "int8.onnx", ["MatMul", "Gemm"]), threads
        )
        for b in (1, 8, 32):
            x = rng.standard_normal((b, 3, 224, 224)).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                row = {
                    "batch": b,
                    "ort_fp32": rate(lambda: fp32.run(None, {"pixel_values": x}), b, seconds),  # noqa: B023
                    "ort_int8": rate(lambda: int8.run(None, {"pixel_values": x}), b, seconds),  # noqa: B023
                    "torch_eager": rate(lambda: model.encode_image(xt), b, seconds),  # noqa: B023
                }
            row["ort_fp32_gflops"] = row["ort_fp32"] * VIT_B32_GFLOPS_PER_IMAGE
            out["image"].append(row)
            print(
                f"ViT-B/32 image  batch {b:>2}: ort fp32 {row['ort_fp32']:7.1f}  "
                f"ort int8 {row['ort_int8']:7.1f}  torch {row['torch_eager']:7.1f} images/s  "
                f"({row['ort_fp32_gflops']:.0f} GFLOP/s fp32)"
            )
        enc = OnnxEncoders(bundle, device="cpu", intra_op_threads=threads)
        batch = texts[:32]
        ids = torch.from_numpy(enc.tokenizer.encode_batch(batch))
        with torch.inference_mode():
            out["text"] = {
                "batch": 32,
                "mean_tokens": float(np.mean(enc.tokenizer.token_lengths(batch))),
                "ort": rate(lambda: enc.encode_texts(batch), 32, seconds),
                "torch_eager": rate(lambda: model.encode_text(ids), 32, seconds),
            }
        t = out["text"]
        print(f"ViT-B/32 text   batch 32: ort {t['ort']:7.1f}  torch {t['torch_eager']:7.1f} prompts/s")
    return out


def eval_pixels(size: int, n: int, split: str) -> np.ndarray:
    data = SyntheticShapes(image_size=size, seed=EVAL_SEED, split=split, length=n)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        data[i].image.save(buf, format="PNG")
        out.append(preprocess_bytes(buf.getvalue(), PreprocessConfig(image_size=size)))
    return np.stack(out)


def default_int8(bundle: Bundle, seconds: float, threads: int) -> dict[str, Any]:
    """fp32 against three int8 encoders of the default model on its eval images: what `export --int8`
    writes (static QDQ calibrated on the export's own sample images), and dynamic quantization of the
    MatMuls, and of the MatMuls and Convs, for comparison."""
    enc = OnnxEncoders(bundle, device="cpu", intra_op_threads=threads)
    size = enc.preprocess.image_size
    pixels = np.concatenate([eval_pixels(size, 600, "heldout"), eval_pixels(size, 1500, "seen")])
    classes = [class_name(*c) for c in all_classes()]
    matrix = label_matrix(enc, classes, get_templates("synthetic"))

    def feats(s: ort.InferenceSession) -> np.ndarray:
        return np.concatenate(
            [
                l2_normalize(s.run(None, {"pixel_values": pixels[i : i + 256]})[0])
                for i in range(0, len(pixels), 256)
            ]
        )

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = session(bundle.file(IMAGE_ENCODER), threads)
        a = feats(fp32)
        requantize_image_encoder(bundle, Path(tmp))
        variants = {
            "static QDQ (export --int8)": Path(tmp) / IMAGE_ENCODER_INT8,
            "dynamic MatMul": quantized(
                bundle.file(IMAGE_ENCODER), Path(tmp) / "d1.onnx", ["MatMul", "Gemm"]
            ),
            "dynamic MatMul+Conv": quantized(
                bundle.file(IMAGE_ENCODER), Path(tmp) / "d2.onnx", ["MatMul", "Gemm", "Conv"]
            ),
        }
        rows = {}
        for name, path in variants.items():
            q = session(path, threads)
            b = feats(q)
            cos = (a * b).sum(axis=1)
            top_a, top_b = (a @ matrix.T).argmax(axis=1), (b @ matrix.T).argmax(axis=1)
            r: dict[str, Any] = {
                "images": len(pixels),
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
                "top1_agreement": float((top_a == top_b).mean()),
            }
            for batch in (1, 32):  # fp32 and int8 timed back to back, so both see the same machine
                x = pixels[:batch]
                r[f"fp32_b{batch}"] = rate(lambda: fp32.run(None, {"pixel_values": x}), batch, seconds)  # noqa: B023
                r[f"int8_b{batch}"] = rate(lambda: q.run(None, {"pixel_values": x}), batch, seconds)  # noqa: B023
            rows[name] = r
            print(
                f"default {name:<27}: cosine mean {r['cosine_mean']:.4f} min {r['cosine_min']:.4f}, "
                f"top-1 agreement {100 * r['top1_agreement']:.1f}%, images/s fp32 vs int8: batch 1 "
                f"{r['fp32_b1']:.0f} vs {r['int8_b1']:.0f} ({r['int8_b1'] / r['fp32_b1']:.2f}x), batch 32 "
                f"{r['fp32_b32']:.0f} vs {r['int8_b32']:.0f} ({r['int8_b32'] / r['fp32_b32']:.2f}x)",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="timing window per figure")
    ap.add_argument("--skip-b32", action="store_true", help="only the peak and the default model")
    ap.add_argument("--bundle", default="models/default")
    args = ap.parse_args()
    threads = available_cpus()
    peak = matmul_peak(args.seconds)
    print(
        f"peak float32 matmul 2048^3: numpy {peak['numpy_gflops']:.0f}, torch {peak['torch_gflops']:.0f}, "
        f"onnxruntime {peak['onnxruntime_gflops']:.0f} GFLOP/s"
    )
    result: dict[str, Any] = {"machine": platform.machine(), "threads": threads, "peak": peak}
    result["default_int8"] = default_int8(current_bundle(args.bundle), args.seconds, threads)
    if not args.skip_b32:
        result["vit_b32"] = vit_b32(args.seconds, threads)
    out = Path("bench/results/encoders.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
