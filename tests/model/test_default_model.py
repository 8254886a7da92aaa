"""The embedded default model, produced by `make setup`, measured through its ONNX bundle."""

from __future__ import annotations

import pytest

from model.bundle.format import current_bundle
from model.evaluate import evaluate_synthetic
from tests.conftest import DEFAULT_MODEL_DIR


@pytest.fixture(scope="module")
def report() -> dict:
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} has no CURRENT: run `make setup` first (make test does)")
    return evaluate_synthetic(current_bundle(DEFAULT_MODEL_DIR), write=False)


def test_held_out_pairs_are_recognised_zero_shot(report: dict) -> None:
    s = report["summary"]
    print(
        f"held-out top-1 {s['heldout_top1']:.3f}, "
        f"weakest {s['weakest_heldout_class']} {s['weakest_heldout_top1']:.3f}"
    )
    assert s["heldout_top1"] >= 0.90


def test_seen_pairs(report: dict) -> None:
    assert report["summary"]["seen_top1"] >= 0.98


def test_every_held_out_pair_is_evaluated(report: dict) -> None:
    per_class = report["results"]["synthetic"]["heldout"]["per_class_top1"]
    assert sorted(per_class) == report["held_out_classes"] and len(per_class) == 6
