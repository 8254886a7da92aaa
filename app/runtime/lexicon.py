"""The negative-label lexicon of each bundle served (model/bundle/openset.py says what it is for).

Its words are encoded once per bundle, through the text lane so requests go on meanwhile, and kept in
`<label_sets_dir>/.lexicon/` so a restart or another replica loads them instead (10,000 prompts: well
under a second on the default model, about 20 s on ViT-B/32 on 2 CPU cores). The negatives picked for
a label list (their row numbers: 12 KB a list) are remembered for the lists used last, since picking
them costs a [W, N] product.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.runtime.model import ModelRuntime
from app.runtime.text_lane import TextLane
from model.bundle.atomic import atomic_write
from model.bundle.openset import LEXICON_TEMPLATE, LEXICON_WORDS, NEGATIVES, lexicon, select_negatives
from model.bundle.zeroshot import label_matrix

log = logging.getLogger(__name__)

KEEP_BUNDLES = 2  # the bundle served and the one before it, while requests on it finish
KEEP_NEGATIVES = 64  # label lists whose negatives are remembered


class Lexicon:
    def __init__(self, root: Path, lane: TextLane, words: int = LEXICON_WORDS) -> None:
        self.root, self.lane, self.words = root / ".lexicon", lane, words
        self._lock = threading.Lock()  # one build per bundle, however many requests want it
        self._matrices: OrderedDict[str, np.ndarray] = OrderedDict()
        self._negatives: OrderedDict[tuple[str, Sequence[str], Sequence[str]], np.ndarray] = OrderedDict()

    @property
    def in_use(self) -> bool:
        """Whether a request has needed the lexicon (a reload then prepares it for the new model)."""
        return bool(self._matrices)

    def _file(self, sha: str) -> Path:
        return self.root / f"{sha[:16]}.{self.words}.npy"

    def matrix(self, rt: ModelRuntime) -> np.ndarray:
        """The lexicon's prompt embeddings for the bundle, [W, E]. Blocking: may encode them."""
        with self._lock:
            m = self._matrices.get(rt.sha)
            if m is None:
                m = self._load(rt) or self._build(rt)
                self._matrices[rt.sha] = m
                while len(self._matrices) > KEEP_BUNDLES:
                    self._matrices.popitem(last=False)
            self._matrices.move_to_end(rt.sha)
            return m

    def _load(self, rt: ModelRuntime) -> np.ndarray | None:
        path = self._file(rt.sha)
        try:
            m = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as e:
            log.warning("%s is unreadable (%s): encoding the lexicon again", path, e)
            return None
        norms = np.linalg.norm(m, axis=1) if m.ndim == 2 else np.zeros(0)
        if m.ndim != 2 or m.shape[1] != rt.encoders.embed_dim or not np.all(np.abs(norms - 1) <= 1e-3):
            log.warning("%s holds %s %s, not unit rows of width %d: encoding the lexicon again",
                        path, m.dtype, m.shape, rt.encoders.embed_dim)  # fmt: skip
            return None
        return m.astype(np.float32, copy=False)

    def _build(self, rt: ModelRuntime) -> np.ndarray:
        words = lexicon(rt.encoders.tokenizer, self.words)
        log.info("encoding the negative-label lexicon: %d words", len(words))
        m = label_matrix(self.lane.job(rt.encoders), words, (LEXICON_TEMPLATE,))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self._file(rt.sha), lambda f: np.save(f, m, allow_pickle=False))
        except OSError as e:  # served from memory; the next start encodes it again
            log.warning("cannot persist the lexicon in %s: %s", self.root, e)
        return m

    def negatives(
        self, rt: ModelRuntime, labels: Sequence[str], templates: Sequence[str], labels_matrix: np.ndarray
    ) -> np.ndarray:
        """Which lexicon rows are this label list's negative labels, [M] indices. Blocking."""
        lex = self.matrix(rt)
        key = (rt.sha, tuple(labels), tuple(templates))
        with self._lock:
            picked = self._negatives.get(key)
            if picked is not None:
                self._negatives.move_to_end(key)
                return picked
        picked = select_negatives(lex, labels_matrix, NEGATIVES).astype(np.int32)
        with self._lock:
            self._negatives[key] = picked
            while len(self._negatives) > KEEP_NEGATIVES:
                self._negatives.popitem(last=False)
        return picked
