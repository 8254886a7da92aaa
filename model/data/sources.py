"""The one entry point the trainer uses: open_source(kind, path, ...) and collate_pairs(tokenizer)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch

from model.bundle.tokenizer import TextTokenizer
from model.data.files import DataError, Pair
from model.data.map_sources import CsvPairs, ImageFolderPairs, MapPairs, SyntheticPairs
from model.data.webdataset_pairs import DEFAULT_IMAGE_KEYS, WebDatasetPairs

__all__ = ["KINDS", "LABELLED_KINDS", "Batch", "PairSource", "collate_pairs", "open_source"]

# Map-style sources are Datasets (the trainer samples them); webdataset is an IterableDataset.
PairSource: TypeAlias = MapPairs | WebDatasetPairs

# kind -> {option: (type, default)}; anything else in `options` is refused by name.
_OPTIONS: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "synthetic": {},
    "csv": {"image_key": (str, "filepath"), "caption_key": (str, "caption"), "separator": (str, None)},
    "folder": {"templates": ((str, list, tuple), "default")},
    "webdataset": {
        "shuffle_buffer": (int, 1000),
        "block_size": (int, 1),
        "image_key": (str, DEFAULT_IMAGE_KEYS),
        "caption_key": (str, "txt"),
    },
}
KINDS: tuple[str, ...] = tuple(sorted(_OPTIONS))
# The sources whose captions are made from class labels, so their items carry class ids (what
# label-aware targets need); csv and webdataset captions are free text and carry none.
LABELLED_KINDS: tuple[str, ...] = ("folder", "synthetic")
_WHAT = {
    "csv": "CSV/TSV file of image paths and captions",
    "folder": "folder of class sub-folders of images",
    "webdataset": "tar shards: a brace pattern like shards/{00000..00009}.tar, a folder or one .tar",
}


def _options(kind: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The source's options with defaults filled in, after checking names and types."""
    spec, given = _OPTIONS[kind], dict(options or {})
    unknown = sorted(set(given) - set(spec))
    if unknown:
        allowed = ", ".join(sorted(spec)) or "none"
        raise DataError(f"unknown option(s) for {kind} data: {', '.join(unknown)}; allowed: {allowed}")
    out = {}
    for name, (types, default) in spec.items():
        value = given.get(name, default)
        # bool is an int to isinstance; a flag where a count belongs is a mistake
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise DataError(f"option {name} of {kind} data has the wrong type: {value!r}")
        if isinstance(value, str) and name != "separator" and not value.strip():
            raise DataError(f"option {name} of {kind} data is empty")
        out[name] = value
    return out


def open_source(
    kind: str,
    path: str | None,
    image_size: int,
    seed: int,
    options: Mapping[str, Any] | None = None,
) -> PairSource:
    """A training source of (pixels float32 [3, S, S], caption, skipped, class id or None) items.

    kind: synthetic (no path), csv (a .csv/.tsv file), folder (class sub-folders) or webdataset
    (a brace pattern, folder or single .tar). Raises DataError when it cannot be used."""
    if kind not in _OPTIONS:
        raise DataError(f"unknown data source {kind!r}; known sources: {', '.join(KINDS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise DataError(f"image_size must be an int >= 16, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be an int >= 0, got {seed!r}")
    opts = _options(kind, options)
    if kind == "synthetic":
        if path:
            raise DataError(f"synthetic data is generated and takes no path (got {path!r})")
        return SyntheticPairs(image_size, seed)
    if not path:
        raise DataError(f"{kind} data needs a path (data_path): the {_WHAT[kind]}")
    if kind == "csv":
        return CsvPairs(path, image_size, opts["image_key"], opts["caption_key"], opts["separator"])
    if kind == "folder":
        return ImageFolderPairs(path, image_size, seed, opts["templates"])
    return WebDatasetPairs(path, image_size, seed, **opts)


# (pixels [B, 3, S, S], input ids [B, L], unreadable items passed over, class ids [B] int64 or None)
Batch: TypeAlias = tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]


def _class_ids(batch: Sequence[Pair]) -> torch.Tensor | None:
    ids = [b[3] for b in batch]
    if all(i is None for i in ids):
        return None
    if any(i is None for i in ids):  # one source gives both kinds of item only by a bug
        raise DataError("a batch mixes items with and without class ids")
    return torch.tensor(ids, dtype=torch.int64)


class _Collate:
    """Stack pixels, tokenize captions, add up the unreadable items passed over, stack class ids."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: Sequence[Pair]) -> Batch:
        pixels = torch.from_numpy(np.stack([b[0] for b in batch]))  # [B, 3, S, S]
        ids = self.tokenizer.encode_batch([b[1] for b in batch])  # [B, L], padded to the longest caption
        # Round L up to a multiple of 8: a handful of shapes instead of one per length keeps oneDNN from
        # compiling new kernels for every batch; causal attention makes the padding inert.
        pad = (-ids.shape[1]) % 8
        if pad:
            ids = np.pad(ids, ((0, 0), (0, min(pad, self.tokenizer.context_length - ids.shape[1]))))
        return pixels, torch.from_numpy(ids), sum(int(b[2]) for b in batch), _class_ids(batch)


def collate_pairs(tokenizer: TextTokenizer) -> Callable[[Sequence[Pair]], Batch]:
    """The DataLoader collate_fn: (pixels [B, 3, S, S], ids [B, L] with L % 8 == 0 or 77, skipped,
    class ids [B] or None for a source without labels)."""
    return _Collate(tokenizer)
