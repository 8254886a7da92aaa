"""GPU memory through NVML (pynvml), with a fake pynvml module: the gauges per GPU in /metrics, and
nothing at all - no error, one debug line - where pynvml is missing, NVML cannot start or a read fails."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.runtime.gpu_memory import GpuMemory, GpuReading
from tests.fakes import fake_app

GIB = 1 << 30


class NVMLError(Exception):
    pass


class FakeNvml:
    """pynvml's calls that GpuMemory makes, over two GPUs; `broken` makes every memory read fail."""

    def __init__(self, init_fails: bool = False) -> None:
        self.init_fails, self.broken, self.inits = init_fails, False, 0
        self.memory = [(3 * GIB, 137 * GIB), (GIB // 2, 79 * GIB)]  # (used, free) per GPU

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_fails:
            raise NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.memory)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        if self.broken:
            raise NVMLError("GPU is lost")
        used, free = self.memory[handle]
        return SimpleNamespace(used=used, free=free, total=used + free)


def test_the_memory_of_every_gpu_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    gpu = GpuMemory()
    assert gpu.read() == [GpuReading("0", 3 * GIB, 137 * GIB), GpuReading("1", GIB // 2, 79 * GIB)]
    nvml.memory[0] = (5 * GIB, 135 * GIB)
    assert gpu.read()[0] == GpuReading("0", 5 * GIB, 135 * GIB)  # read afresh at every scrape
    assert nvml.inits == 1  # NVML started once


def test_without_pynvml_nothing_is_read_and_it_is_said_once_at_debug(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    gpu = GpuMemory()
    with caplog.at_level(logging.DEBUG, logger="app.runtime.gpu_memory"):
        assert gpu.read() == [] and gpu.read() == []
    said = [r for r in caplog.records if r.name == "app.runtime.gpu_memory"]
    assert len(said) == 1 and said[0].levelno == logging.DEBUG and "NVML" in said[0].getMessage()


def test_no_driver_or_a_lost_gpu_reads_as_no_gpu_without_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_fails=True))
    assert GpuMemory().read() == []
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    gpu = GpuMemory()
    assert len(gpu.read()) == 2
    nvml.broken = True
    assert gpu.read() == []
    nvml.broken = False
    assert len(gpu.read()) == 2  # back once NVML answers again


def test_the_metrics_carry_gpu_memory_per_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    with TestClient(fake_app(tmp_path)) as c:
        text = c.get("/metrics").text
    # parsed, not matched as text: the exposition writes large values as 3.221225472e+09
    got = {
        (s.name, s.labels["gpu"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("zeroshot_gpu_memory")
    }
    assert got == {
        ("zeroshot_gpu_memory_used_bytes", "0"): 3 * GIB,
        ("zeroshot_gpu_memory_used_bytes", "1"): GIB // 2,
        ("zeroshot_gpu_memory_free_bytes", "0"): 137 * GIB,
        ("zeroshot_gpu_memory_free_bytes", "1"): 79 * GIB,
    }


def test_the_metrics_have_no_gpu_memory_without_pynvml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with TestClient(fake_app(tmp_path)) as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and "zeroshot_queue_depth" in r.text
    assert "zeroshot_gpu_memory" not in r.text
