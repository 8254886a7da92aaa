"""A fake encoder behind the real engine, so route, error, auth and limit tests need no trained bundle
(infinity's DummyTransformer is the pattern). Features are deterministic: an image's from the bytes
of its pixels, a text's from its token ids, so the same input always gets the same vector and two
texts the tokenizer sees alike (case, spacing) get the same one, as with a real model."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.main import create_app
from app.runtime.model import ModelRuntime
from app.settings import Settings
from model.bundle.encoders import l2_normalize
from model.bundle.preprocess import PreprocessConfig
from model.bundle.tokenizer import ClipTokenizer

FAKE_DIM, FAKE_SIZE = 32, 16


@functools.cache
def clip_tokenizer() -> ClipTokenizer:
    return ClipTokenizer.clip_bpe()  # the real one: token-length limits behave as with a bundle


def _vector(data: bytes, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class FakeEncoders:
    provider = "FakeExecutionProvider"
    image_precision = "fp32"

    def __init__(self, embed_dim: int = FAKE_DIM, image_size: int = FAKE_SIZE) -> None:
        self.embed_dim = embed_dim
        self.tokenizer = clip_tokenizer()
        self.preprocess = PreprocessConfig(image_size=image_size)
        self.images_encoded = self.texts_encoded = 0

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        self.images_encoded += len(pixel_values)
        rows = [_vector(np.ascontiguousarray(p).tobytes(), self.embed_dim) for p in pixel_values]
        return l2_normalize(np.stack(rows)) if rows else np.zeros((0, self.embed_dim), np.float32)

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None
    ) -> np.ndarray:
        self.texts_encoded += len(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        ids = self.tokenizer.encode_batch(texts, pad_to=self.tokenizer.context_length)
        return l2_normalize(np.stack([_vector(row.tobytes(), self.embed_dim) for row in ids]))

    def runtime_factory(self) -> Callable[[Settings, str, str], ModelRuntime]:
        """A runtime factory whose every runtime runs on these encoders."""

        def factory(settings: Settings, name: str, version: str) -> ModelRuntime:
            rt = fake_runtime(settings, name, version)
            return ModelRuntime(rt.name, rt.version, rt.sha, rt.logit_scale, self, rt.manifest)

        return factory


def fake_runtime(settings: Settings, name: str, version: str) -> ModelRuntime:
    """The runtime factory of the fake: any version named by CURRENT loads, instantly."""
    manifest = {
        "created_at": "2026-12-02T00:00:00+00:00",
        "architecture": {"embed_dim": FAKE_DIM, "image_size": FAKE_SIZE, "context_length": 77},
    }
    sha = hashlib.sha256(f"fake/{name}/{version}".encode()).hexdigest()
    return ModelRuntime(name, version, sha, 100.0, FakeEncoders(), manifest)


class GatedEncoders(FakeEncoders):
    """Once armed, image-encoder calls wait for `release`, so what comes after the first stays queued."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()
        self.armed = False  # not during the warm-up at start
        self.timeout_s = 10.0
        self.calls: list[int] = []

    def encode_images(self, pixel_values: Any) -> Any:
        if not self.armed:
            return super().encode_images(pixel_values)
        self.calls.append(len(pixel_values))
        self.entered.set()
        assert self.release.wait(self.timeout_s), "the test never released the encoder"
        return super().encode_images(pixel_values)


def fake_settings(tmp: Path, version: str = "fake-1", **kw: Any) -> Settings:
    """Settings whose models folder names `version` as CURRENT of model `default`, with no bundle in it."""
    models = tmp / "fake-models"
    (models / "default").mkdir(parents=True, exist_ok=True)
    (models / "default" / "CURRENT").write_text(version + "\n")
    base: dict[str, Any] = dict(
        models_dir=models, device="cpu", reload_interval_s=0, label_sets_dir=tmp / "label-sets"
    )
    return Settings(**{**base, **kw})


def fake_app(tmp: Path, **kw: Any) -> Any:
    return create_app(fake_settings(tmp, **kw), fake_runtime)
