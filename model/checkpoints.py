"""Training checkpoints: atomic writes, rotation (the last N and the best by eval), loading, fine-tuning.

A checkpoint holds the model config, the train config, model and optimizer state, the step and the
data position, so a run resumes where it stopped. `zeroshot import` writes the same format (model
config and weights, step 0), which is what fine-tuning starts from. `build_for_training` picks the
model a run trains: resumed, fine-tuned from a source (with the loss it was trained with), or fresh.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from model.bundle.atomic import atomic_write
from model.checkpoint_inputs import InputsError, ModelInputs, read_inputs
from model.clip import CLIP, CLIPConfig, build_model, get_preset, with_image_size
from model.objectives import PREDICTIVE, BowPredictive, CaptionLM, PredictiveConfig, build_predictive
from model.siglip import FAMILY, SigLIP, SiglipConfig

if TYPE_CHECKING:  # train_config imports TrainError from here
    from model.train_config import TrainConfig

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class TrainError(Exception):
    """A training run that cannot start or continue; the message says why."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-save never leaves a truncated file under the real name."""
    atomic_write(path, lambda f: torch.save(state, f))


def keep_step_copy(folder: Path, step: int, keep: int) -> Path:
    """Hard-link last.pt as step-NNNNNNN.pt (no extra space) and delete all but the `keep` newest."""
    dst = folder / f"step-{step:07d}.pt"
    dst.unlink(missing_ok=True)
    try:
        os.link(folder / LAST, dst)
    except OSError:  # a file system without hard links
        save_checkpoint(dst, torch.load(folder / LAST, map_location="cpu", weights_only=True))
    steps = sorted(int(m[1]) for f in folder.iterdir() if (m := _STEP_FILE.match(f.name)))
    for old in steps[: max(0, len(steps) - keep)]:
        (folder / f"step-{old:07d}.pt").unlink(missing_ok=True)
    return dst


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint; TrainError with the reason when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise TrainError(
            f"checkpoint {path} cannot be read ({type(e).__name__}): is it a zeroshot checkpoint?"
        ) from None
    if not isinstance(ckpt, dict) or not {"model_config", "model"} <= set(ckpt):
        raise TrainError(f"{path} is not a zeroshot checkpoint (no model_config/model entries)")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> Trainable:
    """The model a checkpoint holds: a SigLIP when its config says family "siglip", a predictive model
    (model/objectives.py) when it names a predictive objective, else a CLIP."""
    mcfg = ckpt["model_config"]
    model: Trainable
    if mcfg.get("family") == FAMILY:
        model = SigLIP(SiglipConfig.from_dict(mcfg))
    elif mcfg.get("objective") in PREDICTIVE:
        model = build_predictive(PredictiveConfig.from_dict(mcfg))
    else:
        model = CLIP(CLIPConfig.from_dict(mcfg))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise TrainError(f"checkpoint weights do not fit its config: {str(e).splitlines()[0]}") from None
    return model.eval()


def resolve_init(source: str | Path) -> Path:
    """The checkpoint to fine-tune from: a checkpoint file, a run folder, or a bundle (or a model folder
    with CURRENT) whose manifest names the checkpoint it was exported or imported from."""
    p = Path(source)
    if p.is_file():
        return p
    if (p / "checkpoints" / BEST).is_file():
        return p / "checkpoints" / BEST
    if (p / "checkpoints" / LAST).is_file():
        return p / "checkpoints" / LAST
    if (p / "CURRENT").is_file():
        p = p / (p / "CURRENT").read_text().strip()
    manifest = p / "manifest.json"
    if manifest.is_file():
        src = json.loads(manifest.read_text()).get("source", {}).get("checkpoint")
        if src and Path(src).is_file():
            return Path(src)
        raise TrainError(
            f"bundle {p} does not name an existing source checkpoint ({src!r}); pass the checkpoint "
            "that `zeroshot import` or `zeroshot train` wrote instead"
        )
    raise TrainError(f"{source} is neither a checkpoint, a run folder nor a model bundle")


def model_config(cfg: TrainConfig) -> CLIPConfig:
    """The preset, with a bias for the sigmoid loss and a bag-of-words text tower for bow-contrastive."""
    mcfg = replace(get_preset(cfg.preset), logit_bias=cfg.loss == "sigmoid")
    if cfg.objective == "bow-contrastive":
        mcfg = replace(mcfg, text=replace(mcfg.text, kind="bag"))
    return with_image_size(mcfg, cfg.image_size) if cfg.image_size else mcfg


# a SigLIP is fine-tuned (imported, with its own inputs), never built fresh; a predictive model is
# only ever built fresh (nothing published is one)
Trainable = CLIP | SigLIP | BowPredictive | CaptionLM


@dataclass(frozen=True)
class Start:
    """What a run starts from: the model, the resumed checkpoint (None: step 0) and the model's inputs."""

    model: Trainable
    resumed: dict[str, Any] | None
    inputs: ModelInputs
    inputs_entry: dict[str, Any] | None  # copied into every checkpoint the run writes (None: CLIP's own)


def inputs_of(ckpt: dict[str, Any], model: Trainable) -> ModelInputs:
    """The tokenizer and preprocessing a checkpoint's model reads (model/checkpoint_inputs.py)."""
    family = FAMILY if isinstance(model, SigLIP) else "clip"
    try:
        return read_inputs(
            ckpt.get("inputs"), family, model.config.vision.image_size, model.config.text.context_length
        )
    except InputsError as e:
        raise TrainError(str(e)) from None


def build_for_training(cfg: TrainConfig, resume: str | Path | None) -> Start:
    """The model to train: from the resumed checkpoint, the fine-tuning source, or a fresh preset."""
    if resume:
        ckpt = load_checkpoint(resume)
        model = model_from_checkpoint(ckpt)
        return Start(model, ckpt, inputs_of(ckpt, model), ckpt.get("inputs"))
    if cfg.objective in PREDICTIVE:  # from scratch (TrainConfig refuses init_from for them)
        from model.objective_eval import fresh_predictive

        model, inputs = fresh_predictive(cfg)
        return Start(model, None, inputs, None)
    if cfg.init_from:
        src = resolve_init(cfg.init_from)
        ckpt = load_checkpoint(src)
        model = model_from_checkpoint(ckpt)
        size = model.config.vision.image_size
        if cfg.image_size and cfg.image_size != size:
            raise TrainError(f"image_size {cfg.image_size} differs from {src}'s {size}; leave it unset")
        if isinstance(model, BowPredictive | CaptionLM):
            raise TrainError(f"{src} holds a {model.config.objective} model, which cannot be fine-tuned")
        bag = isinstance(model, CLIP) and model.config.text.kind == "bag"
        if bag != (cfg.objective == "bow-contrastive"):
            raise TrainError(
                f"objective {cfg.objective} cannot fine-tune {src}, a "
                f"{'bow-contrastive' if bag else 'contrastive'} model: set objective to match it"
            )
        sigmoid = isinstance(model, SigLIP) or model.config.logit_bias
        if sigmoid != (cfg.loss == "sigmoid"):
            raise TrainError(
                f"loss {cfg.loss} cannot fine-tune {src}, trained with the "
                f"{'sigmoid' if sigmoid else 'softmax'} loss: set loss to match it"
            )
        log.info("fine-tuning from %s (the preset %r is not used)", src, cfg.preset)
        return Start(model, None, inputs_of(ckpt, model), ckpt.get("inputs"))
    model = build_model(model_config(cfg))
    return Start(
        model, None, ModelInputs.clip(model.config.vision.image_size, model.config.text.context_length), None
    )
