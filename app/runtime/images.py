"""Uploaded image files -> the pixels the image encoder takes, with the server's limits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.runtime.errors import ImageFailure
from app.settings import Settings
from model.bundle.preprocess import ImageError, PreprocessConfig, preprocess_bytes


def _decode(data: bytes, pre: PreprocessConfig, s: Settings) -> np.ndarray:
    return preprocess_bytes(
        data, pre, allowed_formats=s.allowed_formats, max_pixels=s.max_image_pixels, jpeg_draft=s.jpeg_draft
    )


def decode_images(files: Sequence[bytes], pre: PreprocessConfig, s: Settings) -> np.ndarray:
    """Decode and preprocess every image: [n, 3, S, S] float32. Blocking: call off the event loop.
    An image that cannot be used raises ImageError, saying which one when there are several."""
    out = np.empty((len(files), 3, pre.image_size, pre.image_size), np.float32)
    for i, data in enumerate(files):
        try:
            out[i] = _decode(data, pre, s)
        except ImageError as e:
            if len(files) > 1:
                e.message = f"image {i}: {e.message}"
            raise
    return out


def decode_some(
    items: Sequence[bytes | ImageFailure], pre: PreprocessConfig, s: Settings
) -> tuple[np.ndarray, dict[int, ImageFailure]]:
    """on_error="skip": the pixels of the images that decode [m, 3, S, S], in order, and a failure
    by index for every other (already failed while the body was read, or now)."""
    rows: list[np.ndarray] = []
    failed: dict[int, ImageFailure] = {}
    for i, item in enumerate(items):
        if isinstance(item, ImageFailure):
            failed[i] = item
            continue
        try:
            rows.append(_decode(item, pre, s))
        except ImageError as e:
            failed[i] = ImageFailure(e.code, f"image {i}: {e.message}")
    shape = (0, 3, pre.image_size, pre.image_size)
    return (np.stack(rows) if rows else np.empty(shape, np.float32)), failed
