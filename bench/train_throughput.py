"""Training throughput (images/s): one process against `torchrun` data parallelism with gloo on CPU.

    .venv/bin/python bench/train_throughput.py [--preset tiny] [--steps 40] [--batch-size 256]

Runs `zeroshot train` on synthetic data three ways: one process with all cores as torch threads; two
gloo processes (torchrun, global batch split in two, one torch thread each); and, for reference, the
same two processes with gradient accumulation 2. Throughput is measured after the first 10 steps
(start-up, oneDNN kernel selection) from the per-step `elapsed_s` in metrics.jsonl. Prints a table
and writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WARM = 10


def run(name: str, nproc: int, threads: int, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        train = [
            "train",
            "--preset",
            args.preset,
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
        ]
        train += ["--out", tmp, "--num-workers", str(args.num_workers), *extra]
        if nproc == 1:
            cmd = [sys.executable, "-m", "model.cli", *train]
        else:
            torchrun = str(Path(sys.executable).parent / "torchrun")
            cmd = [torchrun, "--standalone", f"--nproc-per-node={nproc}", "-m", "model.cli", *train]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        recs = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    a, b = recs[WARM - 1], recs[-1]
    rate = (b["step"] - a["step"]) * args.batch_size / (b["elapsed_s"] - a["elapsed_s"])
    row = {"run": name, "processes": nproc, "threads_each": threads, "images_per_s": rate}
    row |= {"final_loss": b["loss"], "extra_args": extra}
    print(f"{name:<44}{nproc:>6}{threads:>9}{rate:>12.0f}", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=1)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    print(f"{args.preset}, global batch {args.batch_size}, {args.steps} steps, {cores} cores")
    print(f"{'run':<44}{'procs':>6}{'threads':>9}{'images/s':>12}")
    rows = [
        run("1 process", 1, cores, args, []),
        run("2 gloo processes (torchrun)", 2, max(1, cores // 2), args, []),
        run("2 gloo processes, accumulation 2", 2, max(1, cores // 2), args, ["--accum-steps", "2"]),
    ]
    out = Path(__file__).parent / "results" / "train_throughput.json"
    out.parent.mkdir(exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": cores}
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
