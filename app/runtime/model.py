"""One loaded model: its identity, its encoders and what the routes show of it.

`load_runtime` is the real factory (a bundle's ONNX files in onnxruntime); create_app takes another
one, such as the fake encoder of the API tests, with the same signature. Everything model-specific
the engine needs goes through this object, so the engine never opens a bundle itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.settings import Settings
from model.bundle.encoders import Encoders, open_encoders
from model.bundle.format import Bundle, load_bundle, scoring_bias

log = logging.getLogger(__name__)


class ModelRuntime:
    """A model ready to serve. Thread-safe: its encoders may be run from several threads."""

    def __init__(
        self,
        name: str,
        version: str,
        sha: str,
        logit_scale: float,
        encoders: Encoders,
        manifest: Mapping[str, Any] | None = None,
        bundle: Bundle | None = None,
    ) -> None:
        self.name, self.version, self.sha = name, version, sha
        self.logit_scale = logit_scale
        self.encoders = encoders
        self.manifest: Mapping[str, Any] = manifest or {}
        self.bundle = bundle  # None for a runtime that is not read from disk (tests' fake)
        # A sigmoid-loss model (SigLIP) answers mode=multi with its own sigmoid; None for CLIP's softmax.
        self.logit_bias = scoring_bias(self.manifest)

    @property
    def ref(self) -> dict[str, str]:
        """How answers name the model: {"name", "version"}."""
        return {"name": self.name, "version": self.version}

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, 3, S, S] -> [B, E] normalized; what the batcher calls (tests may wrap it)."""
        return self.encoders.encode_images(pixel_values)

    def token_lengths(self, labels: Sequence[str], templates: Sequence[str]) -> list[int]:
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

    def describe(self) -> dict[str, Any]:
        """The model part of GET /v1/models."""
        m = self.manifest
        evaluated = self.bundle.eval_results() if self.bundle is not None else None
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha,
            "created_at": m.get("created_at"),
            "architecture": {k: v for k, v in dict(m.get("architecture", {})).items() if k != "config"},
            "backend": getattr(self.encoders, "backend", "onnxruntime"),
            "provider": self.encoders.provider,
            "precision": getattr(self.encoders, "precision", "fp32"),  # the text tower's too
            "image_precision": self.encoders.image_precision,
            "int8": m.get("int8"),
            "fp16": m.get("fp16"),  # export --fp16's agreement with torch fp32
            "logit_scale": self.logit_scale,
            "scoring": dict(m.get("scoring") or {"kind": "softmax"}),
            "parity": m.get("parity"),
            "eval": (evaluated or {}).get("summary"),
        }


# (settings, model name, version) -> that version of models/<name>, loaded
RuntimeFactory = Callable[[Settings, str, str], ModelRuntime]


def load_runtime(settings: Settings, name: str, version: str) -> ModelRuntime:
    """The bundle `version` of model `name`, its ONNX encoders opened as the settings say. The runtime
    is named by its folder (what requests route by), whatever name the manifest gives."""
    bundle = load_bundle(Path(settings.models_dir) / name / version)
    s = settings
    encoders = open_encoders(
        bundle, s.backend, s.precision, s.device, s.intra_op_threads, s.image_precision, s.gpu_options()
    )
    return ModelRuntime(
        name, bundle.version, bundle.sha, bundle.logit_scale, encoders, bundle.manifest, bundle
    )


def warm_up_sizes(max_batch: int) -> list[int]:
    """The image batch sizes warmed before serving: powers of two up to max_batch, and max_batch."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch]


def warm_up(rt: ModelRuntime, max_batch: int) -> None:
    """Run the encoders at the batch sizes served, so no request pays for kernel set-up."""
    s = rt.encoders.preprocess.image_size
    t = time.perf_counter()
    for b in warm_up_sizes(max_batch):
        rt.encoders.encode_images(np.zeros((b, 3, s, s), np.float32))
    rt.encoders.encode_texts(["a photo of a warm-up."] * 8)
    log.info("warm-up took %.0f ms", 1000 * (time.perf_counter() - t))
