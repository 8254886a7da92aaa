"""`zeroshot`: the management command (train, export, import, eval, calibrate, retrain, serve).

Heavy imports (torch) happen inside the subcommands, so `zeroshot --help` is instant and a bad
argument is reported before anything loads. Every expected failure is one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.calibrate import add_parser as calibrate_parser
from model.cli_common import DEFAULT_MODELS, CliError
from model.cli_eval import add_parser as eval_parser
from model.cli_types import non_negative_int, port, positive_float, positive_int

log = logging.getLogger("zeroshot")


_TRAIN_FLAGS = (
    "preset",
    "data",
    "data_path",
    "steps",
    "batch_size",
    "accum_steps",
    "lr",
    "seed",
    "precision",
    "objective",
    "loss",
    "label_aware",
    "device",
    "max_minutes",
    "num_workers",
    "init_from",
    "lock_image",
    "grad_checkpointing",
    "compile",
    "eval_folder",
    "eval_templates",
    "keep_checkpoints",
)


def cmd_train(args: argparse.Namespace) -> None:
    from model.train import TrainConfig, load_checkpoint, train

    overrides: dict[str, Any] = {}
    if args.resume:  # continue with the run's own settings; flags below still override them
        overrides = dict(load_checkpoint(args.resume).get("train_config") or {})
        if overrides:  # a run from before label-aware targets trained without them, and resumes so
            overrides.setdefault("label_aware", False)
    if args.config:
        overrides.update(_train_config_file(args.config))
    for key in _TRAIN_FLAGS:  # each already range-checked by its argparse type
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.out is not None or "out_dir" not in overrides:
        overrides["out_dir"] = args.out or "runs/default"
    cfg = TrainConfig.from_dict(overrides)  # the whole config, across fields and sources
    cfg.preflight()  # fail fast on an unknown preset or eval template set, before anything is written
    last = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for the run
        print(f"checkpoint: {last}\ncurves: {Path(cfg.out_dir) / 'curves.png'}")


def _train_config_file(path: str) -> dict[str, Any]:
    """A `--config` file's fields, each checked on its own so that an error names the file."""
    from model.train_config import TrainConfig, read_json_file

    raw = read_json_file(path, "config file", CliError)
    TrainConfig.check(raw, where=f"config {path}: ")
    return dict(raw)


def cmd_export(args: argparse.Namespace) -> None:
    from model.export import describe_parity, export_checkpoint

    if args.int8_calibration and not args.int8:
        raise CliError("--int8-calibration calibrates the int8 encoder: add --int8")

    bundle = export_checkpoint(
        args.checkpoint,
        args.out,
        version=args.version,
        tolerance=args.tolerance,
        publish=not args.no_publish,
        int8=args.int8,
        calibration_folder=args.int8_calibration,
        fp16=args.fp16,
    )
    print(
        f"bundle: {bundle.path}  ({describe_parity(bundle.manifest['parity'])})"
        + ("" if args.no_publish else f"\npublished as {Path(args.out) / 'CURRENT'} -> {bundle.version}")
    )


def cmd_import(args: argparse.Namespace) -> None:
    from model.bundle.preprocess import PreprocessConfig
    from model.bundle.tokenizer import ClipTokenizer
    from model.checkpoint_inputs import ModelInputs
    from model.export import Tokenizer, describe_parity, export_bundle, sample_inputs
    from model.importer import load_published, save_imported_checkpoint
    from model.siglip import SigLIP
    from model.siglip_import import siglip_inputs

    out = Path(args.out)
    ckpt_path = Path(args.checkpoint_out or Path("runs") / f"import-{out.name}" / "imported.pt")
    imported = load_published(args.kind, args.path, args.activation)
    print(f"{args.kind} weights from {args.path}: {imported.summary()}", flush=True)
    cfg = imported.model.config
    pre = PreprocessConfig(image_size=cfg.vision.image_size)  # CLIP's recipe at the model's own size
    tokenizer: Tokenizer = ClipTokenizer.clip_bpe(context_length=cfg.text.context_length)
    if isinstance(imported.model, SigLIP):  # the checkpoint's own processor and tokenizer
        pre, tokenizer = siglip_inputs(imported.folder, imported.model.config)
    images, texts = sample_inputs(cfg.vision.image_size, pre=pre)
    if isinstance(imported.model, SigLIP):  # every prompt costs the full 64 tokens: check a third of them
        texts = texts[::3]
    source = {"kind": args.kind, "path": str(args.path), "checkpoint": str(ckpt_path)}
    bundle = export_bundle(
        imported.model,
        tokenizer,
        out,
        images,
        texts,
        version=args.version,
        preprocess=pre,
        tolerance=args.tolerance,
        publish=not args.no_publish,
        extra_manifest={"source": source},
        fp16=args.fp16,
    )
    # a SigLIP's checkpoint carries its tokenizer and preprocessing: re-export and fine-tuning need them
    inputs = ModelInputs(tokenizer, pre).entry() if isinstance(imported.model, SigLIP) else None
    save_imported_checkpoint(imported.model, ckpt_path, source, inputs)
    print(
        f"bundle: {bundle.path}  ({describe_parity(bundle.manifest['parity'])})\n"
        f"checkpoint (to fine-tune or re-export): {ckpt_path}"
        + ("" if args.no_publish else f"\npublished as {out / 'CURRENT'} -> {bundle.version}")
    )


def cmd_retrain(args: argparse.Namespace) -> int:
    from model.retrain import RetrainConfig, retrain

    return retrain(RetrainConfig.load(args.config), force=args.force)


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from app.serve import serve
        from app.settings import Settings
    except ImportError as e:
        raise CliError(f"{e.name} is not installed: pip install -e '.[server]'") from None
    from pydantic import ValidationError

    from model.bundle.format import current_bundle

    given = {"models_dir": args.models, "models": args.model}
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})  # flags over ZEROSHOT_*
    except ValidationError as e:  # one line naming each bad setting, not pydantic's report
        bad = [
            f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        ]
        raise CliError("invalid settings: " + "; ".join(bad)) from None
    # a missing model is a one-line error here, not a server that answers 503
    for name in settings.served_models:
        current_bundle(settings.models_dir / name, verify_hashes=False)
    serve(settings, args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zeroshot", description="Train, export and evaluate zero-shot CLIP models."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    _train_parser(sub)
    _export_parser(sub)
    _import_parser(sub)
    eval_parser(sub)
    calibrate_parser(sub)
    _retrain_parser(sub)
    _serve_parser(sub)
    return p


Subparsers = Any  # argparse's _SubParsersAction, which it does not export


def _train_parser(sub: Subparsers) -> None:
    t = sub.add_parser("train", help="train CLIP with the contrastive objective (or another: --objective)")
    t.add_argument(
        "--preset", help="architecture: tiny, tiny-vit, ViT-B-32, ViT-B-16, ViT-L-14, RN50 (default tiny)"
    )
    t.add_argument("--data", help="data source: synthetic, csv, folder, webdataset (default synthetic)")
    t.add_argument("--data-path", help="CSV/TSV file, image folder, or tar shards (brace pattern or folder)")
    t.add_argument("--out", help="run folder: checkpoints, metrics, curves (default runs/default)")
    t.add_argument("--config", help="JSON file of TrainConfig fields; flags override it")
    t.add_argument("--steps", type=positive_int)
    t.add_argument(
        "--batch-size", type=positive_int, help="global batch: all ranks and accumulation steps together"
    )
    t.add_argument("--accum-steps", type=positive_int, help="micro-batches per step (same negatives)")
    t.add_argument("--lr", type=positive_float)
    t.add_argument("--seed", type=non_negative_int)
    t.add_argument("--precision", choices=["fp32", "bf16"])
    t.add_argument(
        "--objective",
        choices=["contrastive", "bow-contrastive", "bow-predictive", "caption-lm"],
        help="contrastive: CLIP's (default); bow-contrastive: with a bag-of-words text tower; "
        "bow-predictive, caption-lm: predict the caption's words (the paper's Figure 2; evaluated with "
        "`zeroshot eval --checkpoint`, not exported)",
    )
    t.add_argument(
        "--loss",
        choices=["softmax", "sigmoid"],
        help="softmax: CLIP's (default); sigmoid: SigLIP's pairwise loss",
    )
    t.add_argument(
        "--label-aware",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="UniCL's label-aware targets, with either loss: captions of one class are positives of "
        "each other's images (default: on for folder data with the softmax loss, off for sigmoid and "
        "synthetic data; needs class labels)",
    )
    t.add_argument(
        "--max-minutes", type=positive_float, help="stop (and checkpoint) after this much training time"
    )
    t.add_argument("--num-workers", type=non_negative_int, help="data-loading worker processes (default 1)")
    t.add_argument("--device", help="auto (CUDA when there is one), cpu or cuda")
    t.add_argument("--init-from", help="fine-tune from a checkpoint, run folder or imported bundle")
    t.add_argument(
        "--lock-image", action="store_true", default=None, help="LiT: freeze the image tower, tune the text"
    )
    t.add_argument("--grad-checkpointing", action="store_true", default=None, help="save memory")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    t.add_argument("--eval-folder", help="image folder of classes to evaluate on during training")
    t.add_argument("--eval-templates", help="template set for --eval-folder (default: default)")
    t.add_argument(
        "--keep-checkpoints", type=non_negative_int, help="step-N.pt copies to keep (default 3; 0: none)"
    )
    t.add_argument("--resume", help="continue from this checkpoint")
    t.set_defaults(func=cmd_train)


FP16_HELP = (
    "also write image_encoder.fp16.onnx and text_encoder.fp16.onnx (for a GPU: ZEROSHOT_PRECISION=fp16); "
    "refused unless both agree with torch fp32 (cosine >= 0.999, top-1 agreement >= 99.5%%)"
)


def _export_parser(sub: Subparsers) -> None:
    e = sub.add_parser("export", help="export a checkpoint to an ONNX model bundle")
    e.add_argument("--checkpoint", required=True, help="checkpoint written by `zeroshot train`")
    e.add_argument(
        "--out", default=str(DEFAULT_MODELS / "default"), help="model folder (default models/default)"
    )
    e.add_argument("--version", help="bundle version (default: UTC timestamp)")
    e.add_argument(
        "--tolerance", type=positive_float, default=1e-4, help="max abs diff ONNX vs torch (default 1e-4)"
    )
    e.add_argument("--no-publish", action="store_true", help="write the bundle but do not make it CURRENT")
    e.add_argument(
        "--int8",
        action="store_true",
        help="also write image_encoder.int8.onnx (served with ZEROSHOT_IMAGE_PRECISION=int8)",
    )
    e.add_argument(
        "--int8-calibration",
        metavar="FOLDER",
        help="with --int8: images like those you serve (up to 256 are used) to calibrate a ResNet's "
        "int8 ranges (default: the rendered sample images, right only for the synthetic default model)",
    )
    e.add_argument("--fp16", action="store_true", help=FP16_HELP)
    e.set_defaults(func=cmd_export)


def _import_parser(sub: Subparsers) -> None:
    im = sub.add_parser(
        "import", help="import published CLIP weights (OpenAI, open_clip, Hugging Face) as a model bundle"
    )
    im.add_argument("kind", choices=["openai", "open_clip", "hf"], help="whose checkpoint format")
    im.add_argument(
        "path", help="openai: the release .pt file; open_clip: a state_dict or checkpoint; hf: a folder"
    )
    im.add_argument("--out", required=True, help="model folder, e.g. models/vit-b-32")
    im.add_argument("--version", help="bundle version (default: UTC timestamp)")
    im.add_argument(
        "--activation",
        choices=["quick_gelu", "gelu"],
        help="open_clip only (default gelu; quick_gelu for its -quickgelu models); openai is quick_gelu",
    )
    im.add_argument(
        "--tolerance", type=positive_float, default=1e-4, help="max abs diff ONNX vs torch (default 1e-4)"
    )
    im.add_argument("--no-publish", action="store_true", help="write the bundle but do not make it CURRENT")
    im.add_argument(
        "--checkpoint-out", help="zeroshot checkpoint of the weights (default runs/import-NAME/imported.pt)"
    )
    im.add_argument("--fp16", action="store_true", help=FP16_HELP)
    im.set_defaults(func=cmd_import)


def _retrain_parser(sub: Subparsers) -> None:
    r = sub.add_parser(
        "retrain",
        help="train -> export -> eval -> publish if not worse than the served model (exit 2 if refused)",
    )
    r.add_argument("config", help="JSON file: model_dir, train, eval, metric, margin (model/retrain.py)")
    r.add_argument("--force", action="store_true", help="publish even if the new model is worse")
    r.set_defaults(func=cmd_retrain)


def _serve_parser(sub: Subparsers) -> None:
    s = sub.add_parser("serve", help="serve the CURRENT bundle over HTTP (settings: ZEROSHOT_* variables)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=port, default=8000)
    s.add_argument("--models", help="models folder (default: $ZEROSHOT_MODELS_DIR or models)")
    s.add_argument(
        "--model",
        help="model folder(s) to serve, comma list, the first the default "
        "(default: $ZEROSHOT_MODELS, else $ZEROSHOT_MODEL_NAME, else default)",
    )
    s.set_defaults(func=cmd_serve)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from model.bundle.format import BundleError
    from model.bundle.prompts import TemplateError

    expected: tuple[type[BaseException], ...] = (CliError, BundleError, TemplateError, ValueError, OSError)
    try:
        from model.export import ExportError
        from model.train import TrainError
        from model.weights import WeightsError

        expected += (ExportError, TrainError, WeightsError)
    except ImportError as e:  # the `train` extra is not installed; say so in one line
        if args.command in ("train", "export", "import", "retrain"):
            print(f"zeroshot: error: {e.name} is not installed: pip install -e '.[train]'", file=sys.stderr)
            return 1
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("zeroshot: interrupted", file=sys.stderr)
        return 130
    except expected as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"zeroshot: error: {msg}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
