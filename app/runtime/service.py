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


class LabelCache:
    """Prompt-ensembled label embeddings keyed by (bundle sha, templates, label), LRU-bounded by bytes.

    Label sets that share labels share work: only labels not yet cached are encoded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, tuple[str, ...], str], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def matrix(
        self, encoders: OnnxEncoders, sha: str, labels: Sequence[str], templates: tuple[str, ...]
    ) -> np.ndarray:
        """[len(labels), E] normalized label embeddings, encoding only the labels not cached."""
        with self._lock:
            found = {lb: self._items.get((sha, templates, lb)) for lb in labels}
            for lb, v in found.items():
                if v is not None:
                    self._items.move_to_end((sha, templates, lb))
            missing = [lb for lb, v in found.items() if v is None]
            self.hits += len(labels) - len(missing)
            self.misses += len(missing)
        if missing:  # encode outside the lock: other requests keep being served meanwhile
            fresh = label_matrix(encoders, missing, templates)
            with self._lock:
                for lb, vec in zip(missing, fresh, strict=True):
                    found[lb] = vec
                    self._put((sha, templates, lb), vec)
        return np.stack([found[lb] for lb in labels])  # type: ignore[misc]

    def _put(self, key: tuple[str, tuple[str, ...], str], vec: np.ndarray) -> None:
        if key in self._items:
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


class ModelRuntime:
    """One loaded bundle. Thread-safe: onnxruntime sessions may be run from several threads."""

    def __init__(self, settings: Settings, version: str) -> None:
        self.settings = settings
        self.bundle: Bundle = load_bundle(settings.models_dir / settings.model_name / version)
        self.encoders = OnnxEncoders(self.bundle, settings.device, settings.intra_op_threads)
        self.sha = self.bundle.sha
        self.cache = LabelCache(settings.label_cache_bytes)
        self._warm_up()

    def _warm_up(self) -> None:
        """Run each encoder once so the first request does not pay for kernel set-up."""
        s = self.encoders.preprocess.image_size
        t = time.perf_counter()
        self.encoders.encode_images(np.zeros((1, 3, s, s), np.float32))
        self.encoders.encode_texts(["a photo of a warm-up."])
        log.info("warm-up took %.0f ms", 1000 * (time.perf_counter() - t))

    def token_length(self, labels: Sequence[str], templates: Sequence[str]) -> list[int]:
        """The longest filled prompt per label, in tokens (with start and end tokens)."""
        longest = max(templates, key=len)
        return self.encoders.tokenizer.token_lengths([longest.replace("{}", lb) for lb in labels])

    def classify(
        self, pixels: np.ndarray, labels: Sequence[str], templates: tuple[str, ...], top_k: int
    ) -> tuple[list[list[LabelScore]], dict[str, float]]:
        t0 = time.perf_counter()
        matrix = self.cache.matrix(self.encoders, self.sha, labels, templates)  # [N, E]
        t1 = time.perf_counter()
        feats = self.encoders.encode_images(pixels)  # [B, E]
        t2 = time.perf_counter()
        cosine, prob = scores(feats, matrix, self.bundle.logit_scale)
        results = []
        for row_c, row_p in zip(cosine, prob, strict=True):
            order = np.argsort(-row_c, kind="stable")[:top_k]
            results.append([LabelScore(labels[i], float(row_p[i]), float(row_c[i])) for i in order])
        timing = {"text_ms": 1000 * (t1 - t0), "image_ms": 1000 * (t2 - t1)}
        return results, timing
