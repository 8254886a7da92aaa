"""Training on CPU: schedule, optimizer groups, a short run that learns, checkpoints and resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from model.clip import build_model
from model.train import TrainConfig, TrainError, load_checkpoint, lr_at, make_optimizer, train
from tests.conftest import make_shape_folder


def test_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_no_weight_decay_on_gains_biases_embeddings_temperature() -> None:
    m = build_model("tiny")
    opt = make_optimizer(m, TrainConfig(weight_decay=0.2))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    names = {n: id(p) in decayed for n, p in m.named_parameters()}
    assert names["transformer.resblocks.0.mlp.c_fc.weight"]
    assert not names["transformer.resblocks.0.mlp.c_fc.bias"]
    assert not names["ln_final.weight"] and not names["logit_scale"]
    assert not names["token_embedding.weight"] and not names["visual.bn1.weight"]
    assert len(decayed) + len(opt.param_groups[1]["params"]) == len(list(m.parameters()))


def _cfg(out: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out),
        steps=steps,
        batch_size=32,
        warmup_steps=5,
        lr=2e-3,
        num_workers=0,
        precision="fp32",
        checkpoint_every=10,
        eval_every=10,
        eval_images=36,
    )


def test_short_run_learns_and_writes_its_artifacts(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, 40)
    cfg.keep_checkpoints = 2
    last = train(cfg)
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 40 and recs[-1]["step"] == 40
    first, final = sum(r["loss"] for r in recs[:5]) / 5, sum(r["loss"] for r in recs[-5:]) / 5
    assert final < first - 0.3  # log(32) = 3.47 at chance; the loss must really fall
    assert "heldout_top1" in recs[-1] and "seen_top1" in recs[-1]
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    ckpt = load_checkpoint(last)
    assert ckpt["step"] == 40 and ckpt["data_position"] == 40 * 32
    assert {"model_config", "train_config", "model", "optimizer"} <= set(ckpt)
    # rotation: the 2 newest step copies, and best.pt at the best held-out eval
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step-0000030.pt", "step-0000040.pt"]
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["best_eval"] == max(r["heldout_top1"] for r in recs if "heldout_top1" in r)
    assert best["step"] in {r["step"] for r in recs if r.get("heldout_top1") == best["best_eval"]}
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 1000  # TensorBoard scalars beside the JSON lines


def test_resume_continues_the_same_trajectory(tmp_path: Path) -> None:
    full = tmp_path / "full"
    train(_cfg(full, 20))
    part = tmp_path / "part"
    cfg = _cfg(part, 20)
    train(cfg, stop_after=10)  # as if interrupted after step 10 of 20
    assert load_checkpoint(part / "checkpoints" / "last.pt")["step"] == 10
    train(cfg, resume=part / "checkpoints" / "last.pt")
    a = [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x)["loss"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert len(b) == 20
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def test_bad_checkpoints_are_reported(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(TrainError, match="not a zeroshot checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(TrainError, match="unknown train config keys: bogus"):
        TrainConfig.from_dict({"bogus": 1})


def _shape_folder(root: Path) -> Path:
    """An image folder of four synthetic classes (PNG and JPEG) plus two files that cannot be read."""
    make_shape_folder(root, per_class=6, classes=4)
    (root / "red_circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "red_star" / "notes.png").write_text("not an image")
    return root


def test_fine_tunes_on_an_image_folder_with_the_image_tower_locked(tmp_path: Path) -> None:
    """LiT from a checkpoint: the image tower does not move, the text tower does; unreadable images are
    skipped and counted; the eval folder's top-1 is logged and picks best.pt."""
    base = tmp_path / "base"
    train(_cfg(base, 5))
    folder = _shape_folder(tmp_path / "shapes")
    cfg = _cfg(tmp_path / "lit", 6)
    cfg.data, cfg.data_path, cfg.batch_size = "folder", str(folder), 8
    cfg.init_from, cfg.lock_image, cfg.eval_folder, cfg.eval_every = str(base), True, str(folder), 3
    train(cfg)
    before = load_checkpoint(base / "checkpoints" / "last.pt")["model"]
    after = load_checkpoint(tmp_path / "lit" / "checkpoints" / "last.pt")["model"]
    visual = [k for k in before if k.startswith("visual.")]
    text = [k for k in before if k.startswith("transformer.") and k.endswith("weight")]
    assert visual and all(torch.equal(before[k], after[k]) for k in visual)  # BN running stats too
    assert text and all(not torch.equal(before[k], after[k]) for k in text)
    recs = [json.loads(x) for x in (tmp_path / "lit" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert recs[-1]["skipped_images"] >= 2  # 6 steps x 8 = 48 reads of 26 files: both bad ones met
    assert "eval_top1" in recs[2] and "eval_top1" in recs[5]
    assert load_checkpoint(tmp_path / "lit" / "checkpoints" / "best.pt")["best_eval"] == max(
        recs[2]["eval_top1"], recs[5]["eval_top1"]
    )


def test_bad_fine_tuning_sources_are_reported(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "x", 2)
    cfg.init_from = str(tmp_path / "nowhere")
    with pytest.raises(TrainError, match="neither a checkpoint"):
        train(cfg)
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"source": {"checkpoint": "/gone.pt"}}))
    cfg.init_from = str(bundle)
    with pytest.raises(TrainError, match="does not name an existing source checkpoint"):
        train(cfg)
    cfg.init_from, cfg.batch_size, cfg.accum_steps = None, 30, 4
    with pytest.raises(TrainError, match="multiple of world size x accum_steps"):
        train(cfg)


def test_trains_on_webdataset_shards_for_the_configured_steps(tmp_path: Path) -> None:
    """The shard stream never ends by itself; the run stops at `steps` and resumes where it stopped."""
    import io
    import tarfile

    files = sorted(p for p in make_shape_folder(tmp_path / "imgs", 2, 6).rglob("*.*"))
    (tmp_path / "shards").mkdir()
    for shard in range(2):
        with tarfile.open(tmp_path / "shards" / f"{shard:05d}.tar", "w") as tar:
            for i, f in enumerate(files[shard::2]):
                caption = f.parent.name.replace("_", " ").encode()
                for ext, data in ((f.suffix[1:], f.read_bytes()), ("txt", caption)):
                    info = tarfile.TarInfo(f"{shard}{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    cfg = _cfg(tmp_path / "run", 4)
    cfg.data, cfg.data_path, cfg.batch_size = "webdataset", str(tmp_path / "shards" / "{00000..00001}.tar"), 4
    train(cfg, stop_after=2)
    train(cfg, resume=tmp_path / "run" / "checkpoints" / "last.pt")
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4


def test_the_sigmoid_loss_trains_exports_its_scoring_and_refuses_a_softmax_source(tmp_path: Path) -> None:
    """--loss sigmoid: the model gets SigLIP's bias, the loss falls, the bias moves, the bundle's
    manifest says how it scores; fine-tuning it with the other loss is refused by name."""
    from model.export import export_checkpoint

    cfg = _cfg(tmp_path / "run", 30)
    cfg.loss = "sigmoid"
    last = train(cfg)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, final = sum(r["loss"] for r in recs[:5]) / 5, sum(r["loss"] for r in recs[-5:]) / 5
    assert final < first - 0.3, (first, final)
    ckpt = load_checkpoint(last)
    assert ckpt["model_config"]["logit_bias"] is True
    assert float(ckpt["model"]["logit_bias"]) != -10.0  # it is learned
    bundle = export_checkpoint(last, tmp_path / "m", version="v1")
    assert bundle.manifest["scoring"]["kind"] == "sigmoid"
    assert bundle.manifest["scoring"]["logit_bias"] == pytest.approx(float(ckpt["model"]["logit_bias"]))
    tune = _cfg(tmp_path / "tune", 2)
    tune.init_from = str(last)  # loss softmax by default
    with pytest.raises(TrainError, match=r"loss softmax cannot fine-tune .* sigmoid loss"):
        train(tune)
