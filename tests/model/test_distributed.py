"""Distributed training on CPU with gloo: 2 ranks equal 1 process on the same global batch.

Each rank gathers the other ranks' features, so the loss is the loss of the global batch; the local
rows carry world-size-scaled gradients, so DDP's averaging gives the single-process gradient. The
tests use the `tiny-vit` preset: batch norm (the `tiny` ResNet) has per-rank statistics on CPU.
Tolerances, per tensor: loss 1e-6; gradients 1e-5 in relative norm |a - b| / |a| (float summation
order and kernel choice differ with the batch split); the update of one AdamW step 1e-3 in relative
norm. Element-wise, the update is looser than the gradient: Adam divides each gradient by its own
magnitude, so where the true gradient is ~0 (the key-projection bias, to which softmax attention is
invariant) rounding noise of 1e-9 moves a weight by up to ~1e-5 at lr 1e-3: the update of that third
of in_proj_bias is not compared (its gradient is).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model import distributed as dd
from model.bundle.tokenizer import ClipTokenizer
from model.clip import build_model, get_preset
from model.train import TrainConfig, make_optimizer, train_step
from tests.servers import free_port

GLOBAL = 8
LR = 1e-3
# class ids for label-aware targets: classes 0, 1 and 2 have rows on both ranks (rank 0 holds rows
# 0-3), so some positives are pairs across ranks
CLASSES = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(GLOBAL, 3, 64, 64, generator=g)
    words = ["red", "blue", "round", "square", "big", "small", "green", "star"]
    captions = [
        f"a {words[i]} thing with {words[(3 * i) % 8]} edges {'and more ' * i}" for i in range(GLOBAL)
    ]
    ids = torch.from_numpy(ClipTokenizer.clip_bpe().encode_batch(captions))
    return pixels, ids


def _step(
    rank: int, world: int, accum: int, sigmoid: bool = False, label_aware: bool = False
) -> dict[str, Any]:
    """One optimizer step on this rank's share of the global batch; returns loss, grads, new params.
    sigmoid: SigLIP's loss, on a model with a logit bias; label_aware: UniCL's positives from this
    rank's class ids, gathered as the trainer gathers them."""
    torch.manual_seed(0)
    model = build_model(replace(get_preset("tiny-vit"), logit_bias=sigmoid)).train()
    opt = make_optimizer(model, TrainConfig(lr=LR, weight_decay=0.1))
    d = dd.Dist(rank=rank, world_size=world)
    wrapped: torch.nn.Module = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    pixels, ids = _batch()
    per = GLOBAL // world
    mine = slice(rank * per, (rank + 1) * per)
    pixels, ids = pixels[mine], ids[mine]
    m = per // accum
    micro = [(pixels[j * m : (j + 1) * m], ids[j * m : (j + 1) * m]) for j in range(accum)]
    positives = dd.global_positives(CLASSES[mine], d) if label_aware else None
    loss = train_step(wrapped, model, micro, d, torch.autocast("cpu", enabled=False), positives)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    return {
        "loss": loss,
        "grads": grads,
        "update": {n: p.detach() - before[n] for n, p in model.named_parameters()},
    }


def _rank_main(
    rank: int, world: int, port: int, accum: int, out: str, sigmoid: bool = False, label_aware: bool = False
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = _step(rank, world, accum, sigmoid, label_aware)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def _compare(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert abs(a["loss"] - b["loss"]) < 1e-6, (a["loss"], b["loss"])
    assert a["grads"].keys() == b["grads"].keys() and len(a["grads"]) > 20
    for name, g in a["grads"].items():
        assert _rel(b["grads"][name], g) < 1e-5, (name, _rel(b["grads"][name], g))
    for name, u in a["update"].items():
        got = b["update"][name]
        if name.endswith("attn.in_proj_bias"):  # [q | k | v]: leave out k, whose true gradient is 0
            w = len(u) // 3
            u, got = torch.cat([u[:w], u[2 * w :]]), torch.cat([got[:w], got[2 * w :]])
        assert _rel(got, u) < 1e-3, (name, _rel(got, u))


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    return _step(0, 1, 1)


@pytest.mark.parametrize("accum", [1, 2])
def test_two_gloo_ranks_match_one_process(single: dict[str, Any], accum: int, tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_main, args=(2, free_port(), accum, str(out)), nprocs=2, join=True)
    _compare(single, torch.load(out, weights_only=True))


@pytest.fixture(scope="module")
def single_sigmoid() -> dict[str, Any]:
    return _step(0, 1, 1, sigmoid=True)


@pytest.mark.parametrize("accum", [1, 2])
def test_two_gloo_ranks_match_one_process_with_the_sigmoid_loss(
    single_sigmoid: dict[str, Any], single: dict[str, Any], accum: int, tmp_path: Path
) -> None:
    """SigLIP's loss under DDP: every rank's images against the global batch's texts, the bias's
    gradient (complete on every rank, like the temperature's) averaged, not scaled."""
    assert "logit_bias" in single_sigmoid["grads"] and abs(single_sigmoid["loss"] - single["loss"]) > 1e-3
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_main, args=(2, free_port(), accum, str(out), True), nprocs=2, join=True)
    _compare(single_sigmoid, torch.load(out, weights_only=True))


@pytest.mark.parametrize("sigmoid", [False, True], ids=["softmax", "sigmoid"])
def test_two_gloo_ranks_match_one_process_with_label_aware_targets(
    sigmoid: bool, single: dict[str, Any], single_sigmoid: dict[str, Any], tmp_path: Path
) -> None:
    """UniCL's positives under DDP: each rank's class ids gathered like its features, so a caption of
    the same class on the other rank is a positive, as in one process; with accumulation 2, the
    micro-batches' ids in the order of their rows."""
    one = _step(0, 1, 1, sigmoid, label_aware=True)
    assert abs(one["loss"] - (single_sigmoid if sigmoid else single)["loss"]) > 1e-3  # the ids count
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_main, args=(2, free_port(), 2, str(out), sigmoid, True), nprocs=2, join=True)
    _compare(one, torch.load(out, weights_only=True))


def test_gradient_accumulation_matches_the_whole_batch(single: dict[str, Any]) -> None:
    _compare(single, _step(0, 1, 4))  # 4 micro-batches of 2 still see all 8 as negatives


def test_a_wrong_gradient_would_be_caught(single: dict[str, Any]) -> None:
    """The comparison is sharp enough to see the classic bug: ranks using only local negatives."""
    torch.manual_seed(0)
    model = build_model("tiny-vit").train()
    pixels, ids = _batch()
    loss_local = (
        sum(
            train_step(model, model, [(pixels[s], ids[s])], dd.Dist(), torch.autocast("cpu", enabled=False))
            for s in (slice(0, 4), slice(4, 8))
        )
        / 2
    )
    assert abs(loss_local - single["loss"]) > 1e-3


def test_sampler_gives_each_rank_its_slice_of_the_same_global_batches() -> None:
    one = list(dd.GlobalBatchSampler(50, 8, dd.Dist(), seed=3, start=0, steps=10))
    r0 = list(dd.GlobalBatchSampler(50, 8, dd.Dist(0, 2), seed=3, start=0, steps=10))
    r1 = list(dd.GlobalBatchSampler(50, 8, dd.Dist(1, 2), seed=3, start=0, steps=10))
    assert [one[s * 8 : s * 8 + 4] for s in range(10)] == [r0[s * 4 : s * 4 + 4] for s in range(10)]
    assert [one[s * 8 + 4 : s * 8 + 8] for s in range(10)] == [r1[s * 4 : s * 4 + 4] for s in range(10)]
    assert sorted(one[:50]) == list(range(50))  # the first epoch is a permutation
    assert one[:50] != list(range(50)) and one[50:] != one[:30]  # shuffled, and reshuffled per epoch
    resumed = list(dd.GlobalBatchSampler(50, 8, dd.Dist(1, 2), seed=3, start=4, steps=10))
    assert resumed == r1[16:]


def _cli_train(out: Path, nproc: int, extra: list[str]) -> list[dict[str, Any]]:
    args = ["train", "--preset", "tiny-vit", "--out", str(out), "--steps", "6", "--batch-size", "16"]
    args += ["--precision", "fp32", "--num-workers", "0", "--seed", "5", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "model.cli", *args]
    else:
        torchrun = Path(sys.executable).parent / "torchrun"
        cmd = [str(torchrun), "--standalone", f"--nproc-per-node={nproc}", "-m", "model.cli", *args]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_follow_the_single_process_trajectory(tmp_path: Path) -> None:
    one = _cli_train(tmp_path / "one", 1, [])
    two = _cli_train(tmp_path / "two", 2, ["--accum-steps", "2"])
    assert [r["step"] for r in two] == list(range(1, 7))
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(one, two, strict=True)]
    assert max(diffs) < 1e-4, diffs
    assert one[-1]["loss"] < one[0]["loss"]


def test_gradient_checkpointing_gives_the_same_gradient(single: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = build_model("tiny-vit").train()
    model.set_grad_checkpointing(True)
    pixels, ids = _batch()
    loss = train_step(model, model, [(pixels, ids)], dd.Dist(), torch.autocast("cpu", enabled=False))
    assert abs(loss - single["loss"]) < 1e-6
    for name, p in model.named_parameters():
        assert p.grad is not None and _rel(p.grad, single["grads"][name]) < 1e-5, name
