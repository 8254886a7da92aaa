"""Map-style sources: synthetic shapes, CSV/TSV of (image, caption), and image folders of classes.

Item i is a pure function of (seed, i): no call-order state, so DataLoader workers and resumed runs
see the same items. The trainer shuffles and shards with its own seeded sampler; these never shuffle.
An unreadable item i is replaced by the first readable one after it (i+1, i+2, ... wrapping), and
the item says how many were passed over. Items are (pixels, caption, skipped, class id): the class id
is that of the item actually returned, None for CSV rows (free-text captions).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from model.bundle.preprocess import PreprocessConfig, preprocess_image
from model.bundle.prompts import DEFAULT_SET, TemplateError, fill, load_templates
from model.data.files import (
    ITEM_ERRORS,
    MAX_CONSECUTIVE_FAILURES,
    DataError,
    Pair,
    UnreadableItem,
    load_image_file,
    read_csv_pairs,
    scan_image_folder,
    warn_unreadable,
)
from model.data.synthetic import SyntheticShapes, all_classes

__all__ = ["CsvPairs", "ImageFolderPairs", "MapPairs", "SyntheticPairs"]

_CLASS_IDS = {pair: i for i, pair in enumerate(all_classes())}  # (colour, shape) -> synthetic class id


class MapPairs(Dataset[Pair]):
    """Base class: subclasses give `__len__`, `_load(j) -> (pixels, caption, class id or None)` and
    `_describe(j)`."""

    def __init__(self, image_size: int) -> None:
        # The server's own preprocessing, so training sees exactly what serving will: no skew.
        self.preprocess = PreprocessConfig(image_size=image_size)

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> tuple[np.ndarray, str, int | None]:
        raise NotImplementedError

    def _describe(self, index: int) -> str:
        return f"item {index}"

    def __getitem__(self, index: int) -> Pair:
        n = len(self)
        i = operator.index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} items")
        tries = min(n, MAX_CONSECUTIVE_FAILURES)
        for k in range(tries):
            j = (i + k) % n
            try:
                pixels, caption, class_id = self._load(j)
            except ITEM_ERRORS as e:
                warn_unreadable(self._describe(j), e)
                continue
            return pixels, caption, k, class_id
        raise DataError(
            f"{tries} consecutive items from index {i} are unreadable "
            f"({self._describe(i)} ... {self._describe((i + tries - 1) % n)}): is the dataset intact?"
        )


class SyntheticPairs(MapPairs):
    """`model.data.synthetic.SyntheticShapes` as pairs; never unreadable (skipped is always 0).

    style, scene_fraction and varied_fraction are SyntheticShapes' own (the defaults: the images
    they always were). The class id of a one-object image is its (colour, shape) among the 36 of
    all_classes(); a two-object scene is a class of its own, len(all_classes()) + index: its caption
    says more than a label (both objects, their relation), so, as UniCL does for image-text pairs,
    it is the positive of its own image only."""

    def __init__(
        self,
        image_size: int,
        seed: int,
        split: str = "train",
        length: int = 1 << 30,
        style: str = "classic",
        scene_fraction: float = 0.0,
        varied_fraction: float = 1.0,
    ) -> None:
        super().__init__(image_size)
        try:
            self.shapes = SyntheticShapes(
                image_size, seed, split, length, style, scene_fraction, varied_fraction
            )
        except ValueError as e:  # a bad option is a data error to the trainer, named by SyntheticShapes
            raise DataError(str(e)) from None

    def __len__(self) -> int:
        return len(self.shapes)

    def _load(self, index: int) -> tuple[np.ndarray, str, int | None]:
        s = self.shapes[index]
        class_id = _CLASS_IDS[s.colour, s.shape] if len(s.objects) == 1 else len(_CLASS_IDS) + index
        return preprocess_image(s.image, self.preprocess), s.caption, class_id


class CsvPairs(MapPairs):
    """Rows of a CSV/TSV file: an image path column and a caption column (see read_csv_pairs)."""

    def __init__(
        self,
        path: str | Path,
        image_size: int,
        image_key: str = "filepath",
        caption_key: str = "caption",
        separator: str | None = None,
    ) -> None:
        super().__init__(image_size)
        self.path = Path(path)
        self.rows = read_csv_pairs(self.path, image_key, caption_key, separator)

    def __len__(self) -> int:
        return len(self.rows)

    def _describe(self, index: int) -> str:
        # data rows start on line 2, after the header (exact unless a caption holds a line break)
        image = self.rows[index][0] or "(no file path)"
        return f"image {image} (row {index + 2} of {self.path})"

    def _load(self, index: int) -> tuple[np.ndarray, str, int | None]:
        image, caption = self.rows[index]
        if not image:
            raise UnreadableItem("the row has no file path")
        if not caption.strip():
            raise UnreadableItem("the row has an empty caption")
        return load_image_file(image, self.preprocess), caption, None


class ImageFolderPairs(MapPairs):
    """`root/<class>/<images>`; the caption is a prompt template filled with the class name.

    The template of item i is drawn from (seed, i) out of the template set, so every template is
    used and the caption is still a pure function of the index. `classes` and `targets` (the class
    index of each item) serve evaluation; the class index is also each item's class id."""

    def __init__(
        self, root: str | Path, image_size: int, seed: int, templates: str | Sequence[str] = DEFAULT_SET
    ) -> None:
        super().__init__(image_size)
        if seed < 0:
            raise DataError(f"seed must be >= 0, got {seed}")
        self.seed = seed
        try:
            self.templates = load_templates(templates)
        except TemplateError as e:
            raise DataError(f"templates option: {e.message}") from None
        index = scan_image_folder(root)
        self.root = index.root
        self.classes: list[str] = list(index.classes)
        self.samples: list[tuple[Path, int]] = list(index.samples)
        self.targets: list[int] = index.targets

    def __len__(self) -> int:
        return len(self.samples)

    def _describe(self, index: int) -> str:
        return f"image {self.samples[index][0]}"

    def caption(self, index: int) -> str:
        """The caption of item `index`: a template drawn from (seed, index), filled with its class."""
        pick = int(np.random.default_rng([self.seed, index]).integers(len(self.templates)))
        return fill([self.templates[pick]], self.classes[self.samples[index][1]])[0]

    def _load(self, index: int) -> tuple[np.ndarray, str, int | None]:
        path, label = self.samples[index]
        return load_image_file(path, self.preprocess), self.caption(index), label
