"""ONNX Runtime encoders over a model bundle: the one code path that turns pixels and token ids into
features, used by the server and by `zeroshot eval` / `zeroshot export` alike; and the interface
(`Encoders`) that every encoder offers, so the zero-shot maths, the server and the evaluation run
unchanged on a torch model during training or on a fake in the API tests. Torch-free."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import onnxruntime as ort

from model.bundle.format import (
    IMAGE_ENCODER,
    IMAGE_ENCODER_FP16,
    IMAGE_ENCODER_INT8,
    TEXT_ENCODER,
    TEXT_ENCODER_FP16,
    TOKENIZER,
    Bundle,
    BundleError,
)
from model.bundle.io_binding import BoundRunner
from model.bundle.preprocess import PreprocessConfig
from model.bundle.providers import Device, GpuOptions, InputProfile, ProviderList, choose_providers
from model.bundle.tokenizer import TextTokenizer, open_tokenizer

log = logging.getLogger(__name__)

CPU = ("CPUExecutionProvider",)
GPU_PROVIDERS = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
ImagePrecision = Literal["fp32", "int8"]  # which image encoder of a bundle: int8 needs export --int8
OnnxPrecision = Literal["fp32", "fp16"]  # both towers under onnxruntime: fp16 needs export --fp16


class TextEncoder(Protocol):
    """Texts -> L2-normalized features: what prompt ensembling (model/bundle/zeroshot.py) needs."""

    @property
    def embed_dim(self) -> int: ...

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None
    ) -> np.ndarray: ...


class Encoders(TextEncoder, Protocol):
    """Everything the server and the evaluation need from a model: both towers, the tokenizer that
    feeds the text tower, and the preprocessing that feeds the image tower."""

    @property
    def tokenizer(self) -> TextTokenizer: ...

    @property
    def preprocess(self) -> PreprocessConfig: ...

    @property
    def provider(self) -> str: ...

    @property
    def image_precision(self) -> str: ...

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray: ...


def open_session(
    path: Path, opts: ort.SessionOptions | None = None, providers: Sequence[str] | ProviderList = CPU
) -> ort.InferenceSession:
    """An onnxruntime session of one file; a file it cannot load is a BundleError naming the file.
    `providers`: names, or (name, options) pairs (model/bundle/providers.py)."""
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own untyped errors for a bad file
        raise BundleError(f"{path} cannot be loaded by onnxruntime: {e}") from None


def run_normalized(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The session's first output, L2-normalized along its last axis, as float32."""
    return l2_normalize(session.run(None, inputs)[0].astype(np.float32, copy=False))


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 quota (containers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class OnnxEncoders:
    """Image and text encoder sessions of one bundle, with the bundle's tokenizer and preprocessing."""

    backend = "onnxruntime"

    def __init__(
        self,
        bundle: Bundle,
        device: Device = "auto",
        intra_op_threads: int | None = None,
        image_precision: ImagePrecision = "fp32",
        precision: OnnxPrecision = "fp32",
        gpu: GpuOptions | None = None,
    ) -> None:
        self.bundle = bundle
        self.device, self.gpu = device, gpu or GpuOptions()
        self.precision = precision  # fp16: both towers' fp16 files (export --fp16)
        self.image_precision = "fp16" if precision == "fp16" else image_precision
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads or available_cpus()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.image_session, self.text_session = self._open_sessions(opts)
        self.provider = self.image_session.get_providers()[0]
        # On a GPU, inputs and outputs go through device buffers kept across calls (io_binding.py)
        gpu_type = GPU_PROVIDERS.get(self.provider)
        self._bound = (
            (
                BoundRunner(self.image_session, gpu_type, self.gpu.device_id),
                BoundRunner(self.text_session, gpu_type, self.gpu.device_id),
            )
            if gpu_type
            else None
        )
        self.tokenizer = open_tokenizer(
            bundle.file(TOKENIZER), bundle.manifest["tokenizer"], int(bundle.architecture["context_length"])
        )
        self.preprocess = PreprocessConfig.from_dict(bundle.manifest["preprocessing"])
        self.embed_dim = int(bundle.architecture["embed_dim"])
        self._check_signatures()
        log.info(
            "loaded %s/%s on %s (image encoder %s, text encoder %s)",
            bundle.name,
            bundle.version,
            self.provider,
            self.image_precision,
            precision,
        )

    def _open_sessions(self, opts: ort.SessionOptions) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        """The image and text sessions of the precision asked for; a file the bundle lacks is named."""
        files = self.bundle.manifest.get("files", {})
        if self.image_precision == "int8" and IMAGE_ENCODER_INT8 not in files:
            raise BundleError(
                f"{self.bundle.path} has no {IMAGE_ENCODER_INT8}: export it with `zeroshot export --int8`, "
                "or serve with ZEROSHOT_IMAGE_PRECISION=fp32"
            )
        if self.precision == "fp16" and IMAGE_ENCODER_FP16 not in files:
            raise BundleError(
                f"{self.bundle.path} has no fp16 encoders: export it with `zeroshot export --fp16`, "
                "or serve with ZEROSHOT_PRECISION=fp32"
            )
        arch = self.bundle.architecture
        size, context = int(arch["image_size"]), int(arch["context_length"])
        image_file = {"int8": IMAGE_ENCODER_INT8, "fp16": IMAGE_ENCODER_FP16}.get(self.image_precision)
        image = self._session(
            image_file or IMAGE_ENCODER, opts, InputProfile("pixel_values", (-1, 3, size, size))
        )
        text = self._session(
            TEXT_ENCODER_FP16 if self.precision == "fp16" else TEXT_ENCODER,
            opts,
            InputProfile("input_ids", (-1, -1), max_len=context),
        )
        return image, text

    def _session(self, name: str, opts: ort.SessionOptions, profile: InputProfile) -> ort.InferenceSession:
        providers = choose_providers(self.device, profile, self.gpu)
        return open_session(self.bundle.file(name), opts, providers)

    def _check_signatures(self) -> None:
        """Refuse a bundle whose encoders do not have the shapes the manifest promises."""
        size = int(self.bundle.architecture["image_size"])
        expect = {
            IMAGE_ENCODER: (self.image_session, "pixel_values", [3, size, size], "image_features"),
            TEXT_ENCODER: (self.text_session, "input_ids", None, "text_features"),
        }
        for fname, (sess, in_name, in_tail, out_name) in expect.items():
            inputs, outputs = sess.get_inputs(), sess.get_outputs()
            if [i.name for i in inputs] != [in_name] or [o.name for o in outputs] != [out_name]:
                raise BundleError(
                    f"{self.bundle.file(fname)}: expected input {in_name!r} and output {out_name!r}, found "
                    f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}"
                )
            if in_tail is not None and list(inputs[0].shape[1:]) != in_tail:
                raise BundleError(
                    f"{self.bundle.file(fname)}: input shape {inputs[0].shape} "
                    f"does not match image_size {size}"
                )
            if outputs[0].shape[-1] != self.embed_dim:
                raise BundleError(
                    f"{self.bundle.file(fname)}: output width {outputs[0].shape[-1]} is not "
                    f"embed_dim {self.embed_dim}"
                )

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, 3, S, S] float32 -> [B, E] L2-normalized float32."""
        x = np.ascontiguousarray(pixel_values, np.float32)
        if self._bound is not None:
            return l2_normalize(self._bound[0].run(x))
        return run_normalized(self.image_session, {"pixel_values": x})

    def encode_token_ids(self, input_ids: np.ndarray) -> np.ndarray:
        """[B, L] int64 -> [B, E] L2-normalized float32."""
        ids = np.ascontiguousarray(input_ids, np.int64)
        if self._bound is not None:
            return l2_normalize(self._bound[1].run(ids))
        return run_normalized(self.text_session, {"input_ids": ids})

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None
    ) -> np.ndarray:
        """Texts -> [N, E] normalized features (encode_by_length)."""
        return encode_by_length(self, texts, batch_size, pad_to)


Backend = Literal["onnxruntime", "openvino"]


def open_encoders(
    bundle: Bundle,
    backend: Backend = "onnxruntime",
    precision: str = "fp32",
    device: Device = "auto",
    threads: int | None = None,
    image_precision: ImagePrecision = "fp32",
    gpu: GpuOptions | None = None,
) -> Encoders:
    """A bundle's encoders on the backend asked for: onnxruntime (fp32, fp16 files for a GPU, or
    int8: the int8 image encoder, the same as image_precision int8) or OpenVINO's CPU runtime (fp32
    or bf16: model/bundle/openvino_encoders.py)."""
    if backend == "onnxruntime":
        if precision == "int8":
            precision, image_precision = "fp32", "int8"
        if precision not in ("fp32", "fp16"):
            raise BundleError(
                f"precision {precision} needs the openvino backend; onnxruntime runs fp32, fp16 or int8"
            )
        if precision == "fp16" and image_precision == "int8":
            raise BundleError(
                "precision fp16 runs the fp16 files of both towers: not with image precision int8"
            )
        half: OnnxPrecision = "fp16" if precision == "fp16" else "fp32"
        return OnnxEncoders(bundle, device, threads, image_precision, half, gpu)
    if backend != "openvino":
        raise BundleError(f"backend must be onnxruntime or openvino, not {backend!r}")
    if precision not in ("fp32", "bf16") or image_precision != "fp32" or device not in ("auto", "cpu"):
        raise BundleError(
            "the openvino backend runs both towers on the CPU, in fp32 or bf16 (no int8, fp16 or GPU)"
        )
    from model.bundle.openvino_encoders import OpenVinoEncoders

    return OpenVinoEncoders(bundle, "bf16" if precision == "bf16" else "fp32", threads)


class TokenEncoder(Protocol):
    """What encode_by_length needs: a tokenizer, the feature width and a token-id encoder."""

    @property
    def tokenizer(self) -> TextTokenizer: ...

    @property
    def embed_dim(self) -> int: ...

    def encode_token_ids(self, input_ids: np.ndarray) -> np.ndarray: ...


def encode_by_length(
    enc: TokenEncoder, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None
) -> np.ndarray:
    """Texts -> [N, E] normalized features; each batch padded only to its longest prompt by default.

    Texts are sorted by token length first so that batches hold prompts of similar length.
    """
    if not texts:
        return np.zeros((0, enc.embed_dim), np.float32)
    lengths = enc.tokenizer.token_lengths(texts)
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(texts), enc.embed_dim), np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        ids = enc.tokenizer.encode_batch([texts[i] for i in idx], pad_to=pad_to)
        out[idx] = enc.encode_token_ids(ids)
    return out
