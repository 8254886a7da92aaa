"""The text encoder's one lane: every prompt the server encodes passes through it a slice at a time,
so that a request with three new labels is not stuck behind a 1,000 labels x 80 templates build.

Each caller (a label-matrix build, an embeddings request) is a job. Its prompts are cut into slices
sized to take about `slice_ms` on the model at hand (measured as it goes), and one slice runs at a
time. When a slice ends, the waiting job that has had the least text-encoder time so far goes next
(least attained service): a new small job goes ahead of a large build without anyone saying which is
which, and two large builds take turns. A slice kept waiting past `starve_ms` goes next whatever
waits, so a build still advances under a steady stream of small jobs.

Image batches do not take turns here: tried, making them wait for a text slice (and the build for
them) made one-image requests on a ViT-B/32 slower during a build, not faster (bench/README.md).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from model.bundle.encoders import Encoders

MIN_SLICE = 8  # prompts: below this, per-call overhead dominates even on a large model
MAX_SLICE = 256  # prompts: the encoder's own batch size, where a slice gains nothing by growing
FIRST_SLICE = 32  # prompts, before a model's speed is known


@dataclass(eq=False)
class _Waiter:
    attained_s: float  # encoder time its job has had
    arrival: int
    since: float  # time.monotonic() when it began to wait


class TextLane:
    """One text-encoder call at a time, least attained service first, except that a slice kept
    waiting longer than `starve_ms` goes next. Thread-safe."""

    def __init__(self, slice_ms: float, starve_ms: float | None = None) -> None:
        self.slice_s = slice_ms / 1000
        self.starve_s = 4 * self.slice_s if starve_ms is None else starve_ms / 1000
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: list[_Waiter] = []
        self._granted: _Waiter | None = None  # chosen by the turn that just ended, not yet awake
        self._arrivals = itertools.count()
        # prompts per second, per encoder (a hot reload brings a model of another speed)
        self._rate: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()
        self.slices = self.prompts = self.waited = 0

    def job(self, encoder: Encoders) -> TextJob:
        """A new caller's encoder: the same interface, its calls taking their turns here."""
        return TextJob(self, encoder)

    def stats(self) -> dict[str, int | float]:
        with self._cond:
            return {
                "slice_ms": round(1000 * self.slice_s, 1),
                "slices": self.slices,
                "prompts": self.prompts,
                "starve_ms": round(1000 * self.starve_s, 1),
                "waited": self.waited,  # slices that waited for another job's slice to end
                "waiting": len(self._waiting),
            }

    def slice_size(self, encoder: Encoders) -> int:
        rate = self._rate.get(encoder)
        if rate is None:
            return FIRST_SLICE
        return max(MIN_SLICE, min(MAX_SLICE, int(rate * self.slice_s)))

    @contextlib.contextmanager
    def turn(self, attained_s: float) -> Iterator[None]:
        """Hold the lane for one encoder call. The turn that ends chooses the next (`_pick`) and
        hands the lane over, so waiters woken together never disagree on whose turn it is."""
        with self._cond:
            if self._busy:
                me = _Waiter(attained_s, next(self._arrivals), time.monotonic())
                self._waiting.append(me)
                self.waited += 1
                try:
                    while self._granted is not me:
                        self._cond.wait()
                except BaseException:  # interrupted while waiting: give up the place, or the lane
                    if self._granted is me:
                        self._hand_over()
                    else:
                        self._waiting.remove(me)
                    raise
                self._granted = None
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._hand_over()

    def _hand_over(self) -> None:
        """The lane to the next waiter, or free (with the lock held)."""
        if self._waiting:
            self._granted = self._pick()
            self._waiting.remove(self._granted)
            self._cond.notify_all()
        else:
            self._granted = None
            self._busy = False

    def _pick(self) -> _Waiter:
        starved = time.monotonic() - self.starve_s
        late = [w for w in self._waiting if w.since < starved]
        if late:
            return min(late, key=lambda w: w.since)
        return min(self._waiting, key=lambda w: (w.attained_s, w.arrival))

    def observe(self, encoder: Encoders, prompts: int, seconds: float) -> None:
        with self._cond:
            self.slices += 1
            self.prompts += prompts
            if seconds > 0:
                rate = prompts / seconds
                old = self._rate.get(encoder)
                self._rate[encoder] = rate if old is None else 0.7 * old + 0.3 * rate


class TextJob:
    """One caller's view of the lane: a TextEncoder whose calls are cut into slices that wait their
    turn. Keep one per request or build, so that its attained time accumulates across its calls."""

    def __init__(self, lane: TextLane, encoder: Encoders) -> None:
        self.lane, self.encoder = lane, encoder
        self.attained_s = 0.0

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None
    ) -> np.ndarray:
        if not texts:
            return self.encoder.encode_texts(texts, batch_size, pad_to)
        # In the given order, tokenizing included: each slice tokenizes its own prompts inside its turn.
        # Sorting the whole call by token length first did the tokenizing outside the lane, and small
        # requests' p99 during a build went back to what it was without the lane.
        parts: list[np.ndarray] = []
        start = 0
        while start < len(texts):
            n = self.lane.slice_size(self.encoder)
            with self.lane.turn(self.attained_s):
                t = time.perf_counter()
                part = texts[start : start + n]
                parts.append(self.encoder.encode_texts(part, batch_size, pad_to))
                seconds = time.perf_counter() - t
            self.attained_s += seconds
            self.lane.observe(self.encoder, len(part), seconds)
            start += n
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
