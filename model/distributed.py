"""Data-parallel training helpers: the torchrun environment, the global-batch sampler, feature gathering.

The contrastive loss needs every image to see every text of the *global* batch as a negative, so each
rank gathers the features of all ranks. Gradients must reach only the rank that computed a feature,
scaled so that DistributedDataParallel's averaging gives exactly the single-process gradient; see
`replace_local`. Single-process runs take the same code path with world size 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device) -> Dist:
    """Join the process group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK; a plain run is rank 0 of 1.

    NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    log.info("rank %d of %d (local rank %d, backend %s)", rank, world, local, dist.get_backend())
    return Dist(rank=rank, world_size=world, local_rank=local)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_detached(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """[n, E] on each rank -> [world * n, E] on every rank, rank-major, without gradient."""
    x = x.detach().contiguous()
    if not d.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(d.world_size)]
    dist.all_gather(parts, x)
    return torch.cat(parts)


def global_positives(class_ids: torch.Tensor, d: Dist) -> torch.Tensor:
    """[n] class ids of this rank's rows -> [world * n, world * n] bool: which pairs of the global
    batch share a class (UniCL's positives). Gathered rank-major like the features, so a caption of the
    same class on another rank is a positive too, as it is in one process."""
    from model.loss import same_class

    return same_class(all_gather_detached(class_ids, d))


def replace_local(
    global_feats: torch.Tensor, local: torch.Tensor, offset: int, world_size: int
) -> torch.Tensor:
    """The gathered (gradient-free) features with rows [offset, offset + n) replaced by `local`.

    Every rank computes the same full loss L over the global batch, but gradient flows only into the
    rows this rank computed. DDP then averages over ranks, which would divide each row's true
    gradient dL/df by the world size, so the local rows carry their gradient multiplied by it:
    ``world * x - (world - 1) * x.detach()`` has the value x and the gradient world * dL/dx. The
    temperature is shared, its gradient complete on every rank, and so is not scaled.
    """
    if world_size > 1:
        local = world_size * local - (world_size - 1) * local.detach()
    n = local.shape[0]
    return torch.cat([global_feats[:offset], local, global_feats[offset + n :]])


class GlobalBatchSampler(Sampler[int]):
    """The indices one rank reads, micro-batch after micro-batch, from step `start` to step `steps`.

    Global sample position p = step * global_batch + rank * per_rank + j: each rank owns a contiguous
    slice of every global batch. p maps to (epoch p // n, position p % n) of a permutation of the
    dataset drawn from (seed, epoch), so the stream depends only on the seed: a resumed run reads
    exactly what the uninterrupted run would have, and the global batch is the same for any world size.
    ``shuffle=False`` reads in index order (for sources that are random already, like synthetic data).
    """

    def __init__(
        self,
        length: int,
        global_batch: int,
        d: Dist,
        seed: int,
        start: int,
        steps: int,
        shuffle: bool = True,
    ) -> None:
        if global_batch % d.world_size:
            raise ValueError(f"batch size {global_batch} is not a multiple of the world size {d.world_size}")
        self.length, self.global_batch, self.dist = length, global_batch, d
        self.seed, self.start, self.steps, self.shuffle = seed, start, steps, shuffle
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.global_batch // self.dist.world_size

    def _index(self, p: int) -> int:
        epoch, pos = divmod(p, self.length)
        if not self.shuffle:
            return pos
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(self.length))
        return int(self._perm[1][pos])

    def __iter__(self) -> Iterator[int]:
        per_rank = self.global_batch // self.dist.world_size
        for step in range(self.start, self.steps):
            base = step * self.global_batch + self.dist.rank * per_rank
            for j in range(per_rank):
                yield self._index(base + j)
