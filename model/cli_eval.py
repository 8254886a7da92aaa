"""`zeroshot eval`: zero-shot accuracy on the synthetic world or an image folder, or (`--open-set`)
whether answers can say "none of these" (model/evaluate.py, model/openset_eval.py). Heavy imports wait
until the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from model.cli_common import DEFAULT_MODELS, CliError, bundle_path
from model.cli_types import positive_int


def cmd_eval(args: argparse.Namespace) -> None:
    if args.checkpoint:
        return _eval_checkpoint(args)
    if args.open_set:
        return _eval_open_set(args)
    if args.robustness:
        from model.robustness import evaluate_robustness, format_robustness

        return print(format_robustness(evaluate_robustness(bundle_path(args.bundle), args.per_class)))
    from model.evaluate import format_report

    templates = _template_sets(args)
    if args.folder:
        from model.evaluate import evaluate_folder

        report = evaluate_folder(
            bundle_path(args.bundle),
            args.folder,
            templates,
            limit=args.limit,
            image_precision=args.image_precision,
            backend=args.backend,
            precision=args.precision,
        )
    else:
        from model.evaluate import evaluate_synthetic

        bundle = bundle_path(args.bundle)
        report = evaluate_synthetic(
            bundle,
            args.heldout_images,
            args.seen_images,
            templates,
            image_precision=args.image_precision,
            backend=args.backend,
            precision=args.precision,
        )
    print(format_report(report))


def _template_sets(args: argparse.Namespace) -> list[str]:
    """The template sets asked for (or the defaults), each checked, and --limit's use checked: a bad
    one fails before any model loads."""
    from model.bundle.prompts import load_templates
    from model.evaluate import DEFAULT_TEMPLATE_SETS, FOLDER_TEMPLATE_SETS

    default = FOLDER_TEMPLATE_SETS if args.folder else DEFAULT_TEMPLATE_SETS
    templates = [t.strip() for t in (args.templates or ",".join(default)).split(",") if t.strip()]
    for t in templates:  # a set name or a template file
        load_templates(t)
    if args.limit is not None and not args.folder:
        raise CliError("--limit applies to --folder evaluation only")
    return templates


def _eval_checkpoint(args: argparse.Namespace) -> None:
    """A training checkpoint of any objective, in torch on the CPU, through the same images, prompts
    and metrics as a bundle's eval; nothing is written."""
    from model.evaluate import folder_report, format_report, synthetic_report

    given = [
        flag
        for flag, on in (
            ("--open-set", args.open_set),
            ("--robustness", args.robustness),
            ("--backend", args.backend != "onnxruntime"),
            ("--precision", args.precision != "fp32"),
            ("--image-precision", args.image_precision != "fp32"),
        )
        if on
    ]
    if given:
        raise CliError(f"--checkpoint evaluates a model in torch; {', '.join(given)} apply to bundles")
    templates = _template_sets(args)
    from model.objective_eval import checkpoint_scorer

    scorer = checkpoint_scorer(args.checkpoint)
    if args.folder:
        report = folder_report(scorer, args.folder, templates, args.limit)
    else:
        report = synthetic_report(scorer, args.heldout_images, args.seen_images, templates)
    print(format_report(report))


def _eval_open_set(args: argparse.Namespace) -> None:
    import json

    from model.openset_eval import evaluate_openset, format_openset

    if args.folder:
        raise CliError("--open-set runs on the synthetic world; --folder evaluation is separate")
    out = Path(args.out)
    report = evaluate_openset(
        bundle_path(args.bundle), args.per_class, args.out_of_set_images, out / "coverage.png"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "openset.json").write_text(json.dumps(report, indent=1))
    print(format_openset(report))
    print(f"report: {out / 'openset.json'}")


def add_parser(sub: Any) -> None:
    v = sub.add_parser(
        "eval",
        help="zero-shot accuracy of a bundle on the synthetic held-out and seen classes, or an image folder",
    )
    v.add_argument(
        "bundle",
        nargs="?",
        default=str(DEFAULT_MODELS / "default"),
        help="bundle folder, or model folder with CURRENT (default models/default)",
    )
    v.add_argument(
        "--checkpoint",
        help="evaluate this training checkpoint (file or run folder) in torch instead of a bundle: any "
        "objective, caption-lm and bow-predictive included (scored by caption likelihood)",
    )
    v.add_argument(
        "--templates",
        help="comma-separated template sets or template files (default none,default,synthetic; "
        "with --folder default,imagenet7,imagenet80)",
    )
    v.add_argument("--heldout-images", type=positive_int, default=600)
    v.add_argument("--seen-images", type=positive_int, default=1500)
    v.add_argument("--folder", help="evaluate this image folder (one sub-folder per class) instead")
    v.add_argument(
        "--limit", type=positive_int, help="with --folder: at most N images, round-robin over classes"
    )
    v.add_argument(
        "--image-precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="int8: evaluate the bundle's image_encoder.int8.onnx (export --int8), as "
        "ZEROSHOT_IMAGE_PRECISION=int8 serves it; its figures are kept beside the fp32 ones in eval.json",
    )
    v.add_argument(
        "--backend",
        choices=["onnxruntime", "openvino"],
        default="onnxruntime",
        help="openvino: the bundle's ONNX files through OpenVINO's CPU runtime, as ZEROSHOT_BACKEND "
        "serves them (pip install '.[openvino]'); its figures are kept beside onnxruntime's in eval.json",
    )
    v.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="fp16: the bundle's fp16 files (export --fp16); bf16: with --backend openvino (native bf16)",
    )
    _open_set_arguments(v)
    v.set_defaults(func=cmd_eval)


def _open_set_arguments(v: Any) -> None:
    v.add_argument(
        "--open-set",
        action="store_true",
        help="can answers say 'none of these': AUROC and FPR@95%%TPR of each score on far and near "
        "out-of-set images, calibration error before and after temperature scaling, accuracy vs coverage",
    )
    v.add_argument(
        "--robustness",
        action="store_true",
        help="top-1 among the 36 labels on the training generator's images and on an independent "
        "renderer's (model/data/probe_shapes.py), seen and held-out pairs apart",
    )
    v.add_argument(
        "--per-class", type=positive_int, default=10, help="with --open-set or --robustness: images per class"
    )
    v.add_argument("--out-of-set-images", type=positive_int, default=360, help="with --open-set: far images")
    v.add_argument("--out", default="runs/eval-openset", help="with --open-set: where the JSON and PNG go")
