"""Uploaded image files -> the pixels the image encoder takes, with the server's limits.

`decode_images` and `decode_some` decode one image after another in the calling thread (scripts,
tests). The engine decodes through a `DecodePool` instead: Pillow releases the GIL while it decodes
and resizes, so a request's images, each its own task on a pool of threads shared by every model,
decode side by side, into the same pixels and with the same errors as the plain functions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.runtime.errors import ImageFailure
from app.settings import Settings
from model.bundle.encoders import available_cpus
from model.bundle.preprocess import ImageError, PreprocessConfig, preprocess_bytes

log = logging.getLogger(__name__)


def _decode(data: bytes, pre: PreprocessConfig, s: Settings) -> np.ndarray:
    return preprocess_bytes(
        data, pre, allowed_formats=s.allowed_formats, max_pixels=s.max_image_pixels, jpeg_draft=s.jpeg_draft
    )


def _batch(n: int, pre: PreprocessConfig) -> np.ndarray:
    return np.empty((n, 3, pre.image_size, pre.image_size), np.float32)


def decode_images(files: Sequence[bytes], pre: PreprocessConfig, s: Settings) -> np.ndarray:
    """Decode and preprocess every image: [n, 3, S, S] float32. Blocking: call off the event loop.
    An image that cannot be used raises ImageError, saying which one when there are several."""
    out = _batch(len(files), pre)
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


class DecodePool:
    """The server's image decoding: one thread pool for every model, one task per image.

    A request keeps at most `window` of its images in the pool at a time and queues the next as one
    ends, so the images of a request that comes later get in between those of a large one (a
    calibration sends a thousand) instead of waiting behind all of them. Two per thread: each thread
    finds its next image queued when one ends, and never idles for a hop through the event loop."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or available_cpus()
        self.window = 2 * self.workers
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode")
        log.info("decoding images on %d threads (ZEROSHOT_DECODE_WORKERS)", self.workers)

    def close(self) -> None:
        """Refuse new images (RuntimeError); those already queued still decode, then the threads end.
        Does not wait for them: it is called on the event loop, and a decode takes milliseconds."""
        self._executor.shutdown(wait=False)

    async def decode_images(self, files: Sequence[bytes], pre: PreprocessConfig, s: Settings) -> np.ndarray:
        """decode_images on the pool: the same pixels and the same ImageError (the first bad image's,
        by index, whichever ends first)."""
        out = _batch(len(files), pre)

        def one(i: int) -> None:
            out[i] = _decode(files[i], pre, s)

        failed = await self._each(len(files), one, first_only=True)
        if failed:
            i = min(failed)
            e = failed[i]
            if len(files) > 1:
                e.message = f"image {i}: {e.message}"
            raise e
        return out

    async def decode_some(
        self, items: Sequence[bytes | ImageFailure], pre: PreprocessConfig, s: Settings
    ) -> tuple[np.ndarray, dict[int, ImageFailure]]:
        """decode_some on the pool: the same pixels and the same failures."""
        files = [(i, item) for i, item in enumerate(items) if not isinstance(item, ImageFailure)]
        out = _batch(len(files), pre)

        def one(k: int) -> None:
            out[k] = _decode(files[k][1], pre, s)

        errors = await self._each(len(files), one, first_only=False)
        failed = {i: item for i, item in enumerate(items) if isinstance(item, ImageFailure)}
        for k, e in errors.items():
            i = files[k][0]
            failed[i] = ImageFailure(e.code, f"image {i}: {e.message}")
        if errors:  # the rows of the images that decoded, still in order (a copy, as np.stack made)
            out = out[[k for k in range(len(files)) if k not in errors]]
        return out, dict(sorted(failed.items()))

    async def _each(self, n: int, work: Callable[[int], None], first_only: bool) -> dict[int, ImageError]:
        """work(0) ... work(n - 1) on the pool, queued in that order, at most `window` at once; the
        ImageError of each that raised one (any other error is raised). first_only: no image is
        queued after a failure and the later ones queued are dropped; the earlier ones still run, as
        one of them may fail too and be the first. Cancelled (the client went), it drops what it
        queued that has not started."""
        loop = asyncio.get_running_loop()
        running: dict[asyncio.Future[None], int] = {}
        failed: dict[int, ImageError] = {}
        queued = 0
        try:
            while True:
                while queued < n and len(running) < self.window and not (first_only and failed):
                    running[loop.run_in_executor(self._executor, work, queued)] = queued
                    queued += 1
                if not running:
                    return failed
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for f in done:
                    i = running.pop(f)
                    e = f.exception()
                    if isinstance(e, ImageError):
                        failed[i] = e
                    elif e is not None:
                        raise e
                if first_only and failed:
                    first = min(failed)
                    for f in [f for f, i in running.items() if i > first]:
                        _drop(f)
                        del running[f]
        finally:
            for f in running:
                _drop(f)


def _drop(f: asyncio.Future[None]) -> None:
    # Cancelled before it starts, its image is never decoded; one that has started runs to its end
    # (into a buffer nobody reads). One already done has its error read, or asyncio logs it as lost.
    if not f.cancel() and not f.cancelled():
        f.exception()
