"""The independent renderer (model/data/probe_shapes.py) and `zeroshot eval --robustness`."""

from __future__ import annotations

import colorsys
import subprocess
import sys

import numpy as np
import pytest

from model.data.probe_shapes import SHADES, ProbeShapes
from model.data.synthetic import all_classes
from tests.conftest import DEFAULT_MODEL_DIR


def test_probe_samples_are_deterministic_and_class_balanced() -> None:
    a, b = ProbeShapes(64, seed=5, length=72), ProbeShapes(64, seed=5, length=72)
    for i in range(72):
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image)), i
    assert [(a[i].colour, a[i].shape) for i in range(36)] == all_classes()
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(a[36].image))
    assert a[3].image.size == (64, 64) and a[3].image.mode == "RGB"


def test_a_probe_shape_is_drawn_in_its_named_colour() -> None:
    probe = ProbeShapes(64, seed=9, length=36 * 6)
    for i in range(len(probe)):
        s = probe[i]
        if s.style.blur or s.style.noise or s.style.jpeg_quality:
            continue
        px = np.asarray(s.image).reshape(-1, 3) / 255.0
        sat = px.max(axis=1) - px.min(axis=1)
        r, g, b = px[sat.argmax()]  # the most saturated pixel: the object's, never the background's
        hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360
        (lo, hi), _, _ = SHADES[s.colour]
        assert lo - 8 <= (hue if hue <= 300 or lo >= 0 else hue - 360) <= hi + 8, (i, s.colour, hue)


def test_eval_robustness_reports_both_renderers() -> None:
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} has no CURRENT: run `make setup` first (make test does)")
    cmd = [
        sys.executable,
        "-m",
        "model.cli",
        "eval",
        str(DEFAULT_MODEL_DIR),
        "--robustness",
        "--per-class",
        "3",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training generator" in r.stdout and "independent renderer" in r.stdout and "gap" in r.stdout
