"""WebDataset tar shards, in the layout img2dataset writes, as an endless deterministic stream of pairs.

Layout: `00000.tar`, `00001.tar`, ... each holding samples `000000000.jpg` (or .jpeg/.png/.webp)
+ `000000000.txt` (+ `.json`, ignored): the files of one sample share a key and follow each other.

The stream of one rank is a function of (seed, epoch, rank, world_size) only:
- epoch e permutes the shard list with (seed, e), identically on every rank;
- with at least as many shards as ranks, rank r takes shards r, r + W, r + 2W, ... of that order;
  with fewer, every rank reads every shard and keeps sample n of the epoch when n % W == r. Either
  way the ranks are disjoint and together cover the epoch;
- within the rank, samples pass in tar order through webdataset's shuffle buffer seeded with
  (seed, e, rank); epochs follow each other forever. Position p counts the rank's samples from the
  start of epoch 0;
- DataLoader worker w of N yields the positions p with ((p - skip) // block_size) % N == w. Every
  worker scans the tar headers of its rank's shards (512-byte reads; the data is seeked over) and
  reads and decodes only its own samples;
- an unreadable sample at position p is replaced by the first readable one after it, as in the
  map-style sources, so positions (hence sharding and resume) do not depend on which files are bad.

Resume, `configure(rank, world_size, skip)`: the worker streams start at position `skip`. Whole
epochs are skipped by arithmetic on per-shard sample counts (from the headers); the rest of the
epoch by reading headers only: nothing is decoded. What is exact and what is not:
- exact: shard order, shuffle-buffer order and the sample at every position, given the same seed,
  world_size and shard files (changing any of these changes the stream the skip is counted in);
- exact batches: with option block_size equal to the DataLoader's batch size, batch k of the rank is
  positions [k*B, (k+1)*B) whatever num_workers is (the DataLoader takes batches from its workers
  in turn), so a resumed run reads exactly what the uninterrupted run would have;
- with block_size 1 (default) a round of num_workers batches holds the same samples as the positions
  it covers, in an order that depends on num_workers; resuming after a step count that is not a
  multiple of num_workers repeats up to (num_workers - 1) * batch_size samples and misses as many;
- `skipped` counts the unreadable samples passed over for one position, so a run of k bad samples
  in a row is counted k + (k - 1) + ... + 1 times over the positions that cross it.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
import tarfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info
from webdataset import filters as wds_filters
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from model.bundle.preprocess import PreprocessConfig, preprocess_bytes
from model.data.files import (
    ITEM_ERRORS,
    MAX_CONSECUTIVE_FAILURES,
    DataError,
    Pair,
    UnreadableItem,
    warn_unreadable,
)

__all__ = ["WebDatasetPairs", "expand_shards"]

log = logging.getLogger(__name__)

DEFAULT_IMAGE_KEYS = "jpg;jpeg;png;webp"
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: "__key__"-style files are not data
_MAX_EMPTY_EPOCHS = 8  # a rank whose shards are all empty this often in a row has no data at all


@dataclass(frozen=True)
class _Entry:
    """One sample, located but not read: (suffix, data offset, size) of each of its files."""

    shard: str
    key: str
    members: tuple[tuple[str, int, int], ...]


def expand_shards(spec: str) -> list[str]:
    """Shard paths from a brace pattern (`shards/{00000..00009}.tar`), a folder or a single tar."""
    if "://" in spec or spec.startswith("pipe:"):
        raise DataError(f"webdataset path {spec!r}: only local .tar files are supported")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        shards = sorted(str(p) for p in folder.glob("*.tar"))
        if not shards:
            raise DataError(f"webdataset folder {folder} holds no .tar shards")
        return shards
    shards = [os.path.expanduser(s) for s in expand_urls(spec)]
    compressed = [s for s in shards if s.endswith((".gz", ".tgz", ".bz2", ".xz", ".zst"))]
    if compressed:
        raise DataError(f"compressed shards are not supported (need random access): {compressed[0]}")
    present = [s for s in shards if os.path.isfile(s)]
    if not present:
        raise DataError(f"webdataset path {spec!r}: none of its {len(shards)} shard(s) exists")
    if len(present) < len(shards):
        missing = sorted(set(shards) - set(present))
        log.warning("%d of %d shards do not exist (e.g. %s); reading the other %d",
                    len(missing), len(shards), missing[0], len(present))  # fmt: skip
    return present


def _data_files(shard: str) -> Iterator[tuple[str, str, int, int]]:
    """(key, suffix, data offset, size) of each data file in a tar, from the headers alone; a damaged
    or truncated tar ends, with a warning, where the damage starts."""
    try:
        size = os.path.getsize(shard)
        tf = tarfile.open(shard, mode="r:")  # noqa: SIM115 (closed below; open errors are handled here)
    except (OSError, tarfile.TarError) as e:
        log.warning("skipping unreadable shard %s: %s", shard, e)
        return
    with tf:
        while True:
            try:
                info = tf.next()
            except (OSError, tarfile.TarError) as e:
                log.warning("shard %s is damaged after %d bytes: %s", shard, tf.offset, e)
                return
            if info is None:
                if tf.offset + tarfile.BLOCKSIZE > size:  # no end-of-archive block: cut short
                    log.warning("shard %s ends without an end-of-archive block (truncated?)", shard)
                return
            tf.members = []  # type: ignore[attr-defined]  # next() keeps every header; we need none
            if info.offset_data + info.size > size:
                log.warning("shard %s is truncated inside %s", shard, info.name)
                return
            base, suffix = base_plus_ext(info.name)
            if info.isreg() and base is not None and not _META.match(info.name):
                yield base, suffix.lower(), info.offset_data, info.size


def _scan_shard(shard: str) -> Iterator[_Entry]:
    """The samples of one tar: consecutive files sharing a key (webdataset's grouping rule).

    Counting (for resume) and streaming both use this, so they agree even on damaged shards."""
    key, members = "", list[tuple[str, int, int]]()
    for base, suffix, offset, size in _data_files(shard):
        if base != key or any(s == suffix for s, _, _ in members):
            if members:
                yield _Entry(shard, key, tuple(members))
            key, members = base, []
        members.append((suffix, offset, size))
    if members:
        yield _Entry(shard, key, tuple(members))


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise OSError(f"short read: {len(data)} of {size} bytes")
    return data


class _Lookahead:
    """An iterator that can peek ahead, to replace an unreadable sample with a later one."""

    def __init__(self, it: Iterator[_Entry]) -> None:
        self._it, self._ahead = it, deque[_Entry]()

    def __next__(self) -> _Entry:
        return self._ahead.popleft() if self._ahead else next(self._it)

    def peek(self, k: int) -> _Entry:
        while len(self._ahead) <= k:
            self._ahead.append(next(self._it))
        return self._ahead[k]


def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class WebDatasetPairs(IterableDataset[Pair]):
    """Endless (pixels, caption, skipped, None) items from tar shards; see the module docstring."""

    def __init__(
        self,
        shards: str,
        image_size: int,
        seed: int,
        *,
        shuffle_buffer: int = 1000,
        block_size: int = 1,
        image_key: str = DEFAULT_IMAGE_KEYS,
        caption_key: str = "txt",
    ) -> None:
        if seed < 0 or shuffle_buffer < 0 or block_size < 1:
            raise DataError(
                f"need seed >= 0, shuffle_buffer >= 0, block_size >= 1; got {seed}, {shuffle_buffer}, "
                f"{block_size}"
            )
        self.shards = expand_shards(shards)
        self.preprocess = PreprocessConfig(image_size=image_size)  # the server's: no train/serve skew
        self.seed, self.shuffle_buffer, self.block_size = seed, shuffle_buffer, block_size
        self.image_keys = tuple(k.strip().lower() for k in image_key.split(";") if k.strip())
        self.caption_key = caption_key.lower()
        self.skip = 0
        self._configured: tuple[int, int] | None = None
        self._counts: dict[str, int] = {}
        if not any(next(_scan_shard(s), None) for s in self.shards):
            raise DataError(f"webdataset {shards!r}: none of its {len(self.shards)} shard(s) holds a sample")

    def configure(self, rank: int, world_size: int, skip: int = 0) -> None:
        """Read as `rank` of `world_size`, starting after the `skip` samples this rank has consumed."""
        if world_size < 1 or not 0 <= rank < world_size or skip < 0:
            raise DataError(f"need 0 <= rank < world_size and skip >= 0, got {rank}, {world_size}, {skip}")
        self._configured, self.skip = (rank, world_size), skip

    def rank_world(self) -> tuple[int, int]:
        """configure()'s values, else torch.distributed's, else (0, 1)."""
        if self._configured is not None:
            return self._configured
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _epoch_shards(self, epoch: int) -> tuple[list[str], bool]:
        """This rank's shards in epoch order, and whether ranks split samples (fewer shards than ranks)."""
        rank, world = self.rank_world()
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        if len(self.shards) >= world:
            return [self.shards[k] for k in order[rank::world]], False
        return [self.shards[k] for k in order], True

    def _count(self, shard: str) -> int:
        if shard not in self._counts:
            self._counts[shard] = sum(1 for _ in _scan_shard(shard))
        return self._counts[shard]

    def epoch_size(self, epoch: int = 0) -> int:
        """How many samples this rank reads in `epoch` (they differ by epoch when shard sizes do)."""
        shards, split = self._epoch_shards(epoch)
        n = sum(self._count(s) for s in shards)
        if not split:
            return n
        rank, world = self.rank_world()
        return len(range(rank, n, world))

    def _epoch(self, epoch: int) -> Iterator[_Entry]:
        shards, split = self._epoch_shards(epoch)
        entries: Iterator[_Entry] = (e for s in shards for e in _scan_shard(s))
        rank, world = self.rank_world()
        if split:
            entries = itertools.islice(entries, rank, None, world)
        if self.shuffle_buffer > 1:
            rng = random.Random(_seed_int(self.seed, epoch, rank))
            # initial = bufsize: a full buffer before the first sample, so epoch starts shuffle too
            entries = wds_filters.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(entries)
        return entries

    def _locate(self, skip: int) -> tuple[int, int]:
        """(epoch, offset in it) of rank position `skip`, by arithmetic on the shard sample counts."""
        epoch, empty = 0, 0
        while skip > 0:
            n = self.epoch_size(epoch)
            if skip < n:
                break
            empty = empty + 1 if n == 0 else 0
            if empty >= _MAX_EMPTY_EPOCHS:
                raise DataError(f"rank {self.rank_world()[0]} gets no samples from {len(self.shards)} shards")
            skip, epoch = skip - n, epoch + 1
        return epoch, skip

    def _stream(self) -> Iterator[_Entry]:
        """This rank's samples from position `skip` on, epoch after epoch, forever."""
        epoch, offset = self._locate(self.skip)
        empty = 0
        while True:
            n = 0
            for entry in itertools.islice(self._epoch(epoch), offset, None):
                n += 1
                yield entry
            empty = empty + 1 if n == 0 else 0
            if empty >= _MAX_EMPTY_EPOCHS:
                raise DataError(f"rank {self.rank_world()[0]} gets no samples from {len(self.shards)} shards")
            epoch, offset = epoch + 1, 0

    def _decode(self, entry: _Entry) -> tuple[np.ndarray, str]:
        files = {suffix: (offset, size) for suffix, offset, size in entry.members}
        image_suffix = next((s for s in self.image_keys if s in files), None)
        if image_suffix is None:
            raise UnreadableItem(f"the sample has no image ({', '.join(self.image_keys)})")
        if self.caption_key not in files:
            raise UnreadableItem(f"the sample has no .{self.caption_key} caption")
        with open(entry.shard, "rb") as f:
            image = _read_at(f, *files[image_suffix])
            text = _read_at(f, *files[self.caption_key])
        try:
            caption = text.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise UnreadableItem("the caption is not UTF-8 text") from None
        if not caption:
            raise UnreadableItem("the caption is empty")
        if not image:
            raise UnreadableItem(f"the .{image_suffix} file is empty")
        return preprocess_bytes(image, self.preprocess), caption

    def _first_readable(self, entry: _Entry, ahead: _Lookahead) -> Pair:
        for k in range(MAX_CONSECUTIVE_FAILURES):
            candidate = entry if k == 0 else ahead.peek(k - 1)
            try:
                pixels, caption = self._decode(candidate)
            except ITEM_ERRORS as e:
                warn_unreadable(f"sample {candidate.key} in {candidate.shard}", e)
                continue
            return pixels, caption, k, None  # free-text captions: no class id
        raise DataError(
            f"{MAX_CONSECUTIVE_FAILURES} consecutive samples from {entry.key} in {entry.shard} are "
            "unreadable: are the shards intact?"
        )

    def __iter__(self) -> Iterator[Pair]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ahead = _Lookahead(self._stream())
        for p in itertools.count():  # p: position relative to `skip`
            entry = next(ahead)
            if (p // self.block_size) % workers == worker:
                yield self._first_readable(entry, ahead)
