"""Bad input to `zeroshot` (issue 16): a config value or flag of the wrong type or out of range is one
line naming the field and a non-zero exit, never a traceback, and nothing is trained, written or
served. The command runs in this process (main(argv)); argparse's usage errors are SystemExit(2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import model.cli as cli
from model.cli import main
from model.train_config import TrainConfig, TrainError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative defaults (runs/default, models/default) land in tmp_path if anything slips through."""
    monkeypatch.chdir(tmp_path)


def one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith("zeroshot: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], flag: str) -> str:
    """argparse's usage (one or more lines) and one error line naming the flag, exit status 2."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    usage, last = err.rstrip("\n").splitlines()[:-1], err.rstrip("\n").splitlines()[-1]
    assert usage and usage[0].startswith(f"usage: zeroshot {argv[0]}"), err
    assert all(ln.startswith(" ") for ln in usage[1:]), err  # the usage's continuation lines only
    assert last.startswith(f"zeroshot {argv[0]}: error: argument {flag}: must be "), last
    assert "Traceback" not in err
    return last


def write(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value))
    return path


def nothing_written(*paths: Path) -> None:
    for p in paths:
        assert not p.exists(), f"{p} was written"
    assert not Path("runs").exists() and not Path("models").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"steps": "ten"}, "steps must be an integer >= 1, not 'ten'"),
        ({"steps": -5}, "steps must be an integer >= 1, not -5"),
        ({"steps": True}, "steps must be an integer >= 1, not True"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
        ({"lr": "fast"}, "lr must be a number > 0, not 'fast'"),
        ({"lr": 0}, "lr must be a number > 0"),
        ({"betas": [0.9]}, "betas must be a list of 2 numbers in [0, 1)"),
        ({"betas": 0.9}, "betas must be a list of 2 numbers"),
        ({"precision": "fp16"}, "precision must be one of 'fp32', 'bf16'"),
        ({"tensorboard": "yes"}, "tensorboard must be true or false"),
        ({"data_options": ["a"]}, "data_options must be an object"),
        ({"max_minutes": 0}, "max_minutes must be a number > 0 or null"),
        ({"image_size": 8}, "image_size must be an integer >= 16 or null"),
        ({"keep_checkpoints": -1}, "keep_checkpoints must be an integer >= 0"),
        ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1"),
        ({"out_dir": 7}, "out_dir must be a string"),
        ({"device": "bogus"}, "device must be a string naming a device"),
        ([{"steps": 3}], "the train config must be a JSON object, not list"),
    ],
)
def test_train_config_file_values_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: Any, message: str
) -> None:
    path = write(tmp_path / "runs.json", config)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 1
    one_line_error(capsys, f"config {path}: {message}")
    nothing_written(tmp_path / "run")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--steps", "-5"),
        ("--steps", "0"),
        ("--steps", "ten"),
        ("--batch-size", "0"),
        ("--accum-steps", "0"),
        ("--lr", "0"),
        ("--lr", "nan"),
        ("--seed", "-1"),
        ("--max-minutes", "-1"),
        ("--num-workers", "-1"),
        ("--keep-checkpoints", "-1"),
    ],
)
def test_train_flags_out_of_range_train_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    last = usage_error(capsys, ["train", flag, value, "--out", str(tmp_path / "run")], flag)
    assert repr(value) in last
    nothing_written(tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.pt")


def test_batch_must_split_into_accum_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--batch-size", "10", "--accum-steps", "3", "--out", str(tmp_path / "run")]
    assert main(argv) == 1
    one_line_error(capsys, "batch_size 10 must be a multiple of accum_steps 3")
    nothing_written(tmp_path / "run")


def test_a_bad_eval_template_set_fails_before_the_run_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "val" / "a").mkdir(parents=True)
    argv = ["train", "--eval-folder", str(tmp_path / "val"), "--eval-templates", "klingon"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    one_line_error(capsys, "'klingon'")
    nothing_written(tmp_path / "run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--device", "cuda", "--num-workers", "0", "--out", str(tmp_path / "run")]) == 1
    one_line_error(capsys, "device cuda: CUDA is not available")
    nothing_written(tmp_path / "run")


@pytest.mark.parametrize("port", ["99999", "65536", "0", "-1", "http"])
def test_serve_refuses_a_port_out_of_range_without_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], port: str
) -> None:
    started: list[Any] = []
    monkeypatch.setattr(cli, "cmd_serve", started.append)  # never binds anything, even if it got there
    usage_error(capsys, ["serve", "--port", port], "--port")
    assert not started


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["export", "--checkpoint", "c.pt", "--tolerance", "0"], "--tolerance"),
        (["export", "--checkpoint", "c.pt", "--tolerance=-1e-4"], "--tolerance"),
        (["import", "openai", "x.pt", "--out", "m", "--tolerance", "inf"], "--tolerance"),
        (["eval", "--heldout-images", "0"], "--heldout-images"),
        (["eval", "--seen-images", "-3"], "--seen-images"),
        (["eval", "--folder", "val", "--limit", "0"], "--limit"),
    ],
)
def test_other_subcommands_numeric_flags(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    usage_error(capsys, argv, flag)
    nothing_written()


def _retrain(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    (tmp_path / "val" / "a").mkdir(parents=True, exist_ok=True)
    base = {"model_dir": str(tmp_path / "models" / "m"), "train": {"out_dir": str(tmp_path / "runs")}}
    return base | {"eval": {"folder": str(tmp_path / "val")}} | fields


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"train": {"steps": "ten"}}, "train: steps must be an integer >= 1, not 'ten'"),
        ({"train": {"batch_size": 10, "accum_steps": 3}}, "train: batch_size 10 must be a multiple"),
        ({"train": {"stepz": 3}}, "train: unknown train config keys: stepz"),
        ({"train": {"preset": "ViT-Z-99"}}, "unknown preset 'ViT-Z-99'"),
        ({"train": ["steps"]}, "train must be an object"),
        ({"model_dir": 5}, "model_dir must be a string that is not empty, not 5"),
        ({"margin": "x"}, "margin must be a number in [0, 1), not 'x'"),
        ({"margin": 1}, "margin must be a number in [0, 1), not 1"),
        ({"tolerance": 0}, "tolerance must be a number > 0"),
        ({"int8": "yes"}, "int8 must be true or false"),
        ({"metric": 1}, "metric must be a string that is not empty or null"),
        ({"eval": {"synthetic": True, "heldout_images": "many"}}, "eval: heldout_images must be an integer"),
        ({"eval": {"synthetic": True, "sen_images": 5}}, "eval: unknown keys: sen_images"),
        ({"eval": {"folder": "no/such/dir"}}, "eval: folder no/such/dir is not a folder"),
        ({"eval": {"folder": 3}}, "eval: folder must be a string"),
        ({"eval": {"synthetic": "true"}}, "eval: synthetic must be true or false"),
    ],
)
def test_retrain_config_values_are_checked_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: dict[str, Any], message: str
) -> None:
    path = write(tmp_path / "retrain.json", _retrain(tmp_path, **fields))
    assert main(["retrain", str(path)]) == 1
    one_line_error(capsys, message)
    nothing_written(tmp_path / "runs", tmp_path / "models")


def test_retrain_eval_templates_are_checked_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _retrain(tmp_path)
    cfg["eval"]["templates"] = "klingon"
    assert main(["retrain", str(write(tmp_path / "retrain.json", cfg))]) == 1
    one_line_error(capsys, "'klingon'")
    nothing_written(tmp_path / "runs", tmp_path / "models")


def test_good_configs_still_load() -> None:
    """The shipped example, and values at the edges of each range, pass."""
    example = json.loads((ROOT / "examples" / "retrain-shapes.json").read_text())
    TrainConfig.check(example["train"])
    edge = {"steps": 1, "lr": 1, "betas": [0, 0.999], "warmup_steps": 0, "min_lr_ratio": 1.0}
    edge |= {"keep_checkpoints": 0, "grad_clip": 0, "num_workers": 0, "seed": 0, "max_minutes": None}
    cfg = TrainConfig.from_dict(edge | {"image_size": 16, "device": "cuda:1", "threads": 1})
    assert cfg.betas == (0, 0.999) and cfg.keep_checkpoints == 0


def test_constructing_a_bad_config_in_code_fails_too() -> None:
    with pytest.raises(TrainError, match="steps must be an integer >= 1, not 0"):
        TrainConfig(steps=0)
