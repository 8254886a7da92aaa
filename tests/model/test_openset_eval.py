"""The far out-of-set images and `zeroshot eval --open-set` on the default model."""

from __future__ import annotations

import colorsys
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.data.out_of_set import UNUSED_COLOURS, FarOutOfSet
from model.data.synthetic import COLOUR_RGB
from tests.conftest import DEFAULT_MODEL_DIR


def test_far_images_are_deterministic_and_cycle_through_their_kinds() -> None:
    a, b = FarOutOfSet(64, seed=3, length=30), FarOutOfSet(64, seed=3, length=30)
    assert all(np.array_equal(np.asarray(a[i]), np.asarray(b[i])) for i in range(30))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[3]))
    assert [a.kind(i) for i in range(6)] == ["empty", "scribbles", "unused colour"] * 2
    assert a[5].size == (64, 64) and a[5].mode == "RGB"
    with pytest.raises(IndexError):
        a[30]


def test_an_unused_colour_is_none_of_the_six() -> None:
    hues = {n: colorsys.rgb_to_hsv(*(c / 255 for c in rgb)) for n, rgb in COLOUR_RGB.items()}
    for name, rgb in UNUSED_COLOURS.items():
        h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
        for other, (h2, s2, v2) in hues.items():
            hue_gap = min(abs(h - h2), 1 - abs(h - h2))
            # another hue, or far less saturated, or far darker: never one of the training colours
            assert hue_gap > 0.04 or abs(s - s2) > 0.3 or abs(v - v2) > 0.3, (name, other)
    empty = np.asarray(FarOutOfSet(64, seed=1, length=3)[0]).astype(int)
    assert (empty.max(axis=2) - empty.min(axis=2)).max() <= 20  # a background has no object colour


def test_eval_open_set_reports_every_score_on_both_tests(tmp_path: Path) -> None:
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} has no CURRENT: run `make setup` first (make test does)")
    cmd = [sys.executable, "-m", "model.cli", "eval", str(DEFAULT_MODEL_DIR), "--open-set"]
    cmd += ["--per-class", "3", "--out-of-set-images", "108", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "calibrated" in r.stdout and "expected calibration error" in r.stdout
    report = json.loads((tmp_path / "openset.json").read_text())
    for case in ("far", "near"):
        for score in ("mcm", "cosine", "neglabel"):
            v = report[case]["scores"][score]
            assert 0 <= v["auroc"] <= 1 and 0 <= v["fpr_at_95tpr"] <= 1
        assert report[case]["calibrated"]["score"] in ("mcm", "cosine", "neglabel")
    assert report["far"]["calibrated"]["auroc"] >= 0.9  # the full-size figure is in the README
    cal = report["calibration"]
    assert cal["ece_after"] <= 0.05
    assert 0 <= report["multilabel"]["uncalibrated"]["best_f1"] <= 1
    assert (tmp_path / "coverage.png").stat().st_size > 1000


def test_eval_open_set_of_a_sigmoid_bundle_reports_its_own_sigmoid(
    siglip_models: Path, tmp_path: Path
) -> None:
    """A SigLIP bundle's multi answers are its sigmoid (the server's); the eval reports that one too."""
    cmd = [sys.executable, "-m", "model.cli", "eval", str(siglip_models / "siglip"), "--open-set"]
    cmd += ["--per-class", "2", "--out-of-set-images", "36", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "multi model_sigmoid" in r.stdout
    m = json.loads((tmp_path / "openset.json").read_text())["multilabel"]
    assert set(m) >= {"uncalibrated", "calibrated", "model_sigmoid"}
    assert 0 <= m["model_sigmoid"]["mAP"] <= 1 and 0 <= m["model_sigmoid"]["best_f1"] <= 1
