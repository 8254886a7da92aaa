"""bench/scaling.py --quick trains, exports and times every point, writes its JSON, table and figure,
and a second run resumes: it retrains nothing already finished. No accuracy figure is checked."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
FIELDS = (
    "params",
    "params_non_embedding",
    "train_flops_per_image",
    "train_flops",
    "steps",
    "images",
    "train_s",
    "wall_s",
    "heldout_top1",
    "seen_top1",
    "images_per_s",
    "prompts_per_s",
    "finished_at",
)


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scaling", ROOT / "bench" / "scaling.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _quick(out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "bench/scaling.py", "--quick", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_quick_scaling_bench_writes_every_point_and_resumes_without_retraining(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    _quick(out)
    points = json.loads(out.read_text())["points"]
    budgets = ("same-data", "compute-matched")
    assert [p["name"] for p in points] == [f"{s}-{b}" for s in ("nano", "tiny") for b in budgets]
    for p in points:
        missing = [k for k in FIELDS if k not in p]
        assert not missing, (p["name"], missing)
        assert p["images"] == p["steps"] * p["batch"] and p["train_flops"] > 0 and p["images_per_s"] > 0
    assert points[3]["same_run_as"] == "tiny-same-data"  # the reference is one run at both budgets
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| nano | compute-matched |" in out.with_suffix(".md").read_text()

    again = _quick(out)
    assert "4 points, 4 already done" in again.stdout
    resumed = json.loads(out.read_text())["points"]
    assert [p["finished_at"] for p in resumed] == [p["finished_at"] for p in points]
    assert [p["wall_s"] for p in resumed] == [p["wall_s"] for p in points]


def test_the_compute_matched_budget_gives_every_preset_the_reference_flops() -> None:
    bench = _bench()
    args = bench.parse(["--presets", "nano,tiny,medium", "--steps", "30", "--batch", "64"])
    points = {p["name"]: p for p in bench.plan(args)}
    reference = points["tiny-same-data"]["train_flops"]
    assert {p["steps"] for n, p in points.items() if n.endswith("same-data")} == {30}
    for preset in ("nano", "tiny", "medium"):
        matched = points[f"{preset}-compute-matched"]
        step_flops = matched["train_flops_per_image"] * matched["batch"]
        assert abs(matched["train_flops"] - reference) <= step_flops / 2, preset
    assert points["nano-compute-matched"]["steps"] > 30 > points["medium-compute-matched"]["steps"]
    assert bench.run_key(points["tiny-same-data"]) == bench.run_key(points["tiny-compute-matched"])
