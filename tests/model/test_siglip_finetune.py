"""Fine-tuning an imported SigLIP: its checkpoint carries its own tokenizer and preprocessing, so
re-export, the training data, the trainer's eval and `zeroshot retrain` all read the model's own
inputs (SentencePiece padded to the fixed length, images squashed to a square with mean = std = 0.5),
never CLIP's. The model is the tiny random SigLIP of tests/siglip_checkpoint.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model.bundle.encoders import OnnxEncoders
from model.bundle.format import current_bundle, load_bundle, read_current
from model.bundle.preprocess import PreprocessConfig
from model.checkpoints import TrainError, build_for_training, load_checkpoint, save_checkpoint
from model.cli import main
from model.data.files import load_image_file
from model.data.map_sources import ImageFolderPairs
from model.distributed import Dist
from model.export import export_checkpoint
from model.retrain import PUBLISHED
from model.train import TrainConfig, train
from model.train_data import make_loader
from tests.conftest import make_shape_folder


@pytest.fixture(scope="module")
def work(siglip_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A copy of the SigLIP models folder (retrain publishes into it) and an image folder of 4 classes."""
    tmp = tmp_path_factory.mktemp("siglip-ft")
    shutil.copytree(siglip_models, tmp / "models")
    ckpt = Path(current_bundle(tmp / "models" / "siglip").manifest["source"]["checkpoint"])
    shutil.copy(ckpt, tmp / "imported.pt")
    return {"tmp": tmp, "models": tmp / "models" / "siglip", "ckpt": tmp / "imported.pt",
            "folder": make_shape_folder(tmp / "shapes", 4, 4)}  # fmt: skip


def config(work: dict[str, Path], name: str, **kw: object) -> TrainConfig:
    base = {"init_from": str(work["ckpt"]), "loss": "sigmoid", "data": "folder",
            "data_path": str(work["folder"]), "steps": 3, "batch_size": 8, "warmup_steps": 1,
            "precision": "fp32", "num_workers": 0, "tensorboard": False, "eval_every": 1000,
            "out_dir": str(work["tmp"] / "runs" / name)}  # fmt: skip
    return TrainConfig(**(base | kw))  # type: ignore[arg-type]


def test_re_export_of_the_imported_checkpoint_is_the_imported_bundle(work: dict[str, Path]) -> None:
    imported = current_bundle(work["models"])
    again = export_checkpoint(work["ckpt"], work["tmp"] / "re", version="r1", n_images=4)
    for key in ("preprocessing", "tokenizer", "scoring", "architecture"):
        assert again.manifest[key] == imported.manifest[key], key
    assert (again.path / "tokenizer.json").read_bytes() == (imported.path / "tokenizer.json").read_bytes()
    a, b = OnnxEncoders(load_bundle(again.path)), OnnxEncoders(load_bundle(imported.path))
    texts = ["a photo of a red circle.", "Blue SQUARE!!", "x"]
    np.testing.assert_allclose(a.encode_texts(texts), b.encode_texts(texts), atol=1e-6)


def test_training_reads_the_models_own_tokenizer_and_preprocessing(work: dict[str, Path]) -> None:
    cfg = config(work, "inputs", batch_size=4)
    begin = build_for_training(cfg, None)
    manifest = current_bundle(work["models"]).manifest
    assert begin.inputs.preprocess.resize == "square"
    assert begin.inputs.tokenizer.facts() == manifest["tokenizer"]
    loader = make_loader(cfg, Dist(), begin.inputs, 0)
    src = loader.dataset
    assert isinstance(src, ImageFolderPairs)
    pixels, _, _, _ = src[0]
    path = src.samples[0][0]
    np.testing.assert_array_equal(pixels, load_image_file(path, begin.inputs.preprocess))
    clip = load_image_file(path, PreprocessConfig(image_size=begin.inputs.preprocess.image_size))
    assert np.abs(pixels - clip).max() > 0.1  # and that is not CLIP's recipe
    _, ids, _, _ = next(iter(loader))
    # every caption padded to the fixed length SigLIP pools at, not to the longest one in the batch
    assert ids.shape == (4, begin.model.config.text.context_length)
    tok = begin.inputs.tokenizer
    assert int(ids.max()) < tok.vocab_size and (ids[:, -1] == tok.pad_id).all()  # SentencePiece ids, padded


def test_a_fine_tuned_siglip_exports_resumes_and_keeps_its_scale(work: dict[str, Path]) -> None:
    # a pretrained SigLIP's scale is above CLIP's cap of 100 (SigLIP-B/16: ~112): fine-tuning (at a
    # learning rate too small to move it) keeps it, where CLIP's clamp would cut it to 100
    ckpt = load_checkpoint(work["ckpt"])
    ckpt["model"]["logit_scale"] = torch.tensor(math.log(112.0))
    save_checkpoint(work["tmp"] / "big-scale.pt", ckpt)
    cfg = config(
        work, "ft", init_from=str(work["tmp"] / "big-scale.pt"), lr=1e-12, eval_folder=str(work["folder"])
    )
    last = train(cfg)
    state = load_checkpoint(last)
    assert state["inputs"] == ckpt["inputs"]  # carried into the run's checkpoints
    assert state["model"]["logit_scale"].item() == pytest.approx(math.log(112.0))
    metrics = [json.loads(x) for x in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert "eval_top1" in metrics[-1]  # the trainer's eval ran through the SigLIP's inputs
    bundle = export_checkpoint(last, work["tmp"] / "ft-models", version="ft", n_images=4)
    assert bundle.manifest["architecture"]["family"] == "siglip"
    assert bundle.manifest["scoring"]["kind"] == "sigmoid"
    assert bundle.manifest["logit_scale"] == pytest.approx(112.0, rel=1e-5)
    resumed = train(config(work, "ft", init_from=None, steps=4, lr=1e-12), resume=last)
    assert load_checkpoint(resumed)["step"] == 4 and "inputs" in load_checkpoint(resumed)


def test_refusals_say_what_to_do(work: dict[str, Path]) -> None:
    with pytest.raises(TrainError, match=r"loss softmax cannot fine-tune .* sigmoid loss"):
        build_for_training(config(work, "softmax", loss="softmax"), None)
    old = load_checkpoint(work["ckpt"])
    del old["inputs"]  # a SigLIP checkpoint written before checkpoints carried their inputs
    save_checkpoint(work["tmp"] / "old.pt", old)
    with pytest.raises(TrainError, match="import the model's folder again"):
        build_for_training(config(work, "old", init_from=str(work["tmp"] / "old.pt")), None)
    with pytest.raises(TrainError, match="import the model's folder again"):
        export_checkpoint(work["tmp"] / "old.pt", work["tmp"] / "old-models")


def test_retrain_fine_tunes_and_publishes_a_siglip(
    work: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = read_current(work["models"])
    cfg = {
        "model_dir": str(work["models"]),
        "train": {"init_from": str(work["models"]), "loss": "sigmoid", "data": "folder",
                  "data_path": str(work["folder"]), "steps": 2, "batch_size": 8, "warmup_steps": 1,
                  "lr": 1e-6, "precision": "fp32", "num_workers": 0, "tensorboard": False, "eval_every": 1000,
                  "out_dir": str(work["tmp"] / "runs" / "retrain")},
        "eval": {"folder": str(work["folder"]), "templates": "default"},
        "margin": 0.5,
    }  # fmt: skip
    path = work["tmp"] / "retrain.json"
    path.write_text(json.dumps(cfg))
    assert main(["retrain", str(path)]) == PUBLISHED, capsys.readouterr()
    after = current_bundle(work["models"])
    assert after.version != before and after.manifest["architecture"]["family"] == "siglip"
    assert after.manifest["preprocessing"]["resize"] == "square"
