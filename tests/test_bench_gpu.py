"""bench/gpu.py, the prepared GPU check, end to end in its --device cpu mode (the same code path as
on a GPU, with the CPU providers), and its time budget in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402

ORT_ROWS = ["onnxruntime CPU fp32", "onnxruntime CPU fp16", "onnxruntime CPU fp32 (bound)"]


def rows(result: dict[str, Any], tower: str, runtime: str) -> list[dict[str, Any]]:
    return [r for r in result[tower] if r["runtime"] == runtime]


@pytest.mark.slow
def test_the_quick_cpu_run_measures_every_section_and_writes_the_table(tmp_path: Path) -> None:
    out, md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    cmd = [sys.executable, "bench/gpu.py", "--device", "cpu", "--quick", "--budget-s", "240"]
    done = subprocess.run(
        [*cmd, "--out", str(out), "--table", str(md)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    header = result["header"]
    assert header["device"] == "cpu" and header["host_cpus"] >= 1 and header["onnxruntime"]
    assert "CPUExecutionProvider" in header["providers"] and header["torch"]
    for runtime in ORT_ROWS:
        image = rows(result, "image", runtime)
        assert [r["batch"] for r in image] == [1, 8]
        assert all(r["images_per_s"] > 0 and r["finite"] and r["memory_mb"] > 0 for r in image), image
        text = rows(result, "text", runtime)
        assert [r["batch"] for r in text] == [32, 256]
        assert all(r["prompts_per_s"] > 0 and r["tokens"] >= 3 for r in text), text
    for tower in ("image", "text"):  # what cannot run on the CPU says why, and is no error
        for runtime in ("TensorRT fp16 (bound)", "torch.compile fp32"):
            assert all(isinstance(r["skipped"], str) for r in rows(result, tower, runtime))
        assert all(
            r.get("images_per_s", r.get("prompts_per_s", 0)) > 0
            for r in rows(result, tower, "torch eager fp32")
        )
    http = result["http"]
    assert http["requests"] > 0 and http["errors"] == 0 and http["host_cpus"] >= 1, http
    assert http["provider"] == "CPUExecutionProvider" and http["p50_ms"] <= http["p99_ms"]
    (train,) = result["train"]
    assert train["preset"] == "tiny" and train["images_per_s"] > 0, train
    assert result["budget"]["skipped"] == 0 and result["budget"]["elapsed_s"] < 240
    table = md.read_text()
    assert table in done.stdout
    for runtime in [*ORT_ROWS, "torch eager fp32"]:
        assert f"| tiny-vit | {runtime} |" in table
    assert "Text encoder" in table and "End to end over HTTP" in table and "| tiny | cpu | 64 |" in table


def test_a_step_runs_only_if_it_fits_the_budget_with_the_reserve_kept() -> None:
    now = [0.0]
    budget = gpu.Budget(10.0, clock=lambda: now[0])

    def step() -> dict[str, Any]:
        now[0] += 3.0
        return {"ok": True}

    got = [gpu.run_point(budget, 3.0, 1.0, step) for _ in range(5)]  # ends at 4, 7, 10: then no more
    assert got == [{"ok": True}] * 3 + [{"skipped": "budget"}] * 2
    assert budget.skipped == 2


def test_a_step_that_cannot_run_or_fails_is_recorded_and_the_run_goes_on() -> None:
    budget = gpu.Budget(60.0)

    def cannot() -> dict[str, Any]:
        raise gpu.gs.Skip("no such provider")

    def fails() -> dict[str, Any]:
        raise RuntimeError("boom")

    assert gpu.run_point(budget, 1.0, 0.0, cannot) == {"skipped": "no such provider"}
    assert gpu.run_point(budget, 1.0, 0.0, fails) == {"error": "RuntimeError: boom"}


def test_a_run_with_no_budget_skips_every_step_and_still_writes_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = gpu.parse_args(
        ["--device", "cpu", "--quick", "--budget-s", "0", "--out", str(tmp_path / "g.json")]
    )
    result = gpu.run(args)
    steps = [*result["setup"], *result["image"], *result["text"], result["http"], *result["train"]]
    skipped = [s for s in steps if s.get("skipped") != "budget"]
    # what is skipped for another reason (no TensorRT on --device cpu) says so instead
    assert all(s["runtime"] in ("TensorRT fp16 (bound)", "torch.compile fp32") for s in skipped), skipped
    assert result["budget"]["skipped"] > 0
    assert json.loads((tmp_path / "g.json").read_text())["budget"]["budget_s"] == 0
    assert "skipped (every batch): budget" in capsys.readouterr().out
