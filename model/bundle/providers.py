"""onnxruntime execution providers for a device setting, with their options: TensorRT, CUDA, CPU.

`auto` takes the fastest this onnxruntime build offers (TensorRT, else CUDA, else the CPU) and the
choice is logged and shown in GET /v1/models. On a GPU:
- CUDA: a memory limit for its arena (the rest of the card stays free for other processes), how
  the arena grows (powers of two wastes up to half of a large allocation; `same_as_requested` does
  not, at the cost of more allocations), and how cuDNN picks convolution algorithms (exhaustive
  search once per input shape is fastest after the first call of each shape: the warm-up pays it).
- TensorRT: an engine is built per input-shape profile; the profile here spans the batch sizes and
  text lengths the server sends (1..max_batch images, 1..context_length tokens, optimised at the
  largest), built at warm-up so that readiness means ready, cached on disk so a restart or a second
  replica on the same volume loads it in seconds instead of minutes; fp16 inside by default.
Torch-free; which providers exist is asked of onnxruntime, so the choice is testable on a CPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort

from model.bundle.format import BundleError

log = logging.getLogger(__name__)
_preloaded = threading.Lock()
_preload_done = False

CPU_EP, CUDA_EP, TENSORRT_EP = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"

Device = Literal["auto", "tensorrt", "cuda", "cpu"]
ArenaStrategy = Literal["next_power_of_two", "same_as_requested"]
ConvSearch = Literal["exhaustive", "heuristic", "default"]
ProviderList = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class GpuOptions:
    """The GPU settings (app/settings.py: ZEROSHOT_GPU_*, ZEROSHOT_TENSORRT_*)."""

    device_id: int = 0
    mem_limit_mb: int | None = None  # the CUDA arena's cap; None: as much as the card has
    arena_strategy: ArenaStrategy = "next_power_of_two"
    cudnn_conv_algo_search: ConvSearch = "exhaustive"
    tensorrt_cache_dir: Path | None = None  # None: engines are rebuilt on every start
    tensorrt_fp16: bool = True
    max_batch: int = 64  # the largest image batch the TensorRT profile must take


@dataclass(frozen=True)
class InputProfile:
    """The shapes one encoder's input takes: `dims` with -1 where the profile ranges over
    1..max_batch (axis 0) or 1..max_len (axis 1 of a text input)."""

    name: str
    dims: tuple[int, ...]  # e.g. (-1, 3, 224, 224) or (-1, -1)
    max_len: int = 0

    def shapes(self, max_batch: int) -> tuple[str, str, str]:
        """TensorRT's min, opt and max shapes, as its provider options spell them: name:1x3x224x224."""

        def spell(batch: int, length: int) -> str:
            dims = [batch if i == 0 else (length if d == -1 else d) for i, d in enumerate(self.dims)]
            return f"{self.name}:" + "x".join(str(d) for d in dims)

        return spell(1, 1), spell(max_batch, self.max_len), spell(max_batch, self.max_len)


def cuda_options(gpu: GpuOptions) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "device_id": gpu.device_id,
        "arena_extend_strategy": "kNextPowerOfTwo"
        if gpu.arena_strategy == "next_power_of_two"
        else "kSameAsRequested",
        "cudnn_conv_algo_search": gpu.cudnn_conv_algo_search.upper(),
        "do_copy_in_default_stream": True,  # copies ordered with the kernels: no extra syncs
    }
    if gpu.mem_limit_mb is not None:
        opts["gpu_mem_limit"] = gpu.mem_limit_mb * 1024 * 1024
    return opts


def tensorrt_options(gpu: GpuOptions, profile: InputProfile) -> dict[str, Any]:
    lo, opt, hi = profile.shapes(gpu.max_batch)
    opts: dict[str, Any] = {
        "device_id": gpu.device_id,
        "trt_fp16_enable": gpu.tensorrt_fp16,
        "trt_profile_min_shapes": lo,
        "trt_profile_opt_shapes": opt,
        "trt_profile_max_shapes": hi,
    }
    if gpu.tensorrt_cache_dir is not None:
        cache = str(gpu.tensorrt_cache_dir)
        opts.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=cache,
            trt_timing_cache_enable=True,
            trt_timing_cache_path=cache,
        )
    if gpu.mem_limit_mb is not None:
        opts["trt_max_workspace_size"] = gpu.mem_limit_mb * 1024 * 1024
    return opts


def choose_providers(
    device: str,
    profile: InputProfile,
    gpu: GpuOptions | None = None,
    available: Sequence[str] | None = None,
) -> ProviderList:
    """The providers, with options, for one encoder's session, most preferred first (onnxruntime
    falls back along the list for any op a provider cannot run). `available` defaults to what this
    onnxruntime build offers; a device asked for by name that it lacks is a BundleError."""
    gpu = gpu or GpuOptions()
    have = list(ort.get_available_providers() if available is None else available)
    cpu: ProviderList = [(CPU_EP, {})]
    cuda: ProviderList = [(CUDA_EP, cuda_options(gpu))] if CUDA_EP in have else []
    trt: ProviderList = [(TENSORRT_EP, tensorrt_options(gpu, profile))] if TENSORRT_EP in have else []
    if device == "cpu":
        return cpu
    if cuda:
        preload_gpu_libraries()
    wanted = {"tensorrt": (trt, TENSORRT_EP), "cuda": (cuda, CUDA_EP)}.get(device)
    if wanted is not None and not wanted[0]:
        raise BundleError(f"device={device} asked for, but onnxruntime offers only {', '.join(have)}")
    if device == "cuda":
        return cuda + cpu
    if device in ("tensorrt", "auto"):
        return trt + cuda + cpu  # TensorRT falls back to CUDA for ops it cannot take, then the CPU
    raise BundleError(f"device must be auto, tensorrt, cuda or cpu, not {device!r}")


def preload_gpu_libraries() -> None:
    """Load the CUDA and cuDNN libraries of NVIDIA's pip wheels (what `onnxruntime-gpu[cuda,cudnn]`
    installs) before the first CUDA session, so that no system CUDA or LD_LIBRARY_PATH is needed.
    Once per process; where this onnxruntime has no preload_dlls (before 1.21), the system's
    libraries are used as before."""
    global _preload_done
    with _preloaded:
        if _preload_done:
            return
        _preload_done = True
        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            return
        try:
            preload()
        except Exception as e:  # a missing wheel is not fatal: the system's libraries may serve
            log.warning("onnxruntime.preload_dlls() failed (%s); using the system's CUDA libraries", e)
