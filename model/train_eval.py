"""The zero-shot evaluation a training run logs (and picks best.pt by): `zeroshot eval`'s own
(model/evaluate.py) on the model in torch, on the first `eval_images` of the same fixed images, so
a run's curve and its exported bundle's eval.json are the same measurement."""

from __future__ import annotations

import logging

from model.checkpoint_inputs import ModelInputs
from model.checkpoints import Trainable
from model.data.files import DataError
from model.evaluate import folder_report, synthetic_report
from model.objective_eval import scorer_for
from model.train_config import TrainConfig

log = logging.getLogger(__name__)


def run_eval(model: Trainable, inputs: ModelInputs, cfg: TrainConfig) -> dict[str, float]:
    """Synthetic held-out/seen top-1 (the `synthetic` templates), or the eval folder's top-1."""
    was_training = model.training
    model.eval()
    try:
        encoders = scorer_for(model, inputs)  # any objective: cosines, or caption likelihoods
        if cfg.eval_folder:
            try:
                report = folder_report(encoders, cfg.eval_folder, (cfg.eval_templates,), cfg.eval_images)
            except DataError as e:  # e.g. no image could be read: a bad eval must not end a long run
                log.warning("eval skipped: %s", e)
                return {}
            return {"eval_top1": report["summary"]["top1"]}
        if cfg.data == "synthetic":
            summary = synthetic_report(encoders, cfg.eval_images, cfg.eval_images, ("synthetic",))["summary"]
            return {"heldout_top1": summary["heldout_top1"], "seen_top1": summary["seen_top1"]}
        return {}
    finally:
        model.train(was_training)
        if cfg.lock_image:
            model.visual.eval()


def best_key(cfg: TrainConfig) -> str | None:
    """The figure best.pt is chosen by, if the run has one."""
    if cfg.eval_folder:
        return "eval_top1"
    return "heldout_top1" if cfg.data == "synthetic" else None
