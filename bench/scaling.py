"""Scaling: zero-shot held-out top-1 against parameters, training FLOPs and serving speed.

    .venv/bin/python bench/scaling.py [--presets nano,tiny,small,medium] [--steps 300] [--batch 64]
                                      [--fresh] [--quick]

The 64-px modified ResNets of model/clip.py (`nano` < `tiny` < `small` < `medium`), each trained
from scratch through `model.train.train` on the synthetic world the default model learns
(configs/default-model.json's style), at two budgets:

(a) same data: every preset `--steps` steps at batch `--batch` (the same images, in the same order);
(b) compute-matched: each preset's steps scaled so that its training FLOPs equal `--reference`'s
    (tiny's) at (a): a smaller model trains longer, a larger one shorter. The reference itself is
    the same run at both budgets, trained once.

Training FLOPs are estimated, not measured: torch.utils.flop_counter.FlopCounterMode counts the
matmul and convolution FLOPs of one forward of both towers (8 images and 8 training captions,
padded to the longest as the loader does, per image), times 3 for forward and backward; the loss,
normalisations, activations and the optimizer are left out (small beside the convolutions).

Per point: parameters (and without the token embedding), FLOPs per training image, total training
FLOPs, steps, images seen, training time (`train_s`, eval excluded) and the trainer's final eval
(held-out and seen top-1, model/train_eval.py); then the checkpoint is exported to an fp32 bundle
and its onnxruntime encoders timed as bench/encoders.py times them (`rate`): images/s at batch 32,
prompts/s at batch 32 on the synthetic classes' label prompts. All runs use the same lr and warm-up
share (steps // 5), so a larger model is not tuned for.

Writes bench/results/scaling.json (each point as it finishes; a second run skips points already
there with the same settings, unless `--fresh`), scaling.md (the table) and scaling.png (held-out
top-1 against parameters without the token embedding, a lookup of no FLOPs, against training FLOPs
and against images/s served). `--quick` (nano and tiny, batch 8, 4
steps, few eval images, short timings) only checks that every path runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.encoders import label_prompts, rate  # noqa: E402

BUDGETS = ("same-data", "compute-matched")
SERVE_BATCH = 32  # images and prompts per encoder call, as bench/encoders.py
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
COLOURS = {"same-data": "tab:blue", "compute-matched": "tab:orange"}
RUN_KEYS = ("preset", "steps", "batch", "seed", "eval_images", "data")  # what makes two points one run


def default_style() -> dict[str, Any]:
    return json.loads((ROOT / "configs" / "default-model.json").read_text())


def forward_flops(preset: str, style: dict[str, Any]) -> float:
    """Matmul and convolution FLOPs of one forward of both towers, per image (one caption each)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model.bundle.tokenizer import ClipTokenizer
    from model.clip import build_model
    from model.data.synthetic import SyntheticShapes

    model = build_model(preset).eval()
    size = model.config.vision.image_size
    n = 8
    style_args = {"style": style["synthetic_style"], "varied_fraction": style["varied_fraction"]}
    shapes = SyntheticShapes(size, seed=0, split="train", length=n, **style_args)
    ids = torch.from_numpy(ClipTokenizer.clip_bpe().encode_batch([s.caption for s in shapes]))
    pixels = torch.randn(n, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixels, ids)
    return counter.get_total_flops() / n


def parameters(preset: str) -> tuple[int, int]:
    """All parameters, and those without the token embedding (a lookup: no FLOPs)."""
    from model.clip import build_model, count_parameters

    model = build_model(preset)
    total = count_parameters(model)
    return total, total - model.token_embedding.weight.numel()


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every point, preset by budget, with its steps and FLOP figures."""
    style = default_style()
    fwd = {p: forward_flops(p, style) for p in dict.fromkeys([*args.presets, args.reference])}
    budget = 3 * fwd[args.reference] * args.steps * args.batch  # the reference's FLOPs at (a)
    data = f"synthetic {style['synthetic_style']}, varied_fraction {style['varied_fraction']}"
    points = []
    for preset in args.presets:
        total, non_embedding = parameters(preset)
        per_image = 3 * fwd[preset]
        for name in BUDGETS:
            steps = args.steps if name == "same-data" else max(1, round(budget / (per_image * args.batch)))
            points.append(
                {
                    "name": f"{preset}-{name}",
                    "preset": preset,
                    "budget": name,
                    "steps": steps,
                    "batch": args.batch,
                    "seed": args.seed,
                    "eval_images": args.eval_images,
                    "data": data,
                    "params": total,
                    "params_non_embedding": non_embedding,
                    "train_flops_per_image": per_image,
                    "images": steps * args.batch,
                    "train_flops": per_image * steps * args.batch,
                }
            )
    return points


def train_point(
    point: dict[str, Any], out: Path, threads: int | None, quick: bool
) -> tuple[dict[str, Any], Path]:
    """Train one point; returns its last metrics record and its last checkpoint."""
    from model.train import TrainConfig, train

    steps = point["steps"]
    fields: dict[str, Any] = {
        "preset": point["preset"],
        "out_dir": str(out),
        "steps": steps,
        "batch_size": point["batch"],
        "warmup_steps": max(1, steps // 5),
        "seed": point["seed"],
        "eval_every": steps,  # one eval, after the last step
        "eval_images": point["eval_images"],
        "checkpoint_every": steps,
        "keep_checkpoints": 0,
        "tensorboard": False,
        "num_workers": 0 if quick else 1,
        "threads": threads,
    } | default_style()
    last = train(TrainConfig.from_dict(fields))
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return rec, last


def serve_speed(bundle: Any, seconds: float, threads: int | None) -> dict[str, float]:
    """images/s and prompts/s of the bundle's onnxruntime encoders, batch 32 each."""
    from model.bundle.encoders import OnnxEncoders

    enc = OnnxEncoders(bundle, device="cpu", intra_op_threads=threads)
    size = enc.preprocess.image_size
    pixels = np.random.default_rng(0).standard_normal((SERVE_BATCH, 3, size, size)).astype(np.float32)
    prompts = label_prompts()[:SERVE_BATCH]
    return {
        "images_per_s": rate(lambda: enc.encode_images(pixels), SERVE_BATCH, seconds),
        "prompts_per_s": rate(lambda: enc.encode_texts(prompts), SERVE_BATCH, seconds),
    }


def run_point(point: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train, export (fp32) and time one point; its run folder and bundle are deleted after."""
    from model.export import export_checkpoint

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        rec, ckpt = train_point(point, Path(tmp) / "run", args.threads, args.quick)
        bundle = export_checkpoint(
            ckpt, Path(tmp) / "models", version=point["name"], publish=False, n_images=2 if args.quick else 8
        )
        speed = serve_speed(bundle, args.seconds, args.threads)
    row = dict(point) | speed
    row |= {"heldout_top1": rec["heldout_top1"], "seen_top1": rec["seen_top1"], "final_loss": rec["loss"]}
    row |= {"train_s": rec["elapsed_s"], "s_per_step": rec["elapsed_s"] / rec["step"]}
    row["wall_s"] = time.perf_counter() - t0
    row["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return row


def run_key(point: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(point.get(k) for k in RUN_KEYS)  # a row of an older bench, without a key, matches none


def finished(out: Path, fresh: bool) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows a previous run of the bench already wrote, by their run's settings."""
    if fresh or not out.is_file():
        return {}
    try:
        rows = json.loads(out.read_text()).get("points", [])
    except ValueError:
        return {}
    return {run_key(r): r for r in rows if "heldout_top1" in r and "same_run_as" not in r}


def rows(points: list[dict[str, Any]], done: dict[tuple[Any, ...], dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished points, in the plan's order; the reference's one run stands at both budgets."""
    out = []
    for point in points:
        if (prev := done.get(run_key(point))) is not None:
            row = prev | {"name": point["name"], "budget": point["budget"]}
            if prev["name"] != point["name"]:
                row["same_run_as"] = prev["name"]
            out.append(row)
    return out


def machine(threads: int | None) -> dict[str, Any]:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "niceness": os.nice(0),
    }


def save(path: Path, result: dict[str, Any]) -> None:
    """Write the JSON whole, then move it into place: an interrupted write leaves the last one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Zero-shot top-1 on the synthetic shapes (held-out and seen (colour, shape) pairs) against "
        "model size, training FLOPs and the fp32 bundle's serving speed (onnxruntime, batch 32)",
        "",
        "| preset | budget | params (non-emb.) | train GFLOP/img | train TFLOP | steps | images "
        "| train s | s/step | held-out top-1 | seen top-1 | images/s | prompts/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['budget']} | {r['params'] / 1e6:.1f}M "
            f"({r['params_non_embedding'] / 1e6:.1f}M) "
            f"| {r['train_flops_per_image'] / 1e9:.2f} | {r['train_flops'] / 1e12:.2f} | {r['steps']} "
            f"| {r['images']} | {r['train_s']:.0f} | {r['s_per_step']:.2f} | {100 * r['heldout_top1']:.1f}% "
            f"| {100 * r['seen_top1']:.1f}% | {r['images_per_s']:.0f} | {r['prompts_per_s']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Held-out top-1 against parameters, training FLOPs and images/s: a marker per preset, a colour
    per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    presets = list(dict.fromkeys(r["preset"] for r in rows))
    panels = (
        ("params_non_embedding", "parameters (without the token embedding)"),
        ("train_flops", "training FLOPs (estimated)"),
        ("images_per_s", "images/s served (fp32 bundle, batch 32)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.5), sharey=True)
    for ax, (key, label) in zip(axes, panels, strict=True):
        for r in rows:
            marker = MARKERS[presets.index(r["preset"]) % len(MARKERS)]
            ax.scatter(r[key], 100 * r["heldout_top1"], marker=marker, s=60, color=COLOURS[r["budget"]])
            ax.annotate(r["preset"], (r[key], 100 * r["heldout_top1"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the 2x10^6, 3x10^6 ... labels overlap
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("zero-shot held-out top-1 (%)")
    for budget, colour in COLOURS.items():
        axes[0].scatter([], [], color=colour, label=budget)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle("CLIP scaling on the synthetic shapes: accuracy against size, compute and serving cost")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="nano,tiny,small,medium", help="comma list of model/clip.py presets")
    p.add_argument(
        "--reference", default="tiny", help="the preset whose (a) FLOPs (b) matches (default tiny)"
    )
    p.add_argument("--steps", type=int, default=300, help="steps of the same-data budget (default 300)")
    p.add_argument("--batch", type=int, default=64, help="batch size of every run (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-images", type=int, default=360, help="eval images per split (default 360)")
    p.add_argument("--seconds", type=float, default=2.0, help="timing window per speed figure")
    p.add_argument(
        "--threads", type=int, help="torch threads (default: all cores; 1 is faster beside a busy neighbour)"
    )
    p.add_argument("--fresh", action="store_true", help="retrain every point, even those already in --out")
    p.add_argument("--quick", action="store_true", help="nano and tiny, batch 8, 4 steps: about a minute")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scaling.json")
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.steps, args.batch, args.eval_images, args.seconds = "nano,tiny", 4, 8, 12, 0.1
    args.presets = [s for s in args.presets.split(",") if s]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    points = plan(args)
    done = finished(args.out, args.fresh)
    result: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(args.threads),
    }
    todo = [p for p in points if run_key(p) not in done]
    print(f"{len(points)} points, {len(points) - len(todo)} already done, {os.cpu_count()} cores", flush=True)
    bar = tqdm(total=sum(p["train_flops"] for p in todo), unit="FLOP", unit_scale=True, desc="scaling")
    for point in points:
        if run_key(point) in done:
            continue
        bar.set_postfix_str(point["name"])
        row = done[run_key(point)] = run_point(point, args)
        bar.update(point["train_flops"])
        tqdm.write(f"  {point['name']}: held-out {100 * row['heldout_top1']:.1f}%, {row['wall_s']:.0f} s")
        save(args.out, result | {"points": rows(points, done), "total_s": time.perf_counter() - started})
    bar.close()
    result["points"] = rows(points, done)
    report = table(result["points"])
    print(report)
    args.out.with_suffix(".md").write_text(report + "\n")
    plot(result["points"], args.out.with_suffix(".png"))
    result |= {"table": report, "total_s": time.perf_counter() - started}
    save(args.out, result)
    print(f"total {result['total_s']:.0f} s; wrote {args.out} and its .md and .png")


if __name__ == "__main__":
    main()
