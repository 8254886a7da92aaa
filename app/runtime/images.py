"""Uploaded image files -> the pixels the image encoder takes, with the server's limits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.settings import Settings
from model.bundle.preprocess import ImageError, PreprocessConfig, preprocess_bytes


def decode_images(files: Sequence[bytes], pre: PreprocessConfig, s: Settings) -> np.ndarray:
    """Decode and preprocess every image: [n, 3, S, S] float32. Blocking: call off the event loop.
    An image that cannot be used raises ImageError, saying which one when there are several."""
    out = np.empty((len(files), 3, pre.image_size, pre.image_size), np.float32)
    for i, data in enumerate(files):
        try:
            out[i] = preprocess_bytes(
                data,
                pre,
                allowed_formats=s.allowed_formats,
                max_pixels=s.max_image_pixels,
                jpeg_draft=s.jpeg_draft,
            )
        except ImageError as e:
            if len(files) > 1:
                e.message = f"image {i}: {e.message}"
            raise
    return out
