"""Zero-shot evaluation through the exported ONNX bundle, on the path the server takes.

Images are encoded as PNG bytes and decoded by the server's preprocessing; texts go through the
bundle's tokenizer and the server's prompt ensembling (app.runtime.classifier). Torch-free.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.runtime.classifier import label_matrix
from app.runtime.encoders import OnnxEncoders
from model.bundle import Bundle, load_bundle, update_eval
from model.data.synthetic import HELD_OUT, SyntheticShapes, all_classes, class_name
from model.preprocess import preprocess_bytes
from model.prompts import get_templates

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE_SETS = ("none", "default", "synthetic")
EVAL_SEED = 20_211_231  # fixed and distinct from any training seed: the same images for every model


def _encode_split(
    encoders: OnnxEncoders, split: str, n: int, batch: int = 64
) -> tuple[np.ndarray, list[str]]:
    data = SyntheticShapes(image_size=encoders.preprocess.image_size, seed=EVAL_SEED, split=split, length=n)
    feats, names = [], []
    for start in tqdm(range(0, n, batch), desc=f"eval {split}", unit="batch", leave=False):
        pixels = []
        for i in range(start, min(n, start + batch)):
            s = data[i]
            buf = io.BytesIO()
            s.image.save(buf, format="PNG")  # as an upload: bytes in, the server's decoder out
            pixels.append(preprocess_bytes(buf.getvalue(), encoders.preprocess))
            names.append(class_name(s.colour, s.shape))
        feats.append(encoders.encode_images(np.stack(pixels)))
    return np.concatenate(feats), names


def _metrics(sim: np.ndarray, truth: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    target = np.array([classes.index(t) for t in truth])
    top5 = np.argsort(-sim, axis=1)[:, :5]
    hit1 = top5[:, 0] == target
    per_class: dict[str, list[bool]] = defaultdict(list)
    for name, hit in zip(truth, hit1, strict=True):
        per_class[name].append(bool(hit))
    recall = {k: float(np.mean(v)) for k, v in sorted(per_class.items())}
    return {
        "top1": float(hit1.mean()),
        "top5": float((top5 == target[:, None]).any(axis=1).mean()),
        "mean_per_class_recall": float(np.mean(list(recall.values()))),
        "per_class_top1": recall,
        "images": len(truth),
    }


def evaluate_synthetic(
    bundle: Bundle | str | Path,
    heldout_images: int = 600,
    seen_images: int = 1500,
    template_sets: Sequence[str] = DEFAULT_TEMPLATE_SETS,
    write: bool = True,
) -> dict[str, Any]:
    """Top-1/top-5 among all colour-shape classes for held-out and seen pairs, per template set."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    encoders = OnnxEncoders(bundle, device="auto")
    classes = [class_name(*c) for c in all_classes()]
    splits = {
        "heldout": _encode_split(encoders, "heldout", heldout_images),
        "seen": _encode_split(encoders, "seen", seen_images),
    }
    results: dict[str, Any] = {}
    for tset in template_sets:
        matrix = label_matrix(encoders, classes, get_templates(tset))
        results[tset] = {
            split: _metrics(f @ matrix.T, names, classes) for split, (f, names) in splits.items()
        }
    primary = "synthetic" if "synthetic" in results else template_sets[0]
    held = results[primary]["heldout"]["per_class_top1"]
    weakest = min(held, key=held.__getitem__)
    report = {
        "dataset": "synthetic",
        "classes": len(classes),
        "held_out_classes": sorted(class_name(*c) for c in HELD_OUT),
        "seed": EVAL_SEED,
        "results": results,
        "summary": {
            "template_set": primary,
            "heldout_top1": results[primary]["heldout"]["top1"],
            "seen_top1": results[primary]["seen"]["top1"],
            "weakest_heldout_class": weakest,
            "weakest_heldout_top1": held[weakest],
        },
    }
    if write:
        update_eval(bundle, report)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'templates':<12}{'held-out top1':>15}{'top5':>8}{'seen top1':>12}{'top5':>8}"]
    for tset, r in report["results"].items():
        h, s = r["heldout"], r["seen"]
        lines.append(
            f"{tset:<12}{100 * h['top1']:>14.1f}%{100 * h['top5']:>7.1f}%"
            f"{100 * s['top1']:>11.1f}%{100 * s['top5']:>7.1f}%"
        )
    sm = report["summary"]
    lines.append(
        f"weakest held-out pair ({sm['template_set']} templates): {sm['weakest_heldout_class']} "
        f"{100 * sm['weakest_heldout_top1']:.1f}%"
    )
    return "\n".join(lines)
