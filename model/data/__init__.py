"""Data sources for training and evaluation: synthetic shapes, csv, image folders, webdataset.

    from model.data import DataError, collate_pairs, open_source
    source = open_source("csv", "data/train.csv", image_size=224, seed=0)
    loader = DataLoader(source, sampler=..., collate_fn=collate_pairs(tokenizer))

Importing this package does not import torch: `zeroshot eval` and the server's torch-free modules
use model.data.files and model.data.synthetic. The torch-based names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from model.data.files import DataError, Pair

if TYPE_CHECKING:
    from model.data.map_sources import CsvPairs, ImageFolderPairs, MapPairs, SyntheticPairs
    from model.data.sources import KINDS, LABELLED_KINDS, Batch, PairSource, collate_pairs, open_source
    from model.data.webdataset_pairs import WebDatasetPairs

__all__ = [
    "KINDS",
    "LABELLED_KINDS",
    "Batch",
    "CsvPairs",
    "DataError",
    "ImageFolderPairs",
    "MapPairs",
    "Pair",
    "PairSource",
    "SyntheticPairs",
    "WebDatasetPairs",
    "collate_pairs",
    "open_source",
]

_LAZY = {
    "KINDS": "model.data.sources",
    "LABELLED_KINDS": "model.data.sources",
    "Batch": "model.data.sources",
    "PairSource": "model.data.sources",
    "collate_pairs": "model.data.sources",
    "open_source": "model.data.sources",
    "CsvPairs": "model.data.map_sources",
    "ImageFolderPairs": "model.data.map_sources",
    "MapPairs": "model.data.map_sources",
    "SyntheticPairs": "model.data.map_sources",
    "WebDatasetPairs": "model.data.webdataset_pairs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
