"""Torch-free file helpers shared by the training sources and `zeroshot eval --folder`.

Indexing an image folder (one sub-folder per class), reading a CSV/TSV of (image path, caption)
rows, and reading one image file through the server's own preprocessing. Everything that can go
wrong with a whole dataset raises DataError; everything that can go wrong with one item raises
one of ITEM_ERRORS, which the sources catch, log and skip.
"""

from __future__ import annotations

import csv
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.bundle.preprocess import ImageError, PreprocessConfig, preprocess_bytes

__all__ = [
    "IMAGE_EXTENSIONS",
    "ITEM_ERRORS",
    "MAX_CONSECUTIVE_FAILURES",
    "DataError",
    "FolderIndex",
    "Pair",
    "UnreadableItem",
    "class_display_name",
    "item_error_reason",
    "load_image_file",
    "read_csv_pairs",
    "sample_image_files",
    "scan_image_folder",
    "warn_unreadable",
]

log = logging.getLogger(__name__)

# (pixels float32 [3, S, S], caption, items passed over to produce this one, class id): the class id
# is the index of the class the caption was made from (folder, synthetic), None where captions are
# free text (csv, webdataset); the trainer's label-aware targets (UniCL) are built from it
Pair = tuple[np.ndarray, str, int, int | None]

# A run of this many unreadable items in a row means a broken dataset, not a few bad files.
MAX_CONSECUTIVE_FAILURES = 64
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
_MAX_WARNINGS = 10_000  # per process; beyond it a broken dataset would flood the log


class DataError(ValueError):
    """A data source that cannot be used: unknown kind, missing path, bad options, empty dataset."""


class UnreadableItem(Exception):
    """One item (not the dataset) is unusable: no caption, no image in a sample, bad text."""


# What reading one item may raise: a missing/unreadable file, an undecodable image, a bad sample.
ITEM_ERRORS: tuple[type[Exception], ...] = (OSError, ImageError, UnreadableItem)

_warned: set[str] = set()


def item_error_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def warn_unreadable(what: str, exc: BaseException) -> None:
    """Log once per item and process: a DataLoader revisits a bad file every epoch."""
    if what in _warned:
        log.debug("skipping unreadable %s: %s", what, item_error_reason(exc))
        return
    if len(_warned) < _MAX_WARNINGS:
        _warned.add(what)
    log.warning("skipping unreadable %s: %s", what, item_error_reason(exc))


def load_image_file(path: str | Path, cfg: PreprocessConfig) -> np.ndarray:
    """An image file -> float32 [3, S, S] exactly as the server preprocesses an upload.

    Raises OSError (missing, unreadable), UnreadableItem (empty) or ImageError (corrupt, not an image)."""
    data = Path(path).read_bytes()
    if not data:
        raise UnreadableItem("the file is empty")
    return preprocess_bytes(data, cfg)


def class_display_name(folder_name: str) -> str:
    """The class name a folder stands for: "red_circle" -> "red circle"."""
    return " ".join(folder_name.replace("_", " ").split())


@dataclass(frozen=True)
class FolderIndex:
    root: Path
    classes: tuple[str, ...]  # display names, in sorted folder order
    samples: tuple[tuple[Path, int], ...]  # (image path, class index), sorted

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def scan_image_folder(root: str | Path) -> FolderIndex:
    """Index `root/<class>/**/<image>`: sorted class folders, sorted image files (deterministic).

    Images are chosen by extension only; a file that turns out unreadable is skipped when read."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} has no class sub-folders: expected {root}/<class name>/<image files>")
    classes = tuple(class_display_name(d.name) for d in class_dirs)
    if len(set(classes)) != len(classes) or "" in classes:
        dupes = sorted({c for c in classes if classes.count(c) > 1 or not c})
        raise DataError(f"{root}: class folders give empty or duplicate class names: {dupes}")
    samples: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        files = sorted(p for p in d.rglob("*") if _is_image(p) and p.is_file())
        if not files:
            log.warning("class folder %s holds no images (%s)", d, ", ".join(sorted(IMAGE_EXTENSIONS)))
        samples.extend((p, label) for p in files)
    if not samples:
        raise DataError(
            f"{root} has {len(class_dirs)} class folders but no images "
            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return FolderIndex(root, classes, tuple(samples))


def read_csv_pairs(
    path: str | Path,
    image_key: str = "filepath",
    caption_key: str = "caption",
    separator: str | None = None,
) -> list[tuple[str, str]]:
    """(image path, caption) rows of a CSV/TSV with a header row.

    The separator is `separator`, else a tab for .tsv files and a comma otherwise. Relative image
    paths are relative to the CSV file's folder, so a dataset folder can be moved as a whole."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    sep = separator if separator is not None else ("\t" if path.suffix.lower() == ".tsv" else ",")
    if len(sep) != 1:
        raise DataError(f"separator must be one character, got {sep!r}")
    base = path.parent
    try:
        # utf-8-sig: spreadsheets write a byte-order mark that would otherwise stick to the first name.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=sep)
            columns = reader.fieldnames
            if not columns:
                raise DataError(f"{path} is empty: no header row")
            missing = [k for k in (image_key, caption_key) if k not in columns]
            if missing:
                raise DataError(
                    f"{path} has no column {', '.join(map(repr, missing))}; its columns are "
                    f"{', '.join(map(repr, columns))} (set the image_key / caption_key options)"
                )
            rows = [
                (
                    str(base / image) if (image := (row[image_key] or "").strip()) else "",
                    row[caption_key] or "",
                )
                for row in reader
            ]
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path} cannot be parsed as {'TSV' if sep == chr(9) else 'CSV'}: {e}") from None
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return rows


def sample_image_files(
    root: str | Path, cfg: PreprocessConfig, limit: int = 256, seed: int = 0
) -> np.ndarray:
    """Up to `limit` images from anywhere under `root` (a seeded random choice, so the same folder
    gives the same images), preprocessed as the server does: float32 [N, 3, S, S]. Unreadable files
    are skipped with a warning; a folder with no readable image raises DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if _is_image(p) and p.is_file())
    random.Random(seed).shuffle(files)
    out: list[np.ndarray] = []
    for path in files:
        if len(out) == limit:
            break
        try:
            out.append(load_image_file(path, cfg))
        except ITEM_ERRORS as e:
            warn_unreadable(str(path), e)
    if not out:
        raise DataError(f"{root} holds no readable image (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return np.stack(out)
