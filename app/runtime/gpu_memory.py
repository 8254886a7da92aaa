"""GPU memory in use and free, per GPU, read through NVIDIA's NVML for /metrics.

NVML comes from the optional `pynvml` module (package nvidia-ml-py). Without it, or without an NVIDIA
GPU and driver, there is nothing to read: `read()` returns no GPUs, says why once at debug level and
never tries again (a CPU server would otherwise log it at every scrape). It never raises: a metric
scrape must not fail because a GPU went away. Torch-free; NVML sees every process's allocations,
so `used` includes other processes sharing the GPU - which is what decides whether a batch fits.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    gpu: str  # NVML's device index, as a label
    used_bytes: int
    free_bytes: int


class GpuMemory:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # scrapes may run concurrently; nvmlInit once
        self._nvml: Any = None
        self._tried = False  # NVML was looked for (found or not): never again
        self._read_failed = False  # a read failed: logged once, later reads stay quiet

    def _load(self) -> Any:
        """The initialised pynvml module, or None (said once at debug level)."""
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    nvml = importlib.import_module("pynvml")
                    nvml.nvmlInit()
                    self._nvml = nvml
                except Exception as e:  # ImportError, or NVMLError: no driver, no GPU
                    log.debug("no GPU memory metrics: NVML is not available (%s)", e)
            return self._nvml

    def read(self) -> list[GpuReading]:
        """Used and free memory of every GPU NVML sees; [] without NVML or when reading fails."""
        nvml = self._load()
        if nvml is None:
            return []
        try:
            readings = []
            for i in range(nvml.nvmlDeviceGetCount()):
                info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i))
                readings.append(GpuReading(str(i), int(info.used), int(info.free)))
            return readings
        except Exception as e:  # NVMLError (GPU lost, driver reloaded...): absent, not an error
            if not self._read_failed:
                self._read_failed = True
                log.debug("GPU memory could not be read through NVML: %s", e)
            return []
