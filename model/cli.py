"""`zeroshot`: the management command (train, export, eval, serve).

Heavy imports (torch) happen inside the subcommands, so `zeroshot --help` is instant and a bad
argument is reported before anything loads. Every expected failure is one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("zeroshot")

DEFAULT_MODELS = Path("models")


class CliError(Exception):
    pass


def _bundle_path(arg: str) -> Path:
    """A bundle folder, or a model folder with CURRENT (then the current version)."""
    from model.bundle import CURRENT, read_current

    p = Path(arg)
    if (p / CURRENT).is_file():
        return p / read_current(p)
    if not p.exists():
        raise CliError(f"{p} does not exist")
    return p


def cmd_train(args: argparse.Namespace) -> None:
    from model.clip import get_preset
    from model.train import TrainConfig, load_checkpoint, train

    overrides: dict[str, Any] = {}
    if args.resume:  # continue with the run's own settings; flags below still override them
        overrides = dict(load_checkpoint(args.resume).get("train_config") or {})
    if args.config:
        try:
            overrides.update(json.loads(Path(args.config).read_text()))
        except FileNotFoundError:
            raise CliError(f"config file {args.config} does not exist") from None
        except ValueError as e:
            raise CliError(f"config file {args.config} is not valid JSON: {e}") from None
    for key in (
        "preset",
        "data",
        "steps",
        "batch_size",
        "lr",
        "seed",
        "precision",
        "max_minutes",
        "num_workers",
    ):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.out is not None or "out_dir" not in overrides:
        overrides["out_dir"] = args.out or "runs/default"
    cfg = TrainConfig.from_dict(overrides)
    get_preset(cfg.preset)  # fail fast on an unknown preset
    if cfg.data != "synthetic":
        raise CliError(f"unknown data source {cfg.data!r}; available: synthetic")
    last = train(cfg, resume=args.resume)
    print(f"checkpoint: {last}\ncurves: {Path(cfg.out_dir) / 'curves.png'}")


def cmd_export(args: argparse.Namespace) -> None:
    import numpy as np

    from model.data.synthetic import SyntheticShapes, all_classes, class_name
    from model.export import export_bundle
    from model.preprocess import PreprocessConfig, preprocess_image
    from model.prompts import fill, get_templates
    from model.tokenizer import ClipTokenizer
    from model.train import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(args.checkpoint))
    size = model.config.vision.image_size
    pre = PreprocessConfig(image_size=size)
    # Real inputs for the parity check: rendered images of every class and varied prompts.
    shapes = SyntheticShapes(image_size=size, seed=7, split="all", length=64)
    images = np.stack([preprocess_image(shapes[i].image, pre) for i in range(len(shapes))])
    texts = [p for c in all_classes() for p in fill(get_templates("imagenet7"), class_name(*c))]
    texts += [shapes[i].caption for i in range(len(shapes))]
    bundle = export_bundle(
        model,
        ClipTokenizer.clip_bpe(),
        args.out,
        images,
        texts,
        version=args.version,
        preprocess=pre,
        tolerance=args.tolerance,
        publish=not args.no_publish,
        extra_manifest={"source": {"checkpoint": str(args.checkpoint)}},
        int8=args.int8,
    )
    p = bundle.manifest["parity"]
    print(
        f"bundle: {bundle.path}  (image diff {p['image_max_abs_diff']:.1e}, text diff "
        f"{p['text_max_abs_diff']:.1e}, tolerance {p['tolerance']:.0e})"
        + ("" if args.no_publish else f"\npublished as {Path(args.out) / 'CURRENT'} -> {bundle.version}")
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from model.evaluate import evaluate_synthetic, format_report

    templates = [t.strip() for t in args.templates.split(",") if t.strip()]
    from model.prompts import get_templates

    for t in templates:
        get_templates(t)
    report = evaluate_synthetic(_bundle_path(args.bundle), args.heldout_images, args.seen_images, templates)
    print(format_report(report))


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from app.serve import serve
        from app.settings import Settings
    except ImportError as e:
        raise CliError(f"{e.name} is not installed: pip install -e '.[server]'") from None
    from model.bundle import current_bundle

    given = {"models_dir": args.models, "model_name": args.model}
    settings = Settings(**{k: v for k, v in given.items() if v is not None})  # flags over ZEROSHOT_*
    # a missing model is a one-line error here, not a server that answers 503
    current_bundle(settings.models_dir / settings.model_name, verify_hashes=False)
    serve(settings, args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zeroshot", description="Train, export and evaluate zero-shot CLIP models."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train CLIP with the contrastive objective")
    t.add_argument(
        "--preset", help="model architecture: tiny, ViT-B-32, ViT-B-16, ViT-L-14, RN50 (default tiny)"
    )
    t.add_argument("--data", help="data source (default synthetic)")
    t.add_argument("--out", help="run folder: checkpoints, metrics, curves (default runs/default)")
    t.add_argument("--config", help="JSON file of TrainConfig fields; flags override it")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--precision", choices=["fp32", "bf16"])
    t.add_argument("--max-minutes", type=float, help="stop (and checkpoint) after this much training time")
    t.add_argument("--num-workers", type=int, help="data-loading worker processes (default 1)")
    t.add_argument("--resume", help="continue from this checkpoint")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="export a checkpoint to an ONNX model bundle")
    e.add_argument("--checkpoint", required=True, help="checkpoint written by `zeroshot train`")
    e.add_argument(
        "--out", default=str(DEFAULT_MODELS / "default"), help="model folder (default models/default)"
    )
    e.add_argument("--version", help="bundle version (default: UTC timestamp)")
    e.add_argument("--tolerance", type=float, default=1e-4, help="max abs diff ONNX vs torch (default 1e-4)")
    e.add_argument("--no-publish", action="store_true", help="write the bundle but do not make it CURRENT")
    e.add_argument(
        "--int8",
        action="store_true",
        help="also write image_encoder.int8.onnx (served with ZEROSHOT_IMAGE_PRECISION=int8)",
    )
    e.set_defaults(func=cmd_export)

    v = sub.add_parser(
        "eval", help="zero-shot accuracy of a bundle on the synthetic held-out and seen classes"
    )
    v.add_argument(
        "bundle",
        nargs="?",
        default=str(DEFAULT_MODELS / "default"),
        help="bundle folder, or model folder with CURRENT (default models/default)",
    )
    v.add_argument("--templates", default="none,default,synthetic", help="comma-separated template sets")
    v.add_argument("--heldout-images", type=int, default=600)
    v.add_argument("--seen-images", type=int, default=1500)
    v.set_defaults(func=cmd_eval)

    s = sub.add_parser("serve", help="serve the CURRENT bundle over HTTP (settings: ZEROSHOT_* variables)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--models", help="models folder (default: $ZEROSHOT_MODELS_DIR or models)")
    s.add_argument("--model", help="model name (default: $ZEROSHOT_MODEL_NAME or default)")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from model.bundle import BundleError
    from model.prompts import TemplateError

    expected: tuple[type[BaseException], ...] = (CliError, BundleError, TemplateError, ValueError, OSError)
    try:
        from model.export import ExportError
        from model.train import TrainError

        expected += (ExportError, TrainError)
    except ImportError as e:  # the `train` extra is not installed; say so in one line
        if args.command in ("train", "export"):
            print(f"zeroshot: error: {e.name} is not installed: pip install -e '.[train]'", file=sys.stderr)
            return 1
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("zeroshot: interrupted", file=sys.stderr)
        return 130
    except expected as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"zeroshot: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
