"""OpenVINO encoders over a model bundle: the bundle's own ONNX files, compiled by OpenVINO's CPU
runtime, in fp32 or in bf16 on a CPU that computes bf16 natively (AVX512_BF16 or AMX).

onnxruntime's CPU provider runs fp32 only; OpenVINO runs the same graphs in bf16 at about twice
the speed here, with features within 1e-3 of fp32 (bench/README.md). bf16 is refused on a CPU
without native bf16 instead of being emulated slowly. The interface is `Encoders`
(model/bundle/encoders.py), so the server, `zeroshot eval` and the zero-shot maths run unchanged.
Torch-free; `openvino` is an optional dependency (the `openvino` extra), imported only here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from model.bundle.encoders import available_cpus, encode_by_length, l2_normalize
from model.bundle.format import IMAGE_ENCODER, TEXT_ENCODER, TOKENIZER, Bundle, BundleError
from model.bundle.preprocess import PreprocessConfig
from model.bundle.tokenizer import open_tokenizer

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
HINTS = {"fp32": "f32", "bf16": "bf16"}  # OpenVINO's names for INFERENCE_PRECISION_HINT


def _core() -> Any:
    try:
        import openvino
    except ImportError:
        raise BundleError(
            "the openvino backend needs the openvino package: pip install -e '.[openvino]'"
        ) from None
    return openvino.Core()


def native_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 in hardware on this CPU."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoEncoders:
    """Both towers of one bundle compiled for OpenVINO's CPU plugin; thread-safe (an infer request
    per call: the batcher, the text lane and warm-up may call from different threads)."""

    backend = "openvino"

    def __init__(self, bundle: Bundle, precision: Precision = "bf16", threads: int | None = None) -> None:
        if precision not in HINTS:
            raise BundleError(f"openvino precision must be fp32 or bf16, not {precision!r}")
        core = _core()
        if precision == "bf16" and not native_bf16(core):
            name = core.get_property("CPU", "FULL_DEVICE_NAME")
            raise BundleError(
                f"bf16 asked for, but this CPU ({name}) has no native bf16 (AVX512_BF16 or AMX) and "
                "emulating it is slower than fp32: serve with ZEROSHOT_PRECISION=fp32"
            )
        self.bundle, self.precision = bundle, precision
        self.image_precision = precision
        self.provider = f"OpenVINO CPU ({precision})"
        config = {
            "INFERENCE_PRECISION_HINT": HINTS[precision],
            "INFERENCE_NUM_THREADS": threads or available_cpus(),
            "PERFORMANCE_HINT": "LATENCY",  # one stream: the batcher already batches
        }
        self.image_model = self._compile(core, IMAGE_ENCODER, config, "pixel_values", "image_features")
        self.text_model = self._compile(core, TEXT_ENCODER, config, "input_ids", "text_features")
        self.tokenizer = open_tokenizer(
            bundle.file(TOKENIZER), bundle.manifest["tokenizer"], int(bundle.architecture["context_length"])
        )
        self.preprocess = PreprocessConfig.from_dict(bundle.manifest["preprocessing"])
        self.embed_dim = int(bundle.architecture["embed_dim"])
        log.info("loaded %s/%s on OpenVINO CPU in %s", bundle.name, bundle.version, precision)

    def _compile(self, core: Any, name: str, config: dict[str, Any], inp: str, out: str) -> Any:
        """One encoder compiled; a file OpenVINO cannot read, or of another signature, is a BundleError."""
        path = self.bundle.file(name)
        try:
            model = core.read_model(str(path))
        except Exception as e:  # OpenVINO raises its own untyped errors for a bad file
            raise BundleError(f"{path} cannot be read by OpenVINO: {e}") from None
        ins = [sorted(p.get_names()) for p in model.inputs]
        outs = [sorted(p.get_names()) for p in model.outputs]
        if len(ins) != 1 or inp not in ins[0] or len(outs) != 1 or out not in outs[0]:
            raise BundleError(f"{path}: expected input {inp!r} and output {out!r}, found {ins} -> {outs}")
        return core.compile_model(model, "CPU", config)

    @staticmethod
    def _run(compiled: Any, x: np.ndarray) -> np.ndarray:
        request = compiled.create_infer_request()
        request.infer({0: x})
        return l2_normalize(np.array(request.get_output_tensor(0).data, np.float32))

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, 3, S, S] float32 -> [B, E] L2-normalized float32."""
        return self._run(self.image_model, np.ascontiguousarray(pixel_values, np.float32))

    def encode_token_ids(self, input_ids: np.ndarray) -> np.ndarray:
        """[B, L] int64 -> [B, E] L2-normalized float32."""
        return self._run(self.text_model, np.ascontiguousarray(input_ids, np.int64))

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None
    ) -> np.ndarray:
        return encode_by_length(self, texts, batch_size, pad_to)
