"""The label cache's byte bound covers what the cache really holds (arrays, keys, label strings,
entries), measured against tracemalloc; evicted rows free their whole matrix; a template list is held
once however many requests send it. (The RSS flood test is bench/label_cache_flood.py.)"""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence

import numpy as np

from app.runtime.label_cache import LabelCache

SHA = "f" * 64


class RandomText:
    """A text encoder without a tokenizer, so tracemalloc sees only what the cache keeps."""

    embed_dim = 128

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None
    ) -> np.ndarray:
        v = np.random.default_rng(len(texts)).standard_normal((len(texts), self.embed_dim))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def fill(cache: LabelCache, lists: int, per_list: int, templates: tuple[str, ...]) -> None:
    enc = RandomText()
    for j in range(lists):
        labels = [f"list {j} label number {i}" for i in range(per_list)]
        cache.build(enc, SHA, labels, tuple(templates))  # a new tuple each time, as per request


def test_the_bytes_counted_are_the_bytes_held() -> None:
    cache = LabelCache(1 << 40)  # no eviction
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(cache, lists=50, per_list=200, templates=("a photo of a {}.", "a drawing of a {}."))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == 50 * 200 + 50
    assert 0.85 < held / cache.bytes < 1.15, (held, cache.bytes)
    # the arrays alone, the old count, were far below what the process pays
    arrays = (50 * 200 + 50 * 200) * 128 * 4
    assert cache.bytes > 1.3 * arrays


def test_the_bound_holds_through_eviction_and_frees_whole_matrices() -> None:
    bound = 2 * 1024 * 1024
    cache = LabelCache(bound)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(cache, lists=60, per_list=200, templates=("a photo of a {}.",))  # ~10x the bound
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.bytes <= bound
    assert held < 1.25 * bound, held  # row views would pin every evicted matrix: ~10x


def test_a_template_list_is_held_once() -> None:
    cache = LabelCache(1 << 30)
    custom = ("a {} in the wild.", "a close-up of a {}.")
    fill(cache, lists=5, per_list=3, templates=custom)
    assert len(cache._templates) == 1
    [shared] = {id(k[1]) for k in cache._items}
    assert shared == id(cache._templates[custom][0])
    # the cache still answers lookups made with the caller's own (equal) tuple
    labels = [f"list 0 label number {i}" for i in range(3)]
    assert cache.cached_set(SHA, labels, tuple(list(custom))) is not None
