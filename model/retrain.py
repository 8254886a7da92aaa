"""`zeroshot retrain CONFIG`: train (or fine-tune) -> export -> eval -> compare -> publish, or refuse.

The new bundle is written beside the served one without becoming CURRENT. Both are evaluated on the
same data with the same templates, through ONNX on the server's own path; the new one becomes CURRENT
only if its figure is not worse than the served one's by more than `margin` (or with --force).
Running servers pick the new CURRENT up through their hot reload (ZEROSHOT_RELOAD_INTERVAL_S).

The config is a JSON file:

    {
      "model_dir": "models/shapes",               # where versions and CURRENT live
      "train": {"init_from": "models/shapes", "data": "folder", "data_path": "data/train",
                "out_dir": "runs/shapes", ...},           # this run trains in runs/shapes/<version>
      "eval": {"folder": "data/val", "templates": "default", "limit": null},   # or {"synthetic": true}
      "metric": "top1",                            # a key of the eval summary (synthetic: heldout_top1)
      "margin": 0.01,                              # allowed drop, as a fraction (0.01 = 1 point)
      "int8": false,                               # also write image_encoder.int8.onnx
      "int8_calibration": "data/train",           # images to calibrate a ResNet's int8 ranges
      "fp16": false                                # also write the gated fp16 encoders (for a GPU)
    }
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from model.bundle.format import Bundle, BundleError, current_bundle, new_version, set_current
from model.bundle.prompts import load_templates
from model.checkpoints import BEST, LAST, TrainError
from model.train_config import Range, TrainConfig, check_fields, read_json_file

log = logging.getLogger(__name__)

PUBLISHED, REFUSED = 0, 2  # exit codes of `zeroshot retrain`


class RetrainError(ValueError):
    """A retrain config that cannot run; the message says what is wrong."""


@dataclass
class _EvalSection:
    """The `eval` object's keys, as evaluate() below reads them; only their annotations are used."""

    folder: str | None = None
    synthetic: bool = False
    templates: str = "default"
    limit: int | None = None  # folder: at most this many images
    heldout_images: int = 600  # synthetic
    seen_images: int = 600


_EVAL_RANGES: dict[str, Range] = {
    "folder": (lambda v: bool(v.strip()), "that is not empty"),
    "templates": (lambda v: bool(v.strip()), "that is not empty"),
    "limit": (lambda v: v >= 1, ">= 1"),
    "heldout_images": (lambda v: v >= 1, ">= 1"),
    "seen_images": (lambda v: v >= 1, ">= 1"),
}
# margin is a fraction of top-1 that may be lost, so at least 1 would publish anything; tolerance is
# export's max abs difference ONNX vs torch, and 0 or less would refuse every export
_RANGES: dict[str, Range] = {
    "model_dir": (lambda v: bool(v.strip()), "that is not empty"),
    "metric": (lambda v: bool(v.strip()), "that is not empty"),
    "margin": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "tolerance": (lambda v: v > 0, "> 0"),
}


def _check_eval(ev: dict[str, Any], where: str) -> None:
    if unknown := set(ev) - {f.name for f in fields(_EvalSection)}:
        raise RetrainError(f"{where}unknown keys: {', '.join(sorted(unknown))}")
    if problem := check_fields(_EvalSection, ev, _EVAL_RANGES, where):
        raise RetrainError(problem)
    if not (ev.get("folder") or ev.get("synthetic")):
        raise RetrainError('`eval` needs "folder": PATH or "synthetic": true')
    if ev.get("folder"):  # checked now: found missing only after training and export otherwise
        if not Path(ev["folder"]).is_dir():
            raise RetrainError(f"{where}folder {ev['folder']} is not a folder")
        load_templates(str(ev.get("templates", "default")))


@dataclass
class RetrainConfig:
    model_dir: str
    train: dict[str, Any]
    eval: dict[str, Any] = field(default_factory=lambda: {"synthetic": True})
    metric: str | None = None  # None: top1 for a folder, heldout_top1 for synthetic data
    margin: float = 0.0
    int8: bool = False
    int8_calibration: str | None = None  # a folder of images like those served (export --int8-calibration)
    fp16: bool = False  # also write the gated fp16 encoders (export --fp16)
    tolerance: float = 1e-4

    @classmethod
    def load(cls, path: str | Path) -> RetrainConfig:
        raw = read_json_file(path, "retrain config", RetrainError)
        if not isinstance(raw, dict):
            raise RetrainError(f"retrain config {path} must be a JSON object")
        known = {f.name for f in fields(cls)}
        if unknown := set(raw) - known:
            raise RetrainError(f"unknown retrain config keys: {', '.join(sorted(unknown))}")
        if missing := {"model_dir", "train"} - set(raw):
            raise RetrainError(f"retrain config {path} lacks {', '.join(sorted(missing))}")
        where = f"retrain config {path}: "
        if problem := check_fields(cls, raw, _RANGES, where):
            raise RetrainError(problem)
        cfg = cls(**raw)
        if cfg.int8_calibration is not None and not cfg.int8:
            raise RetrainError('"int8_calibration" is set but "int8" is not: set "int8": true')
        _check_eval(cfg.eval, where + "eval: ")
        # the whole train section now, not after the served model was read: a bad value, preset or
        # template set is reported before anything is trained or written
        TrainConfig.from_dict(cfg.train, where + "train: ").preflight()
        return cfg

    @property
    def metric_key(self) -> str:
        return self.metric or ("top1" if self.eval.get("folder") else "heldout_top1")


def evaluate(bundle: Bundle, cfg: RetrainConfig, write: bool) -> float:
    """The config's metric for one bundle, on the config's eval data, through ONNX."""
    from model.evaluate import evaluate_folder, evaluate_synthetic

    ev = cfg.eval
    if ev.get("folder"):
        templates = [str(ev.get("templates", "default"))]
        report = evaluate_folder(bundle, ev["folder"], templates, limit=ev.get("limit"), write=write)
    else:
        report = evaluate_synthetic(
            bundle, int(ev.get("heldout_images", 600)), int(ev.get("seen_images", 600)), write=write
        )
    summary = report["summary"]
    if cfg.metric_key not in summary:
        raise RetrainError(f"metric {cfg.metric_key!r} is not in the eval summary: {sorted(summary)}")
    return float(summary[cfg.metric_key])


def _served(model_dir: Path) -> Bundle | None:
    if not (model_dir / "CURRENT").is_file():
        return None
    try:
        return current_bundle(model_dir)
    except BundleError as e:  # a broken CURRENT is replaced by any bundle that passes its own checks
        log.warning("the served bundle cannot be loaded (%s): it is not compared", e)
        return None


def retrain(cfg: RetrainConfig, force: bool = False, say: Any = print) -> int:
    """Run the loop; returns PUBLISHED or REFUSED. `say` reports each stage (stdout by default)."""
    from model.export import describe_parity, export_checkpoint
    from model.train import train

    model_dir = Path(cfg.model_dir)
    version = new_version()
    # each run trains into its own folder, so the checkpoint a published bundle names is never
    # overwritten by the next retrain (fine-tuning from that bundle later finds its weights)
    tcfg = TrainConfig.from_dict(
        cfg.train | {"out_dir": str(Path(cfg.train.get("out_dir", "runs/retrain")) / version)}
    )
    served = _served(model_dir)  # read before training: a bad CURRENT is reported early
    say(
        f"1/4 train: {tcfg.steps} steps on {tcfg.data} data"
        + (f" from {tcfg.init_from}" if tcfg.init_from else "")
    )
    last = train(tcfg)
    ckpt = last.parent / BEST if (last.parent / BEST).is_file() else last.parent / LAST
    say(f"    checkpoint: {ckpt}")
    say(f"2/4 export to {model_dir} (not published yet)")
    new = export_checkpoint(
        ckpt,
        model_dir,
        version=version,
        tolerance=cfg.tolerance,
        publish=False,
        int8=cfg.int8,
        calibration_folder=cfg.int8_calibration,
        fp16=cfg.fp16,
    )
    say(f"    bundle {new.version}: {describe_parity(new.manifest['parity'])}")
    key = cfg.metric_key
    say(f"3/4 eval {key} on {cfg.eval.get('folder') or 'synthetic held-out classes'}")
    new_score = evaluate(new, cfg, write=True)
    old_score = evaluate(served, cfg, write=False) if served else None
    say(f"    new {new.version}: {100 * new_score:.2f}%")
    if served is not None and old_score is not None:
        say(f"    served {served.version}: {100 * old_score:.2f}%")
    return _gate(cfg, model_dir, new, new_score, old_score, force, say)


def _gate(
    cfg: RetrainConfig,
    model_dir: Path,
    new: Bundle,
    new_score: float,
    old_score: float | None,
    force: bool,
    say: Any,
) -> int:
    """Publish the new bundle unless it is worse than the served one by more than the margin."""
    floor = None if old_score is None else old_score - cfg.margin
    if floor is None or new_score >= floor or force:
        set_current(model_dir, new.version)
        if floor is None:
            why = "nothing was served before"
        elif new_score < floor:
            why = "forced, although it is worse"
        else:
            why = f"not worse than the served model by more than {100 * cfg.margin:.2f} points"
        say(
            f"4/4 published {new.version} as CURRENT ({why}); running servers pick it up on their next reload"
        )
        return PUBLISHED
    say(
        f"4/4 NOT published: {100 * new_score:.2f}% is below the served {100 * (old_score or 0):.2f}% "
        f"minus the margin {100 * cfg.margin:.2f} points. {new.path} stays on disk, not CURRENT; "
        "--force publishes it"
    )
    return REFUSED


__all__ = ["PUBLISHED", "REFUSED", "RetrainConfig", "RetrainError", "TrainError", "retrain"]
