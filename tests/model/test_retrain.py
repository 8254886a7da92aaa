"""`zeroshot retrain CONFIG`: the publish gate accepts a model that is not worse than the served one,
refuses one that is (the served CURRENT stays), and --force overrides it. CPU, tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from model.bundle.format import current_bundle, read_current, set_current
from model.cli import main
from model.retrain import PUBLISHED, REFUSED
from tests.conftest import DEFAULT_MODEL_DIR, ROOT, make_shape_folder

DEFAULT_CHECKPOINT = ROOT / "runs" / "default" / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A copy of the default bundle served as models/shapes, and an eval folder of 8 classes."""
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists() or not DEFAULT_CHECKPOINT.exists():
        pytest.fail("the default model is missing: run `make setup` first (make test does)")
    tmp = tmp_path_factory.mktemp("retrain")
    src = current_bundle(DEFAULT_MODEL_DIR).path
    shutil.copytree(src, tmp / "models" / "shapes" / src.name)
    set_current(tmp / "models" / "shapes", src.name)
    return {"tmp": tmp, "models": tmp / "models" / "shapes", "val": make_shape_folder(tmp / "val", 5, 8)}


def _config(served: dict[str, Path], name: str, train: dict[str, Any], margin: float = 0.02) -> Path:
    base = {"steps": 3, "batch_size": 16, "warmup_steps": 1, "precision": "fp32", "num_workers": 0}
    base |= {"eval_every": 1000, "tensorboard": False, "out_dir": str(served["tmp"] / "runs" / name)}
    cfg = {
        "model_dir": str(served["models"]),
        "train": base | train,
        "eval": {"folder": str(served["val"]), "templates": "synthetic"},
        "margin": margin,
    }
    path = served["tmp"] / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_a_fine_tune_that_is_not_worse_is_published(
    served: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = read_current(served["models"])
    # two steps at a tiny learning rate: the same model within the margin
    cfg = _config(served, "gentle", {"init_from": str(DEFAULT_CHECKPOINT), "lr": 1e-7, "steps": 2})
    assert main(["retrain", str(cfg)]) == PUBLISHED
    out = capsys.readouterr().out
    after = read_current(served["models"])
    assert after != before and "published" in out and "not worse" in out
    summary = json.loads((served["models"] / after / "eval.json").read_text())["summary"]
    assert summary["dataset"] == "folder" and summary["top1"] >= 0.8  # chance: 1/8
    # the run trained in its own folder, named by the version, so the next retrain cannot overwrite it
    ckpt = Path(current_bundle(served["models"]).manifest["source"]["checkpoint"])
    assert ckpt.parent.parent.name == after and ckpt.is_file()


def test_a_worse_model_is_refused_and_force_publishes_it(
    served: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = read_current(served["models"])
    cfg = _config(served, "scratch", {"preset": "tiny", "lr": 1e-3})  # 3 steps from random weights
    assert main(["retrain", str(cfg)]) == REFUSED
    out = capsys.readouterr().out
    assert "NOT published" in out and "--force" in out
    assert read_current(served["models"]) == before  # the served model stays
    refused = sorted(p.name for p in served["models"].iterdir() if p.is_dir() and p.name != before)
    assert refused, "the refused bundle stays on disk for inspection"
    assert main(["retrain", str(cfg), "--force"]) == PUBLISHED
    assert "forced, although it is worse" in capsys.readouterr().out
    assert read_current(served["models"]) not in (before, *refused)


def test_bad_configs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "missing.json": None,
        "notjson.json": "{",
        "unknown.json": json.dumps({"model_dir": "m", "train": {}, "bogus": 1}),
        "noeval.json": json.dumps({"model_dir": "m", "train": {}, "eval": {}}),
        "margin.json": json.dumps({"model_dir": "m", "train": {}, "margin": 5}),
        "calibration.json": json.dumps({"model_dir": "m", "train": {}, "int8_calibration": "data"}),
    }
    expected = [
        "does not exist",
        "not valid JSON",
        "unknown retrain config keys: bogus",
        "needs",
        "margin",
        '"int8" is not',
    ]
    for (name, text), msg in zip(cases.items(), expected, strict=True):
        if text is not None:
            (tmp_path / name).write_text(text)
        assert main(["retrain", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
