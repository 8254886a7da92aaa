"""TrainConfig: the one config of a training run, passed everywhere (model/train.py).

Every value is checked where it enters (a config file, a flag, a checkpoint's saved config), against
the field's annotation and a range, so a wrong one is a one-line error naming the field before any
model is built or any file is written, instead of a TypeError deep in the loop or a run that
"trains" -5 steps. `check_fields` is shared with the retrain config (model/retrain.py).
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from model.checkpoints import TrainError

# A range: the test a value of the right type must pass, and how the error message says it.
Range = tuple[Callable[[Any], bool], str]


def _is_device(v: str) -> bool:
    import torch  # already loaded: model.checkpoints imports it

    try:
        torch.device(v)
    except RuntimeError:  # torch's message lists every device type; ours names the field
        return False
    return True


_NONEMPTY: Range = (lambda v: bool(v.strip()), "that is not empty")
_AT_LEAST_1: Range = (lambda v: v >= 1, ">= 1")
_AT_LEAST_0: Range = (lambda v: v >= 0, ">= 0")
_ABOVE_0: Range = (lambda v: v > 0, "> 0")

# Why each bound: steps, batch_size and accum_steps count things, and the loop divides by them;
# checkpoint_every and eval_every are taken modulo; seed must be >= 0 for the data sources' numpy
# generators; image_size >= 16 is what model/data/sources.py accepts; keep_checkpoints 0 and
# grad_clip 0 are meaningful in model/train.py (no step-N.pt copies, no clipping); betas and eps are
# AdamW's own bounds; min_lr_ratio is the floor of the cosine as a fraction of lr.
TRAIN_RANGES: dict[str, Range] = {
    "preset": _NONEMPTY,
    "data": _NONEMPTY,
    "out_dir": _NONEMPTY,
    "steps": _AT_LEAST_1,
    "batch_size": _AT_LEAST_1,
    "accum_steps": _AT_LEAST_1,
    "lr": _ABOVE_0,
    "warmup_steps": _AT_LEAST_0,
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "weight_decay": _AT_LEAST_0,
    "betas": (lambda v: all(0 <= b < 1 for b in v), "in [0, 1)"),
    "eps": _ABOVE_0,
    "seed": _AT_LEAST_0,
    "device": (lambda v: v == "auto" or _is_device(v), "naming a device (auto, cpu, cuda, cuda:1, ...)"),
    "image_size": (lambda v: v >= 16, ">= 16"),
    "num_workers": _AT_LEAST_0,
    "threads": _AT_LEAST_1,
    "grad_clip": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
    "checkpoint_every": _AT_LEAST_1,
    "keep_checkpoints": (lambda v: v >= 0, ">= 0 (0: no step-N.pt copies)"),
    "eval_every": _AT_LEAST_1,
    "eval_images": _AT_LEAST_1,
    "eval_templates": _NONEMPTY,
    "max_minutes": _ABOVE_0,
    "scene_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "varied_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}


def _is_number(v: Any) -> bool:
    # bool is an int to isinstance, and `true` where a count belongs is a mistake; NaN and inf
    # would pass no range honestly (NaN compares false, inf steps or lr mean nothing)
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _kind(tp: Any) -> tuple[Callable[[Any], bool], str]:
    """A test of a JSON value against one annotation, and the annotation in words."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return (lambda v: isinstance(v, bool)), "true or false"
    if tp is int:
        return (lambda v: _is_number(v) and isinstance(v, int)), "an integer"
    if tp is float:
        return _is_number, "a number"
    if tp is str:
        return (lambda v: isinstance(v, str)), "a string"
    if origin is Literal:
        return (lambda v: v in args), "one of " + ", ".join(repr(a) for a in args)
    if origin is dict:
        return (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)), "an object"
    if origin is tuple:
        each = [_kind(a)[0] for a in args]
        return (
            lambda v: (
                isinstance(v, list | tuple)
                and len(v) == len(each)
                and all(ok(x) for ok, x in zip(each, v, strict=True))
            )
        ), f"a list of {len(args)} numbers"
    raise TypeError(f"no check for the annotation {tp!r}")  # a new field needs one: fail in tests


def _field_check(tp: Any, rng: Range | None) -> tuple[Callable[[Any], bool], str]:
    """The whole test of one field (type, range, null where the annotation allows it) and its words."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    inner = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    of_type, words = _kind(inner)
    in_range, range_words = rng or ((lambda v: True), "")
    words = f"{words} {range_words}".rstrip() + (" or null" if optional else "")

    def ok(v: Any) -> bool:
        return (optional and v is None) or (of_type(v) and in_range(v))

    return ok, words


def read_json_file(path: str | Path, what: str, error: Callable[[str], Exception]) -> Any:
    """A config file's JSON, or `error` saying in one line that `what` is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except ValueError as e:
        raise error(f"{what} {path} is not valid JSON: {e}") from None


def check_fields(
    cls: type, values: Mapping[str, Any], ranges: Mapping[str, Range], where: str = ""
) -> str | None:
    """The first problem with the given fields of dataclass `cls` (known ones only), or None.

    `where` starts the message: the file and section the values came from, e.g. "config c.json: "."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints:
            ok, words = _field_check(hints[name], ranges.get(name))
            if not ok(value):
                return f"{where}{name} must be {words}, not {value!r}"
    return None


@dataclass
class TrainConfig:
    preset: str = "tiny"
    # data: synthetic | csv | folder | webdataset (model/data); data_path: the file, folder or shards;
    # data_options: per-source options (csv image_key/caption_key/separator, folder templates)
    data: str = "synthetic"
    data_path: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    # synthetic data only (model/data/synthetic.py): the look of the training images, the share of
    # them drawn varied (with "varied"; the rest classic), and the share that are two-object scenes
    # (seen pairs only); "classic" and scene_fraction 0.0 are the original images
    synthetic_style: Literal["classic", "varied"] = "classic"
    varied_fraction: float = 1.0
    scene_fraction: float = 0.0
    out_dir: str = "runs/default"
    # 450 x 256 images, about 4 minutes on 2 CPU cores. Measured against 900 x 128 (the same images):
    # held-out top-1 93-99% over three runs instead of 84-100%: larger batches, more negatives.
    steps: int = 450
    batch_size: int = 256  # the global batch: all ranks and accumulation steps together
    accum_steps: int = 1  # micro-batches per step; the loss still sees the whole batch as negatives
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.02
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)  # the paper's; 0.98 is steadier for large-batch contrastive
    eps: float = 1e-6
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "bf16"  # bf16 autocast, on CPU and CUDA alike
    # the paper's Figure 2 (model/objectives.py): contrastive (CLIP, the default), bow-contrastive (its
    # text tower a bag of words), bow-predictive and caption-lm (predict the caption's words; these
    # score zero-shot by likelihood and do not export to a bundle)
    objective: Literal["contrastive", "bow-contrastive", "bow-predictive", "caption-lm"] = "contrastive"
    # softmax: the paper's contrastive loss; sigmoid: SigLIP's pairwise loss (the model gets a bias)
    loss: Literal["softmax", "sigmoid"] = "softmax"
    # label-aware targets (UniCL, Yang et al., CVPR 2022), with either loss: every pair of the batch
    # whose captions come from one class is a positive, not a negative. None: on for folder data with
    # the softmax loss, whose captions are its class names in templates; off with the sigmoid loss
    # (bench/README.md "Objectives": it lost 1-11 points on digits there) and for synthetic data, so
    # the default model's objective does not change without a measurement. Only sources with class
    # labels (model/data/sources.py LABELLED_KINDS) can have it; the run records what it used.
    label_aware: bool | None = None
    device: str = "auto"  # auto: CUDA when there is one
    image_size: int | None = None  # None: the preset's
    num_workers: int = 1
    threads: int | None = None  # torch intra-op threads; None: all cores
    grad_clip: float | None = 1.0
    grad_checkpointing: bool = False  # recompute transformer blocks in backward: less memory, more time
    compile: bool = False  # torch.compile the model
    init_from: str | None = None  # fine-tune: a checkpoint, run folder or bundle (model/checkpoints.py)
    lock_image: bool = False  # LiT: freeze the image tower, train the text tower to match it
    checkpoint_every: int = 300
    keep_checkpoints: int = 3  # step-N.pt copies kept besides last.pt and best.pt
    eval_every: int = 50
    # images per split (synthetic: held-out and seen) or of eval_folder, evaluated as `zeroshot eval`
    # does (model/evaluate.py): the first ones of the same fixed images, so the figures compare
    eval_images: int = 360
    eval_folder: str | None = None  # an image folder of classes to evaluate on (non-synthetic data)
    eval_templates: str = "default"  # for eval_folder: a template set name or file
    max_minutes: float | None = None  # stop early (and checkpoint) when the time is up
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """TrainError naming the first field of the wrong type or out of its range."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if problem := check_fields(TrainConfig, values, TRAIN_RANGES):
            raise TrainError(problem)
        if self.data != "synthetic" and (self.synthetic_style != "classic" or self.scene_fraction):
            raise TrainError(
                f"synthetic_style and scene_fraction are options of synthetic data, not of {self.data!r}"
            )
        if self.synthetic_style == "classic" and self.varied_fraction != 1.0:
            raise TrainError("varied_fraction is for synthetic_style 'varied'")
        if self.objective in ("bow-predictive", "caption-lm"):
            if self.loss != "softmax" or self.label_aware:
                raise TrainError(
                    f"objective {self.objective} predicts the caption's words: loss and label_aware "
                    "belong to the contrastive objectives (contrastive, bow-contrastive)"
                )
            if self.init_from or self.lock_image:
                raise TrainError(
                    f"objective {self.objective} trains from scratch: no init_from, no lock_image"
                )
        if self.label_aware:
            from model.data.sources import LABELLED_KINDS

            if self.data not in LABELLED_KINDS:
                raise TrainError(
                    f"label_aware needs class labels, and {self.data} data has none (its captions are "
                    f"free text): label-aware targets are for {' or '.join(LABELLED_KINDS)} data"
                )
        # the loop splits each batch into accum_steps micro-batches (model/train_data.py check_batch
        # also divides by the world size, known only there)
        if self.batch_size % self.accum_steps:
            raise TrainError(
                f"batch_size {self.batch_size} must be a multiple of accum_steps {self.accum_steps}"
            )

    @property
    def uses_label_aware(self) -> bool:
        """label_aware with None (auto) decided: on for folder data under the softmax loss, else off."""
        if self.label_aware is None:
            return self.data == "folder" and self.loss == "softmax" and self.objective.endswith("contrastive")
        return self.label_aware

    def preflight(self) -> None:
        """The names only a lookup can check (preset, eval templates), before anything is built or
        written: a bad eval template set would otherwise end the run at its first eval."""
        from model.bundle.prompts import load_templates
        from model.clip import get_preset

        get_preset(self.preset)
        if self.eval_folder:
            load_templates(self.eval_templates)

    @classmethod
    def check(cls, d: Mapping[str, Any], where: str = "") -> None:
        """Check some fields (a config file's, a retrain config's `train`), each on its own: the
        other fields may still come from elsewhere (flags), so no rule across fields here."""
        if not isinstance(d, Mapping):
            raise TrainError(f"{where}the train config must be a JSON object, not {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise TrainError(f"{where}unknown train config keys: {', '.join(sorted(unknown))}")
        if problem := check_fields(cls, d, TRAIN_RANGES, where):
            raise TrainError(problem)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> TrainConfig:
        cls.check(d, where)
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        try:
            return cls(**d)  # __post_init__ validates the whole config, across fields too
        except TrainError as e:
            raise TrainError(f"{where}{e}") from None
