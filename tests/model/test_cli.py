"""The management command as a user runs it: one-line errors, no tracebacks, no stub subcommands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoints import save_checkpoint
from model.clip import build_model
from model.train import TrainConfig, checkpoint_state


def zeroshot(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "model.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )


def assert_one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("zeroshot: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_help_lists_exactly_the_built_subcommands() -> None:
    r = zeroshot("--help")
    assert r.returncode == 0
    assert "{train,export,import,eval,calibrate,retrain,serve}" in r.stdout


def test_unknown_preset(tmp_path: Path) -> None:
    assert_one_line_error(
        zeroshot("train", "--preset", "ViT-Z-99", "--out", str(tmp_path)), "unknown preset 'ViT-Z-99'"
    )


def test_missing_and_corrupt_checkpoints(tmp_path: Path) -> None:
    assert_one_line_error(zeroshot("export", "--checkpoint", str(tmp_path / "nope.pt")), "does not exist")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(2048))
    assert_one_line_error(zeroshot("export", "--checkpoint", str(bad)), "cannot be read")
    assert_one_line_error(
        zeroshot("train", "--resume", str(bad), "--out", str(tmp_path / "r")), "cannot be read"
    )


def test_missing_bundle_and_bad_templates(tmp_path: Path) -> None:
    assert_one_line_error(zeroshot("eval", str(tmp_path / "none")), "does not exist")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "CURRENT").write_text("v9\n")
    assert_one_line_error(zeroshot("eval", str(tmp_path / "m")), "does not exist")
    assert_one_line_error(zeroshot("eval", str(tmp_path / "m"), "--templates", "klingon"), "klingon")


def test_missing_and_invalid_config_files(tmp_path: Path) -> None:
    assert_one_line_error(zeroshot("train", "--config", str(tmp_path / "c.json")), "does not exist")
    (tmp_path / "c.json").write_text("{oops")
    assert_one_line_error(zeroshot("train", "--config", str(tmp_path / "c.json")), "not valid JSON")
    (tmp_path / "c.json").write_text('{"stepz": 3}')
    assert_one_line_error(
        zeroshot("train", "--config", str(tmp_path / "c.json")), "unknown train config keys: stepz"
    )


@pytest.mark.slow
def test_export_then_eval_from_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    cfg = TrainConfig()
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "c.pt", checkpoint_state(model, opt, 0, cfg))
    r = zeroshot(
        "export", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "m"), "--version", "v1"
    )
    assert r.returncode == 0, r.stderr
    assert "published" in r.stdout and (tmp_path / "m" / "CURRENT").read_text().strip() == "v1"
    r = zeroshot(
        "eval", str(tmp_path / "m"), "--heldout-images", "36", "--seen-images", "60", "--templates", "default"
    )
    assert r.returncode == 0, r.stderr
    assert "weakest held-out pair" in r.stdout
    assert (tmp_path / "m" / "v1" / "eval.json").is_file()


def test_export_int8_calibrated_on_a_folder(tmp_path: Path) -> None:
    """--int8-calibration takes images from anywhere under a folder; an unreadable one is skipped
    with a warning, a folder without images is a one-line error; eval --image-precision int8."""
    from PIL import Image

    torch.manual_seed(0)
    model = build_model("tiny")
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "c.pt", checkpoint_state(model, opt, 0, TrainConfig()))
    cal = tmp_path / "cal" / "nested"
    cal.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (80, 60), (40 * i, 200, 90)).save(cal / f"{i}.png")
    (cal / "broken.jpg").write_bytes(b"not a jpeg")
    export = ["export", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "m"), "--int8"]
    r = zeroshot(*export, "--version", "v1", "--int8-calibration", str(tmp_path / "cal"))
    assert r.returncode == 0, r.stderr
    assert "broken.jpg" in r.stderr  # the warning names the skipped file
    manifest = json.loads((tmp_path / "m" / "v1" / "manifest.json").read_text())
    assert manifest["int8"]["method"] == "static" and manifest["int8"]["calibration_images"] == 3
    (tmp_path / "empty").mkdir()
    r = zeroshot(*export, "--version", "v2", "--int8-calibration", str(tmp_path / "empty"))
    assert_one_line_error(r, "holds no readable image")
    no_int8 = [a for a in export if a != "--int8"]
    r = zeroshot(*no_int8, "--version", "v2", "--int8-calibration", str(tmp_path / "cal"))
    assert_one_line_error(r, "add --int8")
    assert not (tmp_path / "m" / "v2").exists()
    # eval of either encoder; the int8 figures are kept beside the fp32 ones
    small = ["--heldout-images", "36", "--seen-images", "36", "--templates", "default"]
    assert zeroshot("eval", str(tmp_path / "m"), *small).returncode == 0
    r = zeroshot("eval", str(tmp_path / "m"), *small, "--image-precision", "int8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("image encoder: int8\n")
    report = json.loads((tmp_path / "m" / "v1" / "eval.json").read_text())
    assert report["summary"]["image_precision"] == "int8" and list(report["other_reports"]) == ["synthetic"]
    assert zeroshot(*no_int8, "--version", "v3").returncode == 0
    r = zeroshot("eval", str(tmp_path / "m"), *small, "--image-precision", "int8")
    assert_one_line_error(r, "--int8")


@pytest.mark.slow
def test_resume_keeps_the_runs_own_settings(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = zeroshot("train", "--steps", "3", "--batch-size", "8", "--num-workers", "0", "--out", str(run))
    assert r.returncode == 0, r.stderr
    r = zeroshot("train", "--resume", str(run / "checkpoints" / "last.pt"), "--steps", "5")
    assert r.returncode == 0, r.stderr
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5]  # same folder, continued
    assert json.loads((run / "train_config.json").read_text())["batch_size"] == 8


def test_serve_without_a_model_is_a_one_line_error_and_reads_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "ZEROSHOT_MODELS_DIR": str(tmp_path / "env-models"), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(
        [sys.executable, "-m", "model.cli", "serve"], capture_output=True, text=True, timeout=120, env=env
    )
    assert_one_line_error(r, f"{tmp_path / 'env-models' / 'default' / 'CURRENT'} is missing")
    assert_one_line_error(
        zeroshot("serve", "--models", str(tmp_path), "--model", "m"), "m/CURRENT is missing"
    )
    # several models: each must have a CURRENT; a list that names one twice is refused
    assert_one_line_error(
        zeroshot("serve", "--models", str(tmp_path), "--model", "x,y"), "x/CURRENT is missing"
    )
    assert_one_line_error(
        zeroshot("serve", "--model", "x,x"), "invalid settings: models: a name is given twice"
    )


def test_export_fp16_and_eval_it(tmp_path: Path) -> None:
    """`export --fp16` writes and gates the fp16 files; `eval --precision fp16` runs them and keeps
    its figures beside fp32's; a bundle without them is a one-line error."""
    torch.manual_seed(0)
    opt_model = build_model("tiny")
    opt = torch.optim.AdamW(opt_model.parameters())
    save_checkpoint(tmp_path / "c.pt", checkpoint_state(opt_model, opt, 0, TrainConfig()))
    export = ["export", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "m")]
    r = zeroshot(*export, "--version", "v1", "--fp16")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "m" / "v1" / "manifest.json").read_text())
    assert manifest["fp16"]["image_cosine_min"] >= 0.999 and "text_encoder.fp16.onnx" in manifest["files"]
    small = ["--heldout-images", "36", "--seen-images", "36", "--templates", "default"]
    r = zeroshot("eval", str(tmp_path / "m"), *small, "--precision", "fp16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("image encoder: fp16\n")
    report = json.loads((tmp_path / "m" / "v1" / "eval.json").read_text())
    assert report["summary"]["image_precision"] == "fp16"
    assert zeroshot(*export, "--version", "v2").returncode == 0
    r = zeroshot("eval", str(tmp_path / "m"), *small, "--precision", "fp16")
    assert_one_line_error(r, "--fp16")
