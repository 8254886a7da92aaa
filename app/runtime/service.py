"""The served model: a bundle's ONNX encoders, the label-embedding cache and the classifier."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.runtime.classifier import label_matrix, scores
from app.runtime.encoders import OnnxEncoders
from app.settings import Settings
from model.bundle import Bundle, load_bundle

log = logging.getLogger(__name__)

Templates = tuple[str, ...]
LabelKey = tuple[str, Templates, str]  # (bundle sha, templates, label)
SetKey = tuple[str, Templates, tuple[str, ...]]  # (bundle sha, templates, labels in order)


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
    """Prompt-ensembled label embeddings, LRU-bounded by bytes, shared by every model version served.

    Keyed by (bundle sha, templates, label), so label sets that share labels share work: only labels
    not yet cached are encoded. A label set's whole matrix is cached too, keyed by its labels in order,
    so a repeated request costs one lookup. Concurrent requests for the same new set encode it once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[LabelKey | SetKey, np.ndarray] = OrderedDict()
        self._building: dict[SetKey, threading.Event] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0  # labels
        self.encoded_prompts = 0  # prompts run through the text encoder

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def cached_set(self, sha: str, labels: Sequence[str], templates: Templates) -> np.ndarray | None:
        """The whole matrix of a label set seen before, or None (cheap: call it on the event loop)."""
        key: SetKey = (sha, templates, tuple(labels))
        with self._lock:
            m = self._items.get(key)
            if m is not None:
                self._items.move_to_end(key)
                self.hits += len(labels)
            return m

    def put_set(self, sha: str, labels: Sequence[str], templates: Templates, matrix: np.ndarray) -> None:
        with self._lock:
            self._put((sha, templates, tuple(labels)), matrix)

    def matrix(
        self, encoders: OnnxEncoders, sha: str, labels: Sequence[str], templates: Templates
    ) -> np.ndarray:
        """[len(labels), E] normalized label embeddings, encoding only the labels not cached (blocking)."""
        m = self.cached_set(sha, labels, templates)
        if m is not None:
            return m
        key: SetKey = (sha, templates, tuple(labels))
        with self._lock:
            building = self._building.get(key)
            if building is None:
                self._building[key] = threading.Event()
        if building is not None:  # another request is encoding this very set: wait for its result
            building.wait()
            m = self.cached_set(sha, labels, templates)
            if m is not None:
                return m
            return self._build(encoders, sha, labels, templates, None)
        try:
            return self._build(encoders, sha, labels, templates, key)
        finally:
            with self._lock:
                self._building.pop(key).set()

    def _build(
        self,
        encoders: OnnxEncoders,
        sha: str,
        labels: Sequence[str],
        templates: Templates,
        key: SetKey | None,
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
            progress = _Progress(f"{len(missing)} labels x {len(templates)} templates") if n > 8192 else None
            fresh = label_matrix(encoders, missing, templates, progress=progress)
            with self._lock:
                self.encoded_prompts += n
                for lb, vec in zip(missing, fresh, strict=True):
                    found[lb] = vec
                    self._put((sha, templates, lb), vec)
        m = np.stack([found[lb] for lb in labels])  # type: ignore[misc]
        if key is not None:
            with self._lock:
                self._put(key, m)
        return m

    def _put(self, key: LabelKey | SetKey, vec: np.ndarray) -> None:
        if key in self._items or vec.nbytes > self.max_bytes:
            return
        self._items[key] = vec
        self._bytes += vec.nbytes
        while self._bytes > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes


@dataclass
class LabelScore:
    label: str
    probability: float
    cosine: float


def warm_up_sizes(max_batch: int) -> list[int]:
    """The image batch sizes warmed before serving: powers of two up to max_batch, and max_batch."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch]


class ModelRuntime:
    """One loaded bundle. Thread-safe: onnxruntime sessions may be run from several threads."""

    def __init__(self, settings: Settings, version: str, cache: LabelCache | None = None) -> None:
        self.settings = settings
        self.bundle: Bundle = load_bundle(settings.models_dir / settings.model_name / version)
        self.encoders = OnnxEncoders(
            self.bundle, settings.device, settings.intra_op_threads, settings.image_precision
        )
        self.sha = self.bundle.sha
        self.cache = cache if cache is not None else LabelCache(settings.label_cache_bytes)
        self._warm_up()

    def _warm_up(self) -> None:
        """Run the encoders at the batch sizes served, so no request pays for kernel set-up."""
        s = self.encoders.preprocess.image_size
        t = time.perf_counter()
        for b in warm_up_sizes(self.settings.max_batch):
            self.encoders.encode_images(np.zeros((b, 3, s, s), np.float32))
        self.encoders.encode_texts(["a photo of a warm-up."] * 8)
        log.info("warm-up took %.0f ms", 1000 * (time.perf_counter() - t))

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.encoders.encode_images(pixel_values)

    def token_length(self, labels: Sequence[str], templates: Sequence[str]) -> list[int]:
        """The longest filled prompt per label, in tokens (with start and end tokens).

        Estimated as the label's own tokens plus the longest template's; labels near the context
        length are measured exactly with every template (the tokenizer splits words apart from
        punctuation, so the estimate is exact for ordinary templates)."""
        tok = self.encoders.tokenizer
        context = tok.context_length
        overhead = max(tok.token_lengths([t.replace("{}", "") for t in templates])) - 2
        lengths = [n + overhead for n in tok.token_lengths(labels)]
        for i, lb in enumerate(labels):
            if lengths[i] >= context - 4:
                lengths[i] = max(tok.token_lengths([t.replace("{}", lb) for t in templates]))
        return lengths

    def label_matrix(self, labels: Sequence[str], templates: Templates) -> np.ndarray:
        """Blocking: call off the event loop (or check `cache.cached_set` first)."""
        return self.cache.matrix(self.encoders, self.sha, labels, templates)

    def rank(
        self, feats: np.ndarray, labels: Sequence[str], matrix: np.ndarray, top_k: int
    ) -> list[list[LabelScore]]:
        """Image features [B, E] against a label matrix [N, E]: the top_k labels per image by cosine."""
        cosine, prob = scores(feats, matrix, self.bundle.logit_scale)
        results = []
        for row_c, row_p in zip(cosine, prob, strict=True):
            if top_k < len(labels):
                top = np.argpartition(-row_c, top_k - 1)[:top_k]
                order = top[np.argsort(-row_c[top], kind="stable")]
            else:
                order = np.argsort(-row_c, kind="stable")
            results.append([LabelScore(labels[i], float(row_p[i]), float(row_c[i])) for i in order])
        return results
