"""The trainer's data loader: the source a TrainConfig names, read with the model's own inputs (its
tokenizer and preprocessing), in global batches that every rank and a resumed run agree on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, IterableDataset

from model import distributed as dd
from model.checkpoint_inputs import ModelInputs
from model.checkpoints import TrainError
from model.train_config import TrainConfig

if TYPE_CHECKING:
    from model.data.sources import PairSource


def training_source(cfg: TrainConfig, inputs: ModelInputs, micro: int = 1) -> PairSource:
    """The source a TrainConfig names, read with the model's own preprocessing."""
    from model.data import open_source

    options = dict(cfg.data_options)
    if cfg.data == "webdataset":  # blocks of one micro-batch: a resume reads exactly the same batches
        options.setdefault("block_size", micro)
    image_size = inputs.preprocess.image_size
    src = open_source(cfg.data, cfg.data_path, image_size, cfg.seed, options)
    if cfg.data == "synthetic":  # the generator's options are TrainConfig fields, not data_options
        from model.data import SyntheticPairs

        src = SyntheticPairs(
            image_size,
            cfg.seed,
            style=cfg.synthetic_style,
            scene_fraction=cfg.scene_fraction,
            varied_fraction=cfg.varied_fraction,
        )
    # the model's own preprocessing (a SigLIP's square squash and 0.5 mean/std), as it is served
    src.preprocess = inputs.preprocess
    return src


def make_loader(cfg: TrainConfig, d: dd.Dist, inputs: ModelInputs, start: int) -> DataLoader[Any]:
    """Batches of (pixels, token ids, skipped, class ids) from `start` steps in."""
    from model.data import collate_pairs

    per_rank = cfg.batch_size // d.world_size
    micro = per_rank // cfg.accum_steps
    src = training_source(cfg, inputs, micro)
    common: dict[str, Any] = {
        "batch_size": micro,
        "collate_fn": collate_pairs(inputs.tokenizer),
        "num_workers": cfg.num_workers,
        "prefetch_factor": 4 if cfg.num_workers else None,
    }
    if isinstance(src, IterableDataset):
        src.configure(d.rank, d.world_size, skip=start * per_rank)
        return DataLoader(src, **common)
    sampler = dd.GlobalBatchSampler(
        len(src),
        cfg.batch_size,
        d,
        cfg.seed,
        start,
        cfg.steps,
        shuffle=cfg.data != "synthetic",  # synthetic item i is already a random draw from (seed, i)
    )
    return DataLoader(src, sampler=sampler, drop_last=True, **common)


def check_batch(cfg: TrainConfig, d: dd.Dist) -> None:
    if cfg.batch_size % (d.world_size * cfg.accum_steps):
        raise TrainError(
            f"batch_size {cfg.batch_size} must be a multiple of world size x accum_steps "
            f"({d.world_size} x {cfg.accum_steps})"
        )
