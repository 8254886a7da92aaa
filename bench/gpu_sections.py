"""bench/gpu.py's sections 1 and 2: the runtimes an encoder is timed in, the timing loop, memory.
Every runtime takes a float32 (or int64) numpy batch and gives the float32 features back as numpy,
so each pays the same host-device copies: onnxruntime through BoundRunner on a GPU, torch through
.to(device) and .cpu()."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
Runner = Callable[[np.ndarray], np.ndarray]


class Skip(Exception):
    """What cannot run here (a missing provider, package or device); the message is the reason."""


@dataclass(frozen=True)
class Runtime:
    kind: str  # onnxruntime, tensorrt, torch, torch.compile
    precision: str  # fp32, fp16
    device: str  # cpu, cuda (tensorrt: the onnxruntime device name "tensorrt")
    bound: bool = False  # onnxruntime through model/bundle/io_binding.py's BoundRunner

    @property
    def label(self) -> str:
        if self.kind == "onnxruntime":
            return f"onnxruntime {self.device.upper()} {self.precision}" + (" (bound)" if self.bound else "")
        if self.kind == "tensorrt":
            return f"TensorRT {self.precision} (bound)"
        return f"torch {'eager' if self.kind == 'torch' else 'compile'} {self.precision}".replace(
            "torch compile", "torch.compile"
        )


def skip_reason(rt: Runtime, device: str, cpu_compile: bool) -> str | None:
    """Why a runtime is not tried on this run's device, if it is not."""
    if rt.kind == "tensorrt":
        return "--device cpu" if device == "cpu" else tensorrt_missing()
    if rt.kind == "torch.compile" and device == "cpu" and not cpu_compile:
        return "CPU: 15-30 s of C++ builds a shape (--cpu-compile)"
    return None


def tensorrt_missing() -> str | None:
    """Why onnxruntime's TensorRT provider cannot load (its libnvinfer.so.10), if it cannot."""
    import ctypes

    spec = find_spec("tensorrt_libs")  # NVIDIA's pip wheels keep the libraries there
    places = ["", *(f"{d}/" for d in (spec.submodule_search_locations or []))] if spec else [""]
    for place in places:
        try:
            ctypes.CDLL(f"{place}libnvinfer.so.10")
            return None
        except OSError:
            continue
    return "no TensorRT here (libnvinfer.so.10 does not load)"


def runtimes(device: str) -> list[Runtime]:
    """What each encoder is timed in, in the order of their worth when the budget runs short."""
    if device == "cpu":
        return [
            Runtime("onnxruntime", "fp32", "cpu"),
            Runtime("onnxruntime", "fp16", "cpu"),
            Runtime("onnxruntime", "fp32", "cpu", bound=True),
            Runtime("torch", "fp32", "cpu"),
            Runtime("torch.compile", "fp32", "cpu"),
            Runtime("tensorrt", "fp16", "tensorrt", bound=True),
        ]
    return [
        Runtime("onnxruntime", "fp32", "cuda", bound=True),
        Runtime("onnxruntime", "fp16", "cuda", bound=True),
        Runtime("torch", "fp16", "cuda"),
        Runtime("torch.compile", "fp16", "cuda"),
        Runtime("tensorrt", "fp16", "tensorrt", bound=True),
    ]


@dataclass
class Prepared:
    """One model, exported: its torch module (random weights) and its bundle with fp16 files."""

    preset: str
    model: Any  # model.clip.CLIP
    bundle: Path
    setup: dict[str, float] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision.image_size)


def prepare(preset: str, models_dir: Path) -> Prepared:
    """build_model(preset) with seed 0, exported as a published bundle models_dir/<preset lower>
    (the fp32 parity gate runs on 2 images), then both encoders converted to fp16 beside it."""
    import torch

    from model.bundle.tokenizer import ClipTokenizer
    from model.clip import build_model
    from model.export import export_bundle, sample_inputs
    from model.fp16 import convert_to_fp16

    torch.manual_seed(0)
    model = build_model(preset).eval()
    images, texts = sample_inputs(model.config.vision.image_size, 2)
    t = time.perf_counter()
    bundle = export_bundle(model, ClipTokenizer.clip_bpe(), models_dir / preset.lower(), images, texts[:16])
    setup = {"export_s": time.perf_counter() - t}
    t = time.perf_counter()
    for tower in ("image", "text"):
        convert_to_fp16(bundle.path / f"{tower}_encoder.onnx", bundle.path / f"{tower}_encoder.fp16.onnx")
    setup["fp16_convert_s"] = time.perf_counter() - t
    return Prepared(preset, model, bundle.path, setup)


def open_ort(rt: Runtime, prep: Prepared, tower: str, max_batch: int, tmp: Path) -> Runner:
    """An onnxruntime session of the bundle's file for this precision, on the runtime's provider."""
    from model.bundle.encoders import open_session
    from model.bundle.format import BundleError
    from model.bundle.io_binding import BoundRunner
    from model.bundle.providers import (
        CPU_EP,
        CUDA_EP,
        TENSORRT_EP,
        GpuOptions,
        InputProfile,
        choose_providers,
    )

    s = prep.image_size
    profile = (
        InputProfile("pixel_values", (-1, 3, s, s))
        if tower == "image"
        else InputProfile("input_ids", (-1, -1), 77)
    )
    gpu = GpuOptions(max_batch=max_batch, tensorrt_cache_dir=tmp / "trt", tensorrt_fp16=True)
    try:
        providers = choose_providers(rt.device, profile, gpu)
    except BundleError as e:
        raise Skip(str(e)) from None
    half = rt.precision == "fp16" and rt.kind == "onnxruntime"  # TensorRT makes fp16 of the fp32 file
    path = prep.bundle / f"{tower}_encoder{'.fp16' if half else ''}.onnx"
    try:
        session = open_session(path, None, providers)
    except BundleError as e:
        if rt.kind == "tensorrt":
            raise Skip(f"TensorRT did not load: {e}") from None
        raise
    want = {"cpu": CPU_EP, "cuda": CUDA_EP, "tensorrt": TENSORRT_EP}[rt.device]
    if session.get_providers()[0] != want:
        raise Skip(f"{want} did not load (onnxruntime fell back to {session.get_providers()[0]})")
    if rt.bound:
        return BoundRunner(session, "cpu" if rt.device == "cpu" else "cuda", 0).run
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: x})[0])


def open_torch(rt: Runtime, prep: Prepared, tower: str) -> Runner:
    """The torch module on the runtime's device and dtype (in place: the torch rows come last),
    eager under inference_mode or torch.compile'd (inductor)."""
    import torch

    if rt.device == "cuda" and not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    dtype = torch.float16 if rt.precision == "fp16" else torch.float32
    model = prep.model.to(rt.device, dtype).eval()
    fn = model.encode_image if tower == "image" else model.encode_text
    if rt.kind == "torch.compile":
        fn = torch.compile(fn)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(rt.device)
            out = fn(t.to(dtype) if t.is_floating_point() else t)
            return np.asarray(out.float().cpu().numpy())

    return run


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


class Memory:
    """Memory per point: torch's peak allocation for torch rows on a GPU; for onnxruntime rows the
    device's used memory over what was used before the session opened (NVML where pynvml imports,
    else torch.cuda.mem_get_info); on the CPU, the process's resident set."""

    def __init__(self, device: str) -> None:
        self.device, self.nvml = device, None
        if device == "cuda" and not cuda_available():
            self.device = "none"  # every GPU row skips itself; nothing to measure
        if self.device == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml.nvmlDeviceGetHandleByIndex(0)
            except Exception:  # no pynvml, or no NVML library: mem_get_info below
                self.nvml = None

    def used_mb(self) -> float:
        if self.device == "none":
            return 0.0
        if self.device == "cpu":
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
            return 0.0
        if self.nvml is not None:
            import pynvml

            return float(pynvml.nvmlDeviceGetMemoryInfo(self.nvml).used) / 2**20
        import torch

        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20

    def kind(self, rt: Runtime) -> str:
        if self.device == "none":
            return "none (no CUDA device)"
        if self.device == "cpu":
            return "process RSS"
        if rt.kind.startswith("torch"):
            return "torch peak allocated"
        return "device used (NVML)" if self.nvml is not None else "device used (mem_get_info)"

    def reset(self, rt: Runtime) -> float:
        """Before a point (torch: the peak counter) or a session (the baseline): what to subtract."""
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            if rt.kind.startswith("torch"):
                torch.cuda.reset_peak_memory_stats()
                return 0.0
            return self.used_mb()
        return 0.0

    def after(self, rt: Runtime, baseline: float) -> float:
        if self.device == "cuda" and rt.kind.startswith("torch"):
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        return self.used_mb() - baseline


def time_calls(run: Runner, x: np.ndarray, seconds: float, warmup: int = 2) -> dict[str, Any]:
    """Items/s over `seconds` of back-to-back calls (at least 3) after `warmup` calls; the first
    call's time (an engine build, a compilation, cuDNN's search) is reported on its own."""
    t = time.perf_counter()
    out = run(x)
    first = time.perf_counter() - t
    for _ in range(warmup - 1):
        run(x)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    n = len(x)
    return {
        "items_per_s": n * len(times) / sum(times),
        "ms_per_call": 1000 * statistics.median(times),
        "calls": len(times),
        "first_call_s": first,
        "finite": bool(np.isfinite(out).all()),
        "out_shape": list(out.shape),
    }


def label_prompts(n: int = 300) -> list[str]:
    """Prompts of real-looking labels: `n` whole words of CLIP's BPE vocabulary (alphabetic, 4-10
    letters, in merge order from the 2,000th entry), each in one of the 80 ImageNet templates."""
    from model.bundle.prompts import get_templates
    from model.bundle.tokenizer import ClipTokenizer

    vocab = ClipTokenizer.clip_bpe().vocab()
    words = [
        w[:-4] for w, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i >= 2000 and w.endswith("</w>")
    ]
    words = [w for w in words if w.isascii() and w.isalpha() and 4 <= len(w) <= 10][:n]
    templates = get_templates("imagenet80")
    return [templates[i % len(templates)].format(w) for i, w in enumerate(words)]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(device: str) -> dict[str, Any]:
    """Section 5: what the figures were measured on."""
    h: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "device": device}
    h |= {"host_cpu": cpu_name(), "host_cpus": os.cpu_count(), "python": platform.python_version()}
    h["device_name"] = f"{h['host_cpu']}, {h['host_cpus']} cores"
    try:
        import onnxruntime as ort

        h |= {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    except ImportError as e:
        h["onnxruntime"] = f"not importable: {e}"
    try:
        import torch

        h |= {"torch": torch.__version__, "cuda": torch.version.cuda}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            h |= {"device_name": torch.cuda.get_device_name(0), "cudnn": torch.backends.cudnn.version()}
            h["gpu_memory_mb"] = props.total_memory / 2**20
    except ImportError as e:
        h["torch"] = f"not importable: {e}"
    try:
        import pynvml

        pynvml.nvmlInit()
        h["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # no pynvml or no NVML library (the CPU)
        pass
    return h
