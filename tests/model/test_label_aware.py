"""Label-aware targets (UniCL, Yang et al., CVPR 2022) in training: which sources carry class ids,
how they reach the loss, and the config that turns them on (TrainConfig.label_aware, `zeroshot train
--label-aware/--no-label-aware`, a retrain config's `train`). The losses themselves are checked
against the papers' formulas in test_loss.py, and under DDP in test_distributed.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.data import DataError, collate_pairs, open_source
from model.data.synthetic import SyntheticShapes, all_classes
from model.train_config import TrainConfig, TrainError
from tests.conftest import make_shape_folder

SIZE = 32


def test_labelled_sources_give_each_item_its_class_id_and_the_others_none(tmp_path: Path) -> None:
    from model.bundle.tokenizer import ClipTokenizer

    folder = make_shape_folder(tmp_path / "f", per_class=2, classes=3)
    (folder / "red_circle" / "0036.jpg").write_bytes(b"not a jpeg")  # red_square/0001.png stands in
    src = open_source("folder", str(folder), SIZE, seed=0)
    got = [src[i] for i in range(len(src))]  # type: ignore[arg-type]
    assert src.targets == [0, 0, 1, 1, 2, 2]  # type: ignore[union-attr]
    assert [item[3] for item in got] == [0, 1, 1, 1, 2, 2]  # the class of the image read, not of item 1
    assert [item[2] for item in got] == [0, 1, 0, 0, 0, 0]
    assert all(src.classes[c] in caption for _, caption, _, c in got)  # type: ignore[union-attr]

    synthetic = open_source("synthetic", None, SIZE, seed=3)
    shapes = SyntheticShapes(image_size=SIZE, seed=3, split="train", length=1 << 30)
    for i in (0, 5, 99):
        assert synthetic[i][3] == all_classes().index((shapes[i].colour, shapes[i].shape))
    from model.data import SyntheticPairs

    scenes = SyntheticPairs(SIZE, 3, scene_fraction=1.0)
    assert [scenes[i][3] for i in (4, 9)] == [36 + 4, 36 + 9]  # a scene is a class of its own

    tok = ClipTokenizer.clip_bpe()
    *_, class_ids = collate_pairs(tok)(got[:4])
    assert class_ids is not None and class_ids.dtype == torch.int64 and class_ids.tolist() == [0, 1, 1, 1]
    pix = np.zeros((3, SIZE, SIZE), np.float32)
    assert collate_pairs(tok)([(pix, "a caption", 0, None)])[3] is None  # csv, webdataset
    with pytest.raises(DataError, match="mixes items with and without class ids"):
        collate_pairs(tok)([(pix, "a", 0, None), (pix, "b", 0, 1)])


def test_csv_rows_carry_no_class_id(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("filepath,caption\na.png,a red square\n")
    assert open_source("csv", str(tmp_path / "t.csv"), SIZE, seed=0)[0][3] is None


def test_label_aware_is_on_for_folders_off_for_synthetic_data_unless_asked() -> None:
    assert TrainConfig(data="folder", data_path="x").uses_label_aware
    # measured worse with the sigmoid loss (bench/README.md "Objectives"): off unless asked for
    assert not TrainConfig(data="folder", data_path="x", loss="sigmoid").uses_label_aware
    assert TrainConfig(data="folder", data_path="x", loss="sigmoid", label_aware=True).uses_label_aware
    assert not TrainConfig().uses_label_aware  # the default model's objective is unchanged
    assert not TrainConfig(data="csv", data_path="x").uses_label_aware
    assert TrainConfig(label_aware=True).uses_label_aware  # synthetic data has labels: allowed
    assert not TrainConfig(data="folder", data_path="x", label_aware=False).uses_label_aware


@pytest.mark.parametrize("data", ["csv", "webdataset"])
def test_label_aware_without_class_labels_is_a_config_error_naming_the_source(data: str) -> None:
    with pytest.raises(TrainError, match=f"label_aware needs class labels, and {data} data has none"):
        TrainConfig(data=data, data_path="x", label_aware=True)
    with pytest.raises(TrainError, match="label_aware must be true or false or null, not 'yes'"):
        TrainConfig.from_dict({"label_aware": "yes"})


def test_a_retrain_config_takes_label_aware_in_its_train_section(tmp_path: Path) -> None:
    from model.retrain import RetrainConfig

    def load(train: dict[str, Any]) -> RetrainConfig:
        path = tmp_path / "r.json"
        path.write_text(json.dumps({"model_dir": str(tmp_path / "m"), "train": train}))
        return RetrainConfig.load(path)

    assert load({"data": "folder", "data_path": "x", "label_aware": False}).train["label_aware"] is False
    with pytest.raises(TrainError, match=r"r\.json: train: label_aware needs class labels, and csv data"):
        load({"data": "csv", "data_path": "x", "label_aware": True})


def test_the_train_command_takes_the_flag_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import model.train
    from model.cli import main

    seen: list[TrainConfig] = []
    monkeypatch.setattr(model.train, "train", lambda cfg, resume=None: seen.append(cfg) or Path("x"))
    base = ["train", "--out", str(tmp_path / "run"), "--data", "folder", "--data-path", str(tmp_path)]
    for flag, want in ((["--label-aware"], True), (["--no-label-aware"], False), ([], None)):
        assert main(base + flag) == 0
        assert seen[-1].label_aware is want
    assert main(["train", "--data", "csv", "--data-path", "t.csv", "--label-aware"]) == 1
    err = capsys.readouterr().err
    assert "zeroshot: error: label_aware needs class labels, and csv data has none" in err


def _one_class_run(tmp_path: Path, name: str, label_aware: bool | None, loss: str) -> dict[str, Any]:
    """One step on a folder of a single class: every caption of the batch names the same class (in
    seven templates: with one, every caption would be the same text and no target could tell)."""
    from model.train import train

    folder = tmp_path / "one"
    if not folder.exists():
        make_shape_folder(folder, per_class=8, classes=1)
    cfg = TrainConfig(
        data="folder", data_path=str(folder), data_options={"templates": "imagenet7"},
        out_dir=str(tmp_path / name), steps=1, batch_size=8, warmup_steps=1, num_workers=0,
        precision="fp32", loss=loss, label_aware=label_aware, tensorboard=False,
    )  # fmt: skip
    train(cfg)
    return {
        "loss": json.loads((tmp_path / name / "metrics.jsonl").read_text())["loss"],
        "recorded": json.loads((tmp_path / name / "train_config.json").read_text())["label_aware"],
    }


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_class_ids_of_a_folder_reach_the_loss(tmp_path: Path, loss: str) -> None:
    """The same model, batch and seed: with all captions of one class, the label-aware loss is another
    (every pair a positive) than the paper's (only the diagonal); auto is on for a folder with the
    softmax loss, off with the sigmoid one (measured worse there), and the run records what it used."""
    on = _one_class_run(
        tmp_path, "auto" if loss == "softmax" else "on", None if loss == "softmax" else True, loss
    )
    off = _one_class_run(tmp_path, "off", False, loss)
    assert on["recorded"] is True and off["recorded"] is False
    assert abs(on["loss"] - off["loss"]) > 1e-3, (on, off)
    if loss == "sigmoid":
        assert _one_class_run(tmp_path, "auto", None, loss)["recorded"] is False
