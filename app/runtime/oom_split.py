"""A batch through the image encoder within the batcher's cap, split in halves when it runs out of
memory (model/bundle/oom.py tells an OOM from other errors); and the cap itself, which an OOM lowers.

`encode_within` runs the batch in pieces of at most `cap` images. A piece that raises an OOM is split
in halves and each half retried, down to one image; only an image that still runs out of memory alone
fails (EncoderOutOfMemory), and with it just the requests it belongs to. Any other error is raised at
once, unsplit: a shape or model error would fail every smaller batch too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app.runtime.errors import EngineError
from model.bundle.oom import is_out_of_memory

log = logging.getLogger(__name__)

REGROW_AFTER = 64  # full batches at a lowered cap before the cap tries twice its size again


class EncoderOutOfMemory(EngineError):
    """One image ran the image encoder out of memory even alone: 503 with Retry-After, since the
    memory may be free again soon (another process, a lowered cap)."""

    code = "encoder_out_of_memory"


@dataclass
class Encoded:
    """What `encode_within` made of a batch of `n` images."""

    n: int
    rows: np.ndarray | None = None  # [n, E] once one piece succeeded; a failed image's row is zeros
    failed: dict[int, BaseException] = field(default_factory=dict)  # image index -> why it has no row
    ooms: int = 0  # out-of-memory errors the encoder raised (each split a piece, or failed one image)
    largest_ok: int = 0  # the largest piece encoded

    def part(self, start: int, stop: int) -> np.ndarray | BaseException:
        """The rows of images start..stop, or why one of them has none."""
        for i in range(start, stop):
            if i in self.failed:
                return self.failed[i]
        assert self.rows is not None  # no image failed, so some piece succeeded
        return self.rows[start:stop]


def encode_within(
    encode: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, cap: int, out: Encoded
) -> None:
    """Fill `out` with the features of `pixels`, in calls of at most `cap` images. The caller makes
    `out`, so what it counted (its OOMs) is still there when another error is raised."""
    for start in range(0, len(pixels), cap):
        _piece(encode, pixels, start, min(start + cap, len(pixels)), out)


def _piece(
    encode: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, start: int, stop: int, out: Encoded
) -> None:
    try:
        feats = encode(pixels[start:stop])
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        out.ooms += 1
        if stop - start == 1:
            failure = EncoderOutOfMemory(
                "the image encoder ran out of memory on an image of this request even alone (its "
                "batch was split down to single images); the server is short of accelerator memory",
                {"reason": "out_of_memory"},
            )
            failure.__cause__ = e  # the allocator's own message, for the log
            out.failed[start] = failure
            return
        mid = start + (stop - start) // 2  # depth log2(max_batch): recursion is bounded
        _piece(encode, pixels, start, mid, out)
        _piece(encode, pixels, mid, stop, out)
        return
    if out.rows is None:
        out.rows = np.zeros((out.n, *feats.shape[1:]), feats.dtype)
    out.rows[start:stop] = feats
    out.largest_ok = max(out.largest_ok, stop - start)


class BatchCap:
    """The most images the batcher puts in one batch now: `max_batch` until an OOM, then the largest
    piece that succeeded in the batch that ran out (1 if none did), so later batches fit. The memory
    free may grow again (another process exits, the arena is trimmed), so after `regrow_after` batches
    that filled the lowered cap without an OOM it doubles, never above `max_batch`; if that is too
    much after all, the next OOM lowers it again - one split in `regrow_after` batches at most."""

    def __init__(self, max_batch: int, regrow_after: int = REGROW_AFTER) -> None:
        self.max_batch, self.regrow_after = max_batch, regrow_after
        self.value = max_batch
        self._full = 0  # batches at the lowered cap since it last changed

    def update(self, enc: Encoded) -> None:
        """Take a batch's outcome into account (called by the worker thread after each batch)."""
        if enc.ooms:
            self.value = max(1, min(self.value, enc.largest_ok))
            self._full = 0
        elif self.value < self.max_batch and enc.largest_ok >= self.value:
            self._full += 1
            if self._full >= self.regrow_after:
                self.value, self._full = min(self.max_batch, 2 * self.value), 0
