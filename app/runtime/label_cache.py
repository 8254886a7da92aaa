"""The label-embedding cache: prompt-ensembled label embeddings, LRU-bounded by bytes, shared by
every model version served (keys carry the bundle's sha)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.bundle.encoders import TextEncoder
from model.bundle.zeroshot import Progress, label_matrix

log = logging.getLogger(__name__)

Templates = tuple[str, ...]
LabelKey = tuple[str, Templates, str]  # (bundle sha, templates, label)
SetKey = tuple[str, Templates, tuple[str, ...]]  # (bundle sha, templates, labels in order)
PROGRESS_PROMPTS = 8192  # builds larger than this log their progress

# What an entry costs the process besides its array's data, so that max_bytes bounds what the cache
# really holds. Counting only the arrays let RSS grow 2.2x past the bound on a 128-wide model
# (480,000 labels): per label, the array object, the key tuple, the label string and the dict entry
# cost more than 512 bytes of floats. Measured with tracemalloc (CPython 3.11): a 128-wide label
# entry takes 883 bytes, of which these terms account for 757 and the OrderedDict entry the rest.
_ARRAY_HEADER = sys.getsizeof(np.empty(0, np.float32))
_ENTRY = 128  # an OrderedDict entry: hash slot, index and linked-list node


def _text_bytes(texts: tuple[str, ...]) -> int:
    return sys.getsizeof(texts) + sum(map(sys.getsizeof, texts))


def _cost(key: LabelKey | SetKey, vec: np.ndarray) -> int:
    """The bytes one entry holds (templates apart: they are shared, and counted once each)."""
    labels = key[2]
    text = _text_bytes(labels) if isinstance(labels, tuple) else sys.getsizeof(labels)
    return vec.nbytes + _ARRAY_HEADER + sys.getsizeof(key) + text + _ENTRY


class _Progress:
    """Logs the build of a large label matrix every few seconds."""

    def __init__(self, what: str, every_s: float = 2.0) -> None:
        self.what, self.every_s = what, every_s
        self.t0 = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every_s or done == total:
            self.last = now
            rate = done / max(now - self.t0, 1e-9)
            log.info("%s: %d/%d prompts encoded (%.0f prompts/s)", self.what, done, total, rate)


class LabelCache:
    """Keyed by (bundle sha, templates, label), so label lists that share labels share work: only
    labels not yet cached are encoded. A list's whole matrix is cached too, keyed by its labels in
    order, so a repeated request costs one lookup. Concurrent requests for the same new list encode
    it once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[LabelKey | SetKey, np.ndarray] = OrderedDict()
        self._building: dict[SetKey, threading.Event] = {}
        # one tuple per distinct template list, shared by its entries: [the tuple, entries using it]
        self._templates: dict[Templates, list[Any]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0  # labels
        self.encoded_prompts = 0  # prompts run through the text encoder

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "encoded_prompts": self.encoded_prompts,
            "entries": len(self),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
        }

    def cached_set(self, sha: str, labels: Sequence[str], templates: Templates) -> np.ndarray | None:
        """The whole matrix of a label list seen before, or None (cheap: call it on the event loop)."""
        key: SetKey = (sha, templates, tuple(labels))
        with self._lock:
            m = self._items.get(key)
            if m is not None:
                self._items.move_to_end(key)
                self.hits += len(labels)
            return m

    def missing(self, sha: str, labels: Sequence[str], templates: Templates) -> int:
        """How many of `labels` a build would encode now (no LRU move, no counts): for quotas."""
        with self._lock:
            return sum((sha, templates, lb) not in self._items for lb in labels)

    def put_set(self, sha: str, labels: Sequence[str], templates: Templates, matrix: np.ndarray) -> None:
        with self._lock:
            self._put((sha, templates, tuple(labels)), matrix)

    def get_or_build(
        self, encoder: TextEncoder, sha: str, labels: Sequence[str], templates: Templates
    ) -> np.ndarray:
        """[len(labels), E] normalized label embeddings: cached, or built (blocking)."""
        m = self.cached_set(sha, labels, templates)
        return m if m is not None else self.build(encoder, sha, labels, templates)

    def build(
        self,
        encoder: TextEncoder,
        sha: str,
        labels: Sequence[str],
        templates: Templates,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Build a list's matrix whose lookup just missed, encoding only the labels not cached; if
        another request is building the same list, wait for its result instead (blocking)."""
        key: SetKey = (sha, templates, tuple(labels))
        with self._lock:
            building = self._building.get(key)
            if building is None:
                self._building[key] = threading.Event()
        if building is not None:  # another request is encoding this very list: wait for its result
            building.wait()
            m = self.cached_set(sha, labels, templates)
            return m if m is not None else self._build(encoder, sha, labels, templates, None, progress)
        try:
            return self._build(encoder, sha, labels, templates, key, progress)
        finally:
            with self._lock:
                self._building.pop(key).set()

    def _build(
        self,
        encoder: TextEncoder,
        sha: str,
        labels: Sequence[str],
        templates: Templates,
        key: SetKey | None,
        report: Progress | None = None,
    ) -> np.ndarray:
        with self._lock:
            found = {lb: self._items.get((sha, templates, lb)) for lb in labels}
            for lb, v in found.items():
                if v is not None:
                    self._items.move_to_end((sha, templates, lb))
            missing = [lb for lb, v in found.items() if v is None]
            self.hits += len(labels) - len(missing)
            self.misses += len(missing)
        if missing:  # encode outside the lock: other requests keep being served meanwhile
            n = len(missing) * len(templates)
            what = f"{len(missing)} labels x {len(templates)} templates"
            log_progress = _Progress(what) if n > PROGRESS_PROMPTS else None

            def progress(done: int, total: int) -> None:  # the log, and the caller's (a set's build)
                if log_progress is not None:
                    log_progress(done, total)
                if report is not None:
                    report(done, total)

            fresh = label_matrix(encoder, missing, templates, progress=progress)
            with self._lock:
                self.encoded_prompts += n
                for lb, row in zip(missing, fresh, strict=True):
                    # a copy: a row view would keep the whole fresh matrix alive after eviction
                    found[lb] = vec = row.copy()
                    self._put((sha, templates, lb), vec)
        m = np.stack([found[lb] for lb in labels])  # type: ignore[misc]
        if key is not None:
            with self._lock:
                self._put(key, m)
        return m

    def _put(self, key: LabelKey | SetKey, vec: np.ndarray) -> None:
        cost = _cost(key, vec)
        if key in self._items or cost > self.max_bytes:
            return
        templates = key[1]
        shared = self._templates.get(templates)
        if shared is None:  # the first entry with these templates brings them in
            shared = self._templates[templates] = [templates, 0]
            self._bytes += _text_bytes(templates)
        shared[1] += 1
        key = (key[0], shared[0], key[2])  # type: ignore[assignment]  # the shared tuple, not the caller's
        self._items[key] = vec
        self._bytes += cost
        while self._bytes > self.max_bytes and self._items:
            old_key, old = self._items.popitem(last=False)
            self._bytes -= _cost(old_key, old)
            shared = self._templates[old_key[1]]
            shared[1] -= 1
            if not shared[1]:
                del self._templates[old_key[1]]
                self._bytes -= _text_bytes(old_key[1])
