"""`zeroshot calibrate LABEL_SET FOLDER`: fit a label set's calibration from an image folder.

FOLDER holds one sub-folder per label of the set (named as the label, "_" for spaces: red_circle is
"red circle") and, optionally, one of images that are none of them (`--unknown`, default "unknown").
The fit is computed as the server's admin route computes it (model/bundle/calibration_fit.py) and is
written beside the set, `<label_sets_dir>/<name>.calibration.json`; a server serving that folder
picks it up on the next request naming the set. Torch-free.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.bundle.calibration_fit import Target
from model.cli_common import bundle_path

if (
    TYPE_CHECKING
):  # the command's heavy imports (onnxruntime, tokenizers) wait until it runs: --help is instant
    from model.bundle.calibration_store import Fit
    from model.bundle.encoders import OnnxEncoders
    from model.bundle.label_sets import LabelSet
    from model.data.files import FolderIndex

log = logging.getLogger(__name__)


def _truth(index: FolderIndex, ls: LabelSet, unknown: str) -> list[int]:
    """Per class folder, its label's index in the set (-1: the unknown folder); DataError naming the
    folders that match no label."""
    from model.data.files import DataError

    position = {lb: i for i, lb in enumerate(ls.labels)}
    folders = sorted({p.relative_to(index.root).parts[0] for p, _ in index.samples})
    by_class: dict[int, int] = {}
    strangers = []
    for folder in folders:
        c = next(y for p, y in index.samples if p.relative_to(index.root).parts[0] == folder)
        if folder == unknown:
            by_class[c] = -1
        elif folder in position or index.classes[c] in position:
            by_class[c] = position.get(folder, position.get(index.classes[c], -1))
        else:
            strangers.append(folder)
    if strangers:
        raise DataError(
            f"{len(strangers)} folder(s) of {index.root} name no label of set {ls.name!r}: "
            + ", ".join(strangers[:5])
            + f" (labels are e.g. {', '.join(repr(x) for x in ls.labels[:3])}; images of none: --unknown)"
        )
    return [by_class[y] for _, y in index.samples]


def _features(encoders: OnnxEncoders, paths: list[Path], batch: int = 64) -> np.ndarray:
    from tqdm import tqdm

    from model.data.files import ITEM_ERRORS, DataError, item_error_reason, load_image_file

    feats = []
    for start in tqdm(range(0, len(paths), batch), desc="calibration images", unit="batch", leave=False):
        pixels = []
        for p in paths[start : start + batch]:
            try:
                pixels.append(load_image_file(p, encoders.preprocess))
            except ITEM_ERRORS as e:
                raise DataError(f"cannot read {p}: {item_error_reason(e)}") from None
        feats.append(encoders.encode_images(np.stack(pixels)))
    return np.concatenate(feats)


def calibrate_folder(
    label_sets_dir: Path, name: str, folder: Path, bundle_path: Path, unknown: str, target: Target
) -> Fit:
    from model.bundle.calibration_fit import fit_set
    from model.bundle.calibration_store import path_for, write_fit
    from model.bundle.encoders import OnnxEncoders
    from model.bundle.format import load_bundle
    from model.bundle.label_sets import read_label_set
    from model.bundle.openset import LEXICON_TEMPLATE, lexicon, select_negatives
    from model.bundle.zeroshot import label_matrix
    from model.data.files import DataError, scan_image_folder

    try:
        ls = read_label_set(label_sets_dir, name)
    except FileNotFoundError:
        raise DataError(f"no label set named {name!r} in {label_sets_dir} (register it first: PUT)") from None
    index = scan_image_folder(folder)
    truth = np.array(_truth(index, ls, unknown))
    bundle = load_bundle(bundle_path)
    encoders = OnnxEncoders(bundle, device="auto")
    log.info("calibrating %s: %d images, %d labels x %d templates", name, len(truth), len(ls.labels),
             len(ls.templates))  # fmt: skip
    feats = _features(encoders, [p for p, _ in index.samples])
    matrix = label_matrix(encoders, ls.labels, ls.templates)
    lex = label_matrix(encoders, lexicon(encoders.tokenizer), (LEXICON_TEMPLATE,))
    neg = select_negatives(lex, matrix)
    ref = {"name": bundle.name, "version": bundle.version}
    fit = fit_set(
        feats, truth, ls.labels, matrix, bundle.logit_scale, lex, neg, target, bundle.sha, ref, ls.digest,
        bundle.logit_bias,
    )  # fmt: skip
    write_fit(path_for(label_sets_dir, name), fit)
    return fit


def format_fit(fit: Fit) -> str:
    f = fit.figures
    lines = [
        f"calibrated for {fit.model['name']} {fit.model['version']}: {f['images']} images "
        f"({f['unknown_images']} of none of the labels), top-1 {f['top1']:.1%}",
        f"temperature {fit.temperature:.3f}: expected calibration error "
        f"{f['ece_before']:.3f} -> {f['ece_after']:.3f}",
    ]
    if "multi_bce_before" in f:
        lines.append(
            f"multi: per-label sigmoid of {f['multi_on']}: binary cross-entropy "
            f"{f['multi_bce_before']:.3f} -> {f['multi_bce_after']:.3f}"
        )
    rule: Any = f.get("abstain")
    if rule:
        got = rule["achieved"]
        fpr = "" if got["fpr"] is None else f", false positives {got['fpr']:.1%}"
        prec = "n/a" if got["precision"] is None else f"{got['precision']:.1%}"
        lines.append(
            f"abstain when {rule['score']} < {rule['threshold']:.4g} (target {rule['target']}): "
            f"precision {prec}, coverage {got['coverage']:.1%}{fpr}"
        )
    else:
        lines.append(str(f.get("abstain_note", "no abstain rule")))
    if f.get("labels_without_images"):
        lines.append(f"labels without images (multi keeps its default): {len(f['labels_without_images'])}")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    c = sub.add_parser(
        "calibrate",
        help="fit a label set's temperature, multi-label sigmoids and abstain threshold from an image folder",
    )
    c.add_argument("label_set", help="the name of a registered label set")
    c.add_argument("folder", help="one sub-folder per label (red_circle = 'red circle'), plus --unknown")
    c.add_argument(
        "--unknown", default="unknown", help="the sub-folder of images that are none of the labels"
    )
    c.add_argument(
        "--label-sets-dir", default="label-sets", help="as ZEROSHOT_LABEL_SETS_DIR (default label-sets)"
    )
    c.add_argument("--model", default="models/default", help="bundle, or model folder with CURRENT")
    aim = c.add_mutually_exclusive_group()
    aim.add_argument("--target-precision", type=float, help="of the answers kept (default 0.95)")
    aim.add_argument("--target-fpr", type=float, help="share of the unknown images accepted")
    c.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> None:
    fit = calibrate_folder(
        Path(args.label_sets_dir), args.label_set, Path(args.folder), bundle_path(args.model), args.unknown,
        Target(args.target_precision, args.target_fpr),
    )  # fmt: skip
    print(format_fit(fit))
