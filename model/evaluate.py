"""Zero-shot evaluation, on the path the server takes: the one evaluation of the project.

Images are encoded as PNG bytes (synthetic) or read from files (an image folder) and decoded by the
server's preprocessing; texts go through the tokenizer and the shared prompt ensembling
(model/bundle/zeroshot.py). `synthetic_report` and `folder_report` take any encoders: `zeroshot eval`
passes the bundle's ONNX ones (`evaluate_synthetic`, `evaluate_folder`), the trainer its model in
torch (model/train_eval.py), so the figures a run logs and the figures of its bundle are comparable.
Torch-free.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.bundle.encoders import Backend, Encoders, ImagePrecision, available_cpus, open_encoders
from model.bundle.format import Bundle, load_bundle, update_eval
from model.bundle.preprocess import PreprocessConfig, preprocess_bytes
from model.bundle.prompts import load_templates
from model.bundle.zeroshot import label_matrix
from model.data.files import (
    ITEM_ERRORS,
    DataError,
    FolderIndex,
    item_error_reason,
    load_image_file,
    scan_image_folder,
)
from model.data.synthetic import HELD_OUT, SyntheticShapes, all_classes, class_name

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE_SETS = ("none", "default", "synthetic")
FOLDER_TEMPLATE_SETS = ("default", "imagenet7", "imagenet80")
EVAL_SEED = 20_211_231  # fixed and distinct from any training seed: the same images for every model


def _encode_split(encoders: Encoders, split: str, n: int, batch: int = 64) -> tuple[np.ndarray, list[str]]:
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
    position = {c: i for i, c in enumerate(classes)}  # not classes.index: 1000 classes x 50k images
    target = np.array([position[t] for t in truth])
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


def class_scores(
    encoders: Encoders, image_features: np.ndarray, classes: Sequence[str], templates: Sequence[str]
) -> np.ndarray:
    """[N, C] zero-shot scores: cosine to the prompt-ensembled label embeddings, or, for a model that
    scores captions instead of embedding them (caption-lm, bow-predictive: model/objective_eval.py),
    its own `class_scores` (the prompts' log-likelihoods)."""
    own = getattr(encoders, "class_scores", None)
    if own is not None:
        return np.asarray(own(image_features, classes, templates))
    return image_features @ label_matrix(encoders, classes, templates).T


def synthetic_report(
    encoders: Encoders,
    heldout_images: int = 600,
    seen_images: int = 1500,
    template_sets: Sequence[str] = DEFAULT_TEMPLATE_SETS,
) -> dict[str, Any]:
    """Top-1/top-5 among all colour-shape classes for held-out and seen pairs, per template set, on
    the first images of the fixed eval sequence (EVAL_SEED): the same images for every model."""
    classes = [class_name(*c) for c in all_classes()]
    splits = {
        "heldout": _encode_split(encoders, "heldout", heldout_images),
        "seen": _encode_split(encoders, "seen", seen_images),
    }
    results: dict[str, Any] = {}
    for tset in template_sets:
        templates = load_templates(tset)
        results[tset] = {
            split: _metrics(class_scores(encoders, f, classes, templates), names, classes)
            for split, (f, names) in splits.items()
        }
    primary = "synthetic" if "synthetic" in results else template_sets[0]
    held = results[primary]["heldout"]["per_class_top1"]
    weakest = min(held, key=held.__getitem__)
    backend = getattr(encoders, "backend", "onnxruntime")  # a torch model in training has none
    return {
        "dataset": "synthetic",
        "image_precision": encoders.image_precision,
        "backend": backend,
        "classes": len(classes),
        "held_out_classes": sorted(class_name(*c) for c in HELD_OUT),
        "seed": EVAL_SEED,
        "results": results,
        "summary": {
            "dataset": "synthetic",
            "image_precision": encoders.image_precision,
            "backend": backend,
            "template_set": primary,
            "heldout_top1": results[primary]["heldout"]["top1"],
            "seen_top1": results[primary]["seen"]["top1"],
            "weakest_heldout_class": weakest,
            "weakest_heldout_top1": held[weakest],
        },
    }


def evaluate_synthetic(
    bundle: Bundle | str | Path,
    heldout_images: int = 600,
    seen_images: int = 1500,
    template_sets: Sequence[str] = DEFAULT_TEMPLATE_SETS,
    write: bool = True,
    image_precision: ImagePrecision = "fp32",
    backend: Backend = "onnxruntime",
    precision: str = "fp32",
) -> dict[str, Any]:
    """synthetic_report through the bundle's ONNX encoders, on the backend and precision asked for;
    kept in its eval.json unless write=False."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    encoders = open_encoders(bundle, backend, precision, "auto", image_precision=image_precision)
    report = synthetic_report(encoders, heldout_images, seen_images, template_sets)
    if write:
        save_report(bundle, report)
    return report


def _report_key(report: dict[str, Any]) -> str:
    dataset = str(report.get("dataset", "synthetic"))
    key = f"folder:{report.get('folder')}" if dataset == "folder" else dataset
    precision = report.get("image_precision", "fp32")
    backend = report.get("backend", "onnxruntime")
    if backend != "onnxruntime":  # openvino figures beside onnxruntime's
        key = f"{key}:{backend}"
    return key if precision == "fp32" else f"{key}:{precision}"  # int8 or bf16 figures beside fp32 ones


def save_report(bundle: Bundle, report: dict[str, Any]) -> None:
    """Write eval.json: this report at the top (its `summary` is what /v1/models shows), and the
    latest report of every other dataset under `other_reports`, so one eval does not erase another."""
    old = bundle.eval_results() or {}
    others = dict(old.pop("other_reports", None) or {})
    if isinstance(old.get("summary"), dict):
        others[_report_key(old)] = old
    others.pop(_report_key(report), None)
    update_eval(bundle, {**report, "other_reports": others} if others else report)


def _take(samples: Sequence[tuple[Path, int]], limit: int | None) -> list[tuple[Path, int]]:
    """At most `limit` samples, taken round-robin over the classes so that any limit stays balanced."""
    if limit is None or limit >= len(samples):
        return list(samples)
    by_class: dict[int, list[tuple[Path, int]]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    rounds = itertools.zip_longest(*by_class.values())
    return [s for s in itertools.chain.from_iterable(rounds) if s is not None][:limit]


def _read(path: Path, cfg: PreprocessConfig) -> np.ndarray | str:
    """Pixels, or the reason the file cannot be used."""
    try:
        return load_image_file(path, cfg)
    except ITEM_ERRORS as e:
        return item_error_reason(e)


def _read_ahead(
    samples: Sequence[tuple[Path, int]], cfg: PreprocessConfig, batch: int
) -> Iterator[list[tuple[Path, int, np.ndarray | str]]]:
    """Batches of decoded images, read by a small thread pool (Pillow decodes without the GIL) while
    the previous batch is encoded; at most two batches are in flight, so memory stays bounded."""
    threads = max(1, min(4, available_cpus()))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="eval-read") as pool:
        pending: deque[list[tuple[Path, int, Future[np.ndarray | str]]]] = deque()
        for start in range(0, len(samples), batch):
            pending.append([(p, y, pool.submit(_read, p, cfg)) for p, y in samples[start : start + batch]])
            if len(pending) == 2:
                yield [(p, y, f.result()) for p, y, f in pending.popleft()]
        while pending:
            yield [(p, y, f.result()) for p, y, f in pending.popleft()]


def _encode_folder(
    encoders: Encoders, samples: Sequence[tuple[Path, int]], batch: int = 64
) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Normalized image features [N, E], their class indices, and the files skipped (with reasons)."""
    feats, labels, skipped = [], [], []
    total = (len(samples) + batch - 1) // batch
    chunks = _read_ahead(samples, encoders.preprocess, batch)
    for chunk in tqdm(chunks, total=total, desc="eval folder", unit="batch", leave=False):
        pixels = []
        for path, label, result in chunk:
            if isinstance(result, str):
                log.warning("skipping unreadable image %s: %s", path, result)
                skipped.append({"path": str(path), "reason": result})
            else:
                pixels.append(result)
                labels.append(label)
        if pixels:
            feats.append(encoders.encode_images(np.stack(pixels)))
    if not feats:
        raise DataError(f"none of the {len(samples)} images could be read")
    return np.concatenate(feats), labels, skipped


def folder_report(
    encoders: Encoders,
    folder: str | Path,
    template_sets: Sequence[str] = FOLDER_TEMPLATE_SETS,
    limit: int | None = None,
) -> dict[str, Any]:
    """Zero-shot top-1/top-5/mean per-class recall on `folder/<class>/<images>`, per template set.

    Every class folder is a candidate label ("red_circle" -> "red circle"). Unreadable images are
    skipped and listed; `limit` evaluates at most that many images, round-robin over the classes.
    A template set is a set name or a template file (model.bundle.prompts.load_templates)."""
    return _folder_report(encoders, *_folder_args(folder, template_sets, limit), limit)


def _folder_args(
    folder: str | Path, template_sets: Sequence[str], limit: int | None
) -> tuple[dict[str, tuple[str, ...]], FolderIndex]:
    """The templates and the folder's index; bad arguments fail here, before any model is loaded."""
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    if not template_sets:
        raise DataError("no template sets to evaluate")
    return {t: load_templates(t) for t in template_sets}, scan_image_folder(folder)


def _folder_report(
    encoders: Encoders, templates: dict[str, tuple[str, ...]], index: FolderIndex, limit: int | None
) -> dict[str, Any]:
    template_sets = list(templates)
    classes = list(index.classes)
    feats, labels, skipped = _encode_folder(encoders, _take(index.samples, limit))
    truth = [classes[y] for y in labels]
    results = {
        t: _metrics(class_scores(encoders, feats, classes, ts), truth, classes) for t, ts in templates.items()
    }
    primary = results[template_sets[0]]
    recall = primary["per_class_top1"]
    weakest = min(recall, key=recall.__getitem__)
    root = str(index.root.resolve())
    counts = {"classes": len(classes), "images": len(truth), "skipped": len(skipped)}
    precision = encoders.image_precision
    summary = {
        "dataset": "folder",
        "image_precision": precision,
        "folder": root,
        "template_set": template_sets[0],
        **counts,
        **{k: primary[k] for k in ("top1", "top5", "mean_per_class_recall")},
        "weakest_class": weakest,
        "weakest_class_top1": recall[weakest],
    }
    return {
        "dataset": "folder",
        "image_precision": precision,
        "backend": getattr(encoders, "backend", "onnxruntime"),
        "folder": root,
        **counts,
        "class_names": classes,
        "limit": limit,
        "skipped_files": skipped[:50],  # the first few say what is wrong; the log has them all
        "results": results,
        "summary": summary,
    }


def evaluate_folder(
    bundle: Bundle | str | Path,
    folder: str | Path,
    template_sets: Sequence[str] = FOLDER_TEMPLATE_SETS,
    limit: int | None = None,
    write: bool = True,
    image_precision: ImagePrecision = "fp32",
    backend: Backend = "onnxruntime",
    precision: str = "fp32",
) -> dict[str, Any]:
    """folder_report through the bundle's ONNX encoders, on the backend and precision asked for;
    kept in its eval.json unless write=False."""
    templates, index = _folder_args(folder, template_sets, limit)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    encoders = open_encoders(bundle, backend, precision, "auto", image_precision=image_precision)
    report = _folder_report(encoders, templates, index, limit)
    if write:
        save_report(bundle, report)
    return report


def format_report(report: dict[str, Any]) -> str:
    text = _format_folder_report(report) if report.get("dataset") == "folder" else _format_synthetic(report)
    precision = report.get("image_precision", "fp32")
    backend = report.get("backend", "onnxruntime")
    if backend != "onnxruntime":
        return f"backend: {backend}, {precision}\n{text}"
    return text if precision == "fp32" else f"image encoder: {precision}\n{text}"


def _format_synthetic(report: dict[str, Any]) -> str:
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


def _format_folder_report(report: dict[str, Any]) -> str:
    lines = [f"{'templates':<16}{'top-1':>8}{'top-5':>8}{'mean per-class recall':>23}"]
    for tset, r in report["results"].items():
        name = tset if len(tset) <= 15 else "..." + tset[-12:]  # a template file's path can be long
        top1, top5, recall = (100 * r[k] for k in ("top1", "top5", "mean_per_class_recall"))
        lines.append(f"{name:<16}{top1:>7.1f}%{top5:>7.1f}%{recall:>22.1f}%")
    sm = report["summary"]
    unreadable = f"; {sm['skipped']} unreadable, skipped" if sm["skipped"] else ""
    lines.append(f"{sm['images']} images of {sm['classes']} classes in {sm['folder']}{unreadable}")
    lines.append(
        f"weakest class ({sm['template_set']} templates): {sm['weakest_class']} "
        f"{100 * sm['weakest_class_top1']:.1f}%"
    )
    return "\n".join(lines)
