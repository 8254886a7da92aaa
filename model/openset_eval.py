"""`zeroshot eval --open-set`: can the answers say "none of these", and are their probabilities honest?

On the synthetic world, through the bundle's encoders and the server's answer maths
(model/bundle/answers.py, model/bundle/calibration_fit.py):
- far: the label set is all 36 classes; out-of-set images hold no shape of any listed kind (empty
  backgrounds, scribbles, shapes in a colour never used: model/data/out_of_set.py);
- near: the label set is the 30 seen classes; out-of-set images show the 6 held-out pairs, each of which
  shares its colour and its shape with listed classes.
For each: AUROC and FPR at 95% TPR of every score (mcm, cosine, neglabel) and of the calibrated rule,
fitted on a separate calibration split (other images, other out-of-set images) at a 5% false-positive
target, with its TPR and FPR at the fitted threshold on the test images; expected calibration error of
the single-mode probability before and after temperature scaling; accuracy against coverage (a PNG);
multi-label F1 and mAP of multi-mode answers on scenes that hold two shapes.
Torch-free.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from model.bundle.calibration_fit import Target, fit_set
from model.bundle.calibration_store import Fit
from model.bundle.encoders import Encoders
from model.bundle.metrics import (
    auroc,
    best_f1_threshold,
    coverage_curve,
    expected_calibration_error,
    fpr_at_tpr,
    mean_average_precision,
    multilabel_f1,
)
from model.bundle.openset import (
    LEXICON_TEMPLATE,
    lexicon,
    multi_probability,
    neglabel_score,
    reference,
    select_negatives,
    sigmoid_probability,
    softmax_probability,
)
from model.bundle.preprocess import preprocess_bytes
from model.bundle.prompts import load_templates
from model.bundle.zeroshot import label_matrix
from model.data.synthetic import SyntheticShapes, all_classes, class_name, seen_classes

log = logging.getLogger(__name__)

TEST_SEED, CALIBRATION_SEED = 20_261_202, 20_261_203  # distinct from training and from each other
TARGET_FPR = 0.05


def encode(
    encoders: Encoders, images: Iterable[Image.Image], n: int, what: str, batch: int = 64
) -> np.ndarray:
    """PNG bytes -> the server's decoder -> the image encoder, [n, E] normalized."""
    feats, pixels = [], []
    for img in tqdm(images, total=n, desc=what, unit="img", leave=False):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        pixels.append(preprocess_bytes(buf.getvalue(), encoders.preprocess))
        if len(pixels) == batch:
            feats.append(encoders.encode_images(np.stack(pixels)))
            pixels = []
    if pixels:
        feats.append(encoders.encode_images(np.stack(pixels)))
    return np.concatenate(feats)


def _shapes(encoders: Encoders, split: str, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    data = SyntheticShapes(encoders.preprocess.image_size, seed=seed, split=split, length=n)
    samples = [data[i] for i in range(n)]
    return encode(encoders, (s.image for s in samples), n, f"{split} images"), [s.label for s in samples]


def _far(encoders: Encoders, n: int, seed: int) -> np.ndarray:
    from model.data.out_of_set import FarOutOfSet

    far = FarOutOfSet(image_size=encoders.preprocess.image_size, seed=seed, length=n)
    return encode(encoders, (far[i] for i in range(n)), n, "out-of-set images")


def _scores(
    feats: np.ndarray, matrix: np.ndarray, scale: float, lex: np.ndarray, neg: np.ndarray, temperature: float
) -> dict[str, np.ndarray]:
    cos = feats @ matrix.T
    return {
        "mcm": softmax_probability(cos, scale, temperature).max(axis=1).astype(np.float64),
        "cosine": cos.max(axis=1).astype(np.float64),
        "neglabel": neglabel_score(cos, feats @ lex[neg].T, scale),
    }


def _case(
    encoders: Encoders, scale: float, labels: list[str], per_class: int, outside: str, n_out: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One open-set test: its figures, and what the calibration/coverage figures need."""
    templates = load_templates("synthetic")
    matrix = label_matrix(encoders, labels, templates)
    lex = label_matrix(encoders, lexicon(encoders.tokenizer), (LEXICON_TEMPLATE,))
    neg = select_negatives(lex, matrix)
    n_in = per_class * len(labels)
    split = "all" if len(labels) == 36 else "seen"

    def images(seed: int, count_in: int, count_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f_in, names = _shapes(encoders, split, count_in, seed)
        f_out = (
            _far(encoders, count_out, seed)
            if outside == "far"
            else _shapes(encoders, "heldout", count_out, seed)[0]
        )
        truth = np.array([labels.index(t) for t in names])
        return f_in, truth, f_out

    c_in, c_truth, c_out = images(CALIBRATION_SEED, n_in, n_out)  # as many as the test: tails are noisy
    feats = np.concatenate([c_in, c_out])
    y = np.concatenate([c_truth, -np.ones(len(c_out), dtype=np.int64)])
    fit = fit_set(feats, y, labels, matrix, scale, lex, neg, Target(fpr=TARGET_FPR), "eval", {}, "eval")
    t_in, t_truth, t_out = images(TEST_SEED, n_in, n_out)
    scores = {
        "in": _scores(t_in, matrix, scale, lex, neg, 1.0),
        "out": _scores(t_out, matrix, scale, lex, neg, 1.0),
    }
    report: dict[str, Any] = {
        "labels": len(labels),
        "in_set_images": n_in,
        "out_of_set_images": n_out,
        "scores": {},
    }
    for s in ("mcm", "cosine", "neglabel"):
        pos, negs = scores["in"][s], scores["out"][s]
        report["scores"][s] = {"auroc": auroc(pos, negs), "fpr_at_95tpr": fpr_at_tpr(pos, negs, 0.95)}
    report["calibrated"] = _calibrated(fit, t_in, t_out, matrix, scale, lex, neg)
    extra = {"fit": fit, "in": t_in, "truth": t_truth, "out": t_out, "matrix": matrix, "scale": scale,
             "lex": lex, "neg": neg}  # fmt: skip
    return report, extra


def _calibrated(
    fit: Fit,
    t_in: np.ndarray,
    t_out: np.ndarray,
    matrix: np.ndarray,
    scale: float,
    lex: np.ndarray,
    neg: np.ndarray,
) -> dict[str, Any]:
    if fit.rule is None:
        return {"rule": None}
    score, threshold = fit.rule.score, fit.rule.threshold
    pos = _scores(t_in, matrix, scale, lex, neg, fit.temperature)[score]
    negs = _scores(t_out, matrix, scale, lex, neg, fit.temperature)[score]
    return {
        "score": score,
        "threshold": threshold,
        "temperature": fit.temperature,
        "auroc": auroc(pos, negs),
        "fpr_at_95tpr": fpr_at_tpr(pos, negs, 0.95),
        "tpr_at_threshold": float((pos >= threshold).mean()),
        "fpr_at_threshold": float((negs >= threshold).mean()),
        "target_fpr": TARGET_FPR,
    }


def _calibration_figures(extra: dict[str, Any]) -> dict[str, Any]:
    """ECE of the single-mode top probability on the far test's in-set images, before and after the
    temperature fitted on the calibration split; accuracy against coverage over in- and out-of-set."""
    cos = extra["in"] @ extra["matrix"].T
    correct = cos.argmax(axis=1) == extra["truth"]
    before = softmax_probability(cos, extra["scale"]).max(axis=1)
    after = softmax_probability(cos, extra["scale"], extra["fit"].temperature).max(axis=1)
    return {
        "temperature": extra["fit"].temperature,
        "ece_before": expected_calibration_error(before, correct),
        "ece_after": expected_calibration_error(after, correct),
        "top1": float(correct.mean()),
    }


def _coverage(extra: dict[str, Any], plot: Path | None) -> dict[str, Any]:
    """Accuracy of the answers kept against the share kept, over the far test's in- and out-of-set
    images (an out-of-set answer is always wrong), ordered by the calibrated rule's score."""
    fit = extra["fit"]
    score = fit.rule.score if fit.rule is not None else "mcm"
    conf = np.concatenate([
        _scores(extra[k], extra["matrix"], extra["scale"], extra["lex"], extra["neg"], fit.temperature)[score]
        for k in ("in", "out")
    ])  # fmt: skip
    right = (extra["in"] @ extra["matrix"].T).argmax(axis=1) == extra["truth"]
    correct = np.concatenate([right, np.zeros(len(extra["out"]), bool)])
    coverage, accuracy = coverage_curve(conf, correct)
    at: dict[str, Any] = {"score": score}
    for c in (0.5, 0.6, 0.8, 1.0):
        at[f"accuracy_at_{int(100 * c)}pct"] = float(accuracy[max(0, int(np.ceil(c * len(accuracy))) - 1)])
    if plot is not None:
        _plot(coverage, accuracy, plot, f"far open-set test, ordered by {score}")
    return at


def _plot(coverage: np.ndarray, accuracy: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(coverage, accuracy)
    ax.set(xlabel="coverage (share of images answered)", ylabel="accuracy of the answers kept",
           title=title, ylim=(0, 1.02))  # fmt: skip
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _multilabel(
    encoders: Encoders, extra: dict[str, Any], n: int, logit_bias: float | None = None
) -> dict[str, Any]:
    """Multi-mode answers on two-object scenes (all 36 classes listed): micro F1 at 0.5 and at the best
    threshold, and mAP, uncalibrated and with the per-label sigmoids fitted on single-object images;
    for a sigmoid-loss model also its own sigmoid, which is what the server answers mode=multi with."""
    data = SyntheticShapes(encoders.preprocess.image_size, seed=TEST_SEED, split="scenes", length=n)
    samples = [data[i] for i in range(n)]
    feats = encode(encoders, (x.image for x in samples), n, "two-object scenes")
    labels = [class_name(*c) for c in all_classes()]
    truth = np.zeros((n, len(labels)), bool)
    for i, x in enumerate(samples):
        for obj in x.objects:
            truth[i, labels.index(class_name(*obj))] = True
    cos = feats @ extra["matrix"].T
    ref = reference(feats @ extra["lex"].T)
    fit = extra["fit"]
    out: dict[str, Any] = {"images": n, "objects_per_image": 2}
    probabilities = {
        "uncalibrated": multi_probability(cos, ref, extra["scale"]),
        "calibrated": multi_probability(cos, ref, extra["scale"], np.array(fit.a), np.array(fit.b)),
    }
    if logit_bias is not None:
        probabilities["model_sigmoid"] = sigmoid_probability(cos, extra["scale"], logit_bias)
    for name, p in probabilities.items():
        best_t, best_f1 = best_f1_threshold(p, truth)
        out[name] = {
            "f1_at_0.5": multilabel_f1(p, truth, 0.5)["f1"],
            "best_threshold": best_t,
            "best_f1": best_f1,
            "mAP": mean_average_precision(p, truth),
        }
    return out


def openset_report(
    encoders: Encoders,
    logit_scale: float,
    per_class: int = 10,
    out_images: int = 360,
    plot: Path | None = None,
    logit_bias: float | None = None,
) -> dict[str, Any]:
    """Both tests: per_class test images per listed class, out_images far out-of-set images (the near
    test takes 2 x per_class per held-out pair); the calibration split is half as large. `logit_bias`:
    a sigmoid-loss model's (the manifest's scoring), whose own sigmoid is reported beside the others."""
    far_labels = [class_name(*c) for c in all_classes()]
    near_labels = [class_name(*c) for c in seen_classes()]
    far, far_extra = _case(encoders, logit_scale, far_labels, per_class, "far", out_images)
    near, _ = _case(encoders, logit_scale, near_labels, per_class, "near", 6 * per_class * 2)
    return {
        "dataset": "openset",
        "far": far,
        "near": near,
        "calibration": _calibration_figures(far_extra),
        "coverage": _coverage(far_extra, plot),
        "multilabel": _multilabel(encoders, far_extra, 36 * per_class, logit_bias),
        "plot": None if plot is None else str(plot),
    }


def format_openset(report: dict[str, Any]) -> str:
    lines = [f"{'test':<6}{'score':<12}{'AUROC':>8}{'FPR@95%TPR':>12}"]
    for case in ("far", "near"):
        r = report[case]
        for s, v in r["scores"].items():
            lines.append(f"{case:<6}{s:<12}{v['auroc']:>8.3f}{v['fpr_at_95tpr']:>12.3f}")
        c = r["calibrated"]
        if c.get("score"):
            lines.append(
                f"{case:<6}{'calibrated':<12}{c['auroc']:>8.3f}{c['fpr_at_95tpr']:>12.3f}   "
                f"({c['score']} >= {c['threshold']:.4g}: TPR {c['tpr_at_threshold']:.3f}, "
                f"FPR {c['fpr_at_threshold']:.3f}, target {c['target_fpr']})"
            )
    cal = report["calibration"]
    lines.append(
        f"expected calibration error {cal['ece_before']:.3f} -> {cal['ece_after']:.3f} "
        f"(temperature {cal['temperature']:.3f}); top-1 {cal['top1']:.3f}"
    )
    cov = report["coverage"]
    at = ", ".join(f"{k.split('_')[-1]}: {v:.3f}" for k, v in cov.items() if k != "score")
    lines.append(f"far test, answers ordered by {cov['score']}: accuracy at coverage {at}")
    for name in ("uncalibrated", "calibrated", "model_sigmoid"):
        m = report["multilabel"].get(name)
        if m is None:  # model_sigmoid: only for a sigmoid-loss model
            continue
        lines.append(
            f"two-object scenes, multi {name}: F1 {m['f1_at_0.5']:.3f} at 0.5, {m['best_f1']:.3f} at "
            f"{m['best_threshold']:.3g}; mAP {m['mAP']:.3f}"
        )
    if report.get("plot"):
        lines.append(f"accuracy against coverage: {report['plot']}")
    return "\n".join(lines)


def evaluate_openset(
    bundle_path: Path, per_class: int = 10, out_images: int = 360, plot: Path | None = None
) -> dict[str, Any]:
    """openset_report through the bundle's ONNX encoders."""
    from model.bundle.encoders import OnnxEncoders
    from model.bundle.format import load_bundle

    bundle = load_bundle(bundle_path)
    report = openset_report(
        OnnxEncoders(bundle, device="auto"),
        bundle.logit_scale,
        per_class,
        out_images,
        plot,
        bundle.logit_bias,
    )
    return {"model": {"name": bundle.name, "version": bundle.version}, **report}
