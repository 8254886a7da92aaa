"""Robustness: zero-shot top-1 among all 36 labels on the training generator's own images and on an
independent renderer's (model/data/probe_shapes.py), seen and held-out pairs apart. A model that
learned "red" and "star" rather than one drawing routine scores alike on both. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.bundle.encoders import Encoders
from model.bundle.prompts import load_templates
from model.bundle.zeroshot import label_matrix
from model.data.probe_shapes import ProbeShapes
from model.data.synthetic import HELD_OUT, SyntheticShapes, all_classes, class_name
from model.openset_eval import encode

SEED = 20_261_204  # apart from training, the eval sequence and the open-set splits


def _top1(feats: np.ndarray, truth: list[str], labels: list[str], matrix: np.ndarray) -> dict[str, Any]:
    guess = [labels[j] for j in (feats @ matrix.T).argmax(axis=1)]
    hits = np.array([g == t for g, t in zip(guess, truth, strict=True)])
    held = np.array([tuple(t.split()) in HELD_OUT for t in truth])
    per_class = {c: float(hits[[t == c for t in truth]].mean()) for c in labels}
    return {
        "seen_top1": float(hits[~held].mean()),
        "heldout_top1": float(hits[held].mean()),
        "all_top1": float(hits.mean()),
        "per_class_top1": per_class,
    }


def robustness_report(
    encoders: Encoders, images_per_class: int = 20, template_set: str = "synthetic"
) -> dict[str, Any]:
    labels = [class_name(*c) for c in all_classes()]
    matrix = label_matrix(encoders, labels, load_templates(template_set))
    n, size = 36 * images_per_class, encoders.preprocess.image_size
    own = SyntheticShapes(size, seed=SEED, split="all", length=n)
    probe = ProbeShapes(size, seed=SEED, length=n)
    own_samples, probe_samples = [own[i] for i in range(n)], [probe[i] for i in range(n)]
    gen = _top1(encode(encoders, (s.image for s in own_samples), n, "generator images"),
                [s.label for s in own_samples], labels, matrix)  # fmt: skip
    prb = _top1(encode(encoders, (s.image for s in probe_samples), n, "probe images"),
                [class_name(s.colour, s.shape) for s in probe_samples], labels, matrix)  # fmt: skip
    weakest = min(prb["per_class_top1"], key=prb["per_class_top1"].__getitem__)
    return {
        "dataset": "robustness",
        "template_set": template_set,
        "images_per_class": images_per_class,
        "generator": {k: v for k, v in gen.items() if k != "per_class_top1"},
        "probe": {**prb, "weakest_class": weakest, "weakest_top1": prb["per_class_top1"][weakest]},
        "gap_points": {k: 100 * (gen[f"{k}_top1"] - prb[f"{k}_top1"]) for k in ("seen", "heldout", "all")},
    }


def evaluate_robustness(bundle_path: Path | str, images_per_class: int = 20) -> dict[str, Any]:
    from model.bundle.encoders import OnnxEncoders
    from model.bundle.format import load_bundle

    bundle = load_bundle(bundle_path)
    report = robustness_report(OnnxEncoders(bundle, device="auto"), images_per_class)
    return {"model": {"name": bundle.name, "version": bundle.version}, **report}


def format_robustness(report: dict[str, Any]) -> str:
    g, p, gap = report["generator"], report["probe"], report["gap_points"]
    return "\n".join([
        f"{'images':<22}{'seen top1':>10}{'held-out':>10}{'all':>8}",
        f"{'training generator':<22}{g['seen_top1']:>10.1%}{g['heldout_top1']:>10.1%}{g['all_top1']:>8.1%}",
        f"{'independent renderer':<22}{p['seen_top1']:>10.1%}{p['heldout_top1']:>10.1%}{p['all_top1']:>8.1%}",
        f"gap (points): seen {gap['seen']:.1f}, held-out {gap['heldout']:.1f}; weakest renderer class "
        f"{p['weakest_class']} {p['weakest_top1']:.1%} ({report['images_per_class']} images per class)",
    ])  # fmt: skip
