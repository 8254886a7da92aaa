"""The one prepared GPU check (issue 17): encoder speed and memory per runtime, HTTP, training.

    .venv/bin/python bench/gpu.py --device cpu [--quick] [--seconds 2]     # here: the same code path
    bench/gpu_prepare.sh        # the wheels a device run carries, and the calls that run this there

Sections, each point timed for --seconds after warm-up calls (the first call's time, an engine build
or a compilation, is reported on its own):
1. image encoder images/s and memory at batch 1/8/64/256 (up to --max-batch) for --models (random
   weights): onnxruntime fp32 and fp16 (CUDA provider through BoundRunner on a GPU; the CPU provider
   with plain session.run, plus fp32 through BoundRunner on "cpu"), TensorRT fp16, torch eager
   (fp16 on a GPU, fp32 on the CPU) and torch.compile (run last, after 3 and 4, on what is left);
2. text encoder prompts/s, batches of 32 and 256 label prompts padded to the longest;
3. end to end over HTTP: `zeroshot serve` on 127.0.0.1, concurrent /v1/classify requests, 512 px JPEGs;
4. `zeroshot train` images/s (bf16 autocast) for tiny and ViT-B-32 (tiny only on the CPU).
What cannot run (no CUDA provider, no TensorRT, no fastapi) is recorded as {"skipped": reason}; what
fails records its error and the run goes on. --budget-s bounds the whole run: a point that would not
fit (with the time later sections need kept back) is skipped as "budget". Writes --out (JSON, after
every section) and prints a Markdown table (also to --table) for bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for _p in (str(BENCH.parent), str(BENCH)):  # the repo (model, app) and bench/ (loadgen), uninstalled too
    if _p not in sys.path:
        sys.path.insert(0, _p)

import gpu_e2e  # noqa: E402
import gpu_sections as gs  # noqa: E402

IMAGE_BATCHES, TEXT_BATCHES = (1, 8, 64, 256), (32, 256)
FIRST_CALL_GUESS_S = {"tensorrt": 150.0, "torch.compile": 60.0}  # until one is seen; others 3 s
EXPORT_GUESS_S = {"tiny": 30.0, "tiny-vit": 30.0, "ViT-B-32": 45.0, "ViT-L-14": 120.0}
TRAIN_GUESS_S = {"tiny": 30.0, "ViT-B-32": 75.0}
# (preset, steps, global batch) per mode
TRAIN = {"cuda": [("tiny", 40, 256), ("ViT-B-32", 30, 256)], "cpu": [("tiny", 25, 256)]}
TRAIN_QUICK = [("tiny", 8, 64)]
Row = dict[str, Any]


class Budget:
    """The run's time: a step that needs `need_s`, with `reserve_s` kept for later sections, runs only
    if it would end within the total."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s, self.clock, self.t0 = total_s, clock, clock()
        self.skipped = 0

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def allows(self, need_s: float, reserve_s: float = 0.0) -> bool:
        ok = self.elapsed() + need_s + reserve_s <= self.total_s
        self.skipped += not ok
        return ok


def run_point(budget: Budget, need_s: float, reserve_s: float, fn: Callable[[], Row]) -> Row:
    """fn's row; {"skipped": "budget"} when it would not fit, {"skipped": why} for a gs.Skip and
    {"error": ...} for any other exception (the run goes on)."""
    if not budget.allows(need_s, reserve_s):
        return {"skipped": "budget"}
    try:
        return fn()
    except gs.Skip as e:
        return {"skipped": str(e)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"[:600]}


class Progress:
    """A tqdm bar over the planned points where tqdm imports, else one line per point on stderr."""

    def __init__(self, total: int, budget: Budget) -> None:
        self.budget = budget
        try:
            from tqdm import tqdm

            self.bar: Any = tqdm(total=total, unit="point", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self.bar = None

    def done(self, what: str, row: Row) -> None:
        line = f"[{self.budget.elapsed():6.1f} s] {what}: {brief(row)}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
            self.bar.update(1)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def brief(row: Row) -> str:
    if "skipped" in row:
        return f"skipped: {row['skipped']}"
    if "error" in row:
        return f"error: {row['error'][:80]}"
    for k in ("images_per_s", "prompts_per_s"):
        if k in row:
            memory = f", {row['memory_mb']:,.0f} MiB" if "memory_mb" in row else ""
            return f"{row[k]:,.1f} {k.split('_')[0]}/s{memory}"
    return ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float))


@dataclass
class Bench:
    args: argparse.Namespace
    budget: Budget
    progress: Progress
    tmp: Path
    memory: gs.Memory
    reserve_s: float = 0.0
    first_call: dict[tuple[str, str], float] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=gs.label_prompts)
    bundles: dict[str, Path] = field(default_factory=dict)  # preset -> its models/<name> folder
    preps: dict[str, gs.Prepared | None] = field(default_factory=dict)
    export_state: dict[str, Row] = field(default_factory=dict)  # an export's skip or error

    @cached_property
    def tokenizer(self) -> Any:
        from model.bundle.tokenizer import ClipTokenizer

        return ClipTokenizer.clip_bpe()

    def need(self, rt: gs.Runtime, preset: str) -> float:
        first = self.first_call.get((rt.label, preset), FIRST_CALL_GUESS_S.get(rt.kind, 3.0))
        return self.args.seconds + 1.0 + first

    def inputs(self, prep: gs.Prepared, tower: str, n: int) -> Any:
        import numpy as np

        if tower == "text":
            return self.tokenizer.encode_batch(self.prompts[:n])
        s = prep.image_size
        return np.random.default_rng(n).standard_normal((n, 3, s, s)).astype(np.float32)


def open_runner(b: Bench, rt: gs.Runtime, prep: gs.Prepared, tower: str) -> Row:
    """The runner and the seconds its opening took (a session, a TensorRT engine, a module moved)."""
    t = time.perf_counter()
    if rt.kind in ("onnxruntime", "tensorrt"):
        top = max(b.args.batches if tower == "image" else TEXT_BATCHES)
        run = gs.open_ort(rt, prep, tower, top, b.tmp)
    else:
        run = gs.open_torch(rt, prep, tower)
    return {"run": run, "open_s": time.perf_counter() - t}


def measure(
    b: Bench, rt: gs.Runtime, run: gs.Runner, prep: gs.Prepared, tower: str, n: int, base: float
) -> Row:
    x = b.inputs(prep, tower, n)
    if rt.kind.startswith("torch"):
        b.memory.reset(rt)
    got = gs.time_calls(run, x, b.args.seconds)
    key = (rt.label, prep.preset)
    b.first_call[key] = max(b.first_call.get(key, 0.0), got["first_call_s"])
    got["images_per_s" if tower == "image" else "prompts_per_s"] = got.pop("items_per_s")
    got["memory_mb"], got["memory_kind"] = b.memory.after(rt, base), b.memory.kind(rt)
    if tower == "text":
        got["tokens"] = int(x.shape[1])
    return got


def encoder_rows(b: Bench, prep: gs.Prepared | None, rt: gs.Runtime, tower: str, state: Row) -> list[Row]:
    """One runtime's points for one tower: a session (or module) opened once, then each batch. A
    runtime that cannot open (or a model whose export did not run: `state`) gives its reason on
    every point; one that fails at a batch skips its later points."""
    batches = b.args.batches if tower == "image" else TEXT_BATCHES
    preset = prep.preset if prep else str(state.get("model"))
    reason = gs.skip_reason(rt, b.args.device, b.args.cpu_compile)
    base = b.memory.reset(rt)
    run: gs.Runner | None = None
    if prep is None or reason:
        state = {"skipped": reason} if reason else {k: v for k, v in state.items() if k != "model"}
    else:
        state = run_point(b.budget, b.need(rt, preset), b.reserve_s, partial(open_runner, b, rt, prep, tower))
        run = state.pop("run", None)
    opened = {"open_s": state.pop("open_s")} if "open_s" in state else {}
    rows = []
    for n in batches:
        row = dict(state)
        if run is not None and prep is not None:
            row = run_point(
                b.budget, b.need(rt, preset), b.reserve_s, partial(measure, b, rt, run, prep, tower, n, base)
            )
            if "error" in row:
                run, state = None, {"skipped": f"failed at batch {n}"}
        row = {"model": preset, "runtime": rt.label, "precision": rt.precision, "batch": n} | opened | row
        opened = {}
        rows.append(row)
        b.progress.done(f"{tower} {preset} {rt.label} batch {n}", row)
    del run
    gc.collect()
    return rows


def prepare(b: Bench, preset: str) -> Row:
    return {"prep": gs.prepare(preset, b.tmp / "models")}


def encoder_sections(b: Bench, results: Row, last: bool = False) -> None:
    """Sections 1 and 2, model by model: export (first pass), then each runtime on both towers. The
    first pass runs every runtime but torch.compile, the last pass (after HTTP and training, on what
    budget is left) torch.compile alone: its compilations are the slowest and least needed figures."""
    results.setdefault("setup", [])
    for preset in b.args.models:
        if not last:
            step = run_point(
                b.budget, EXPORT_GUESS_S.get(preset, 60.0), b.reserve_s, partial(prepare, b, preset)
            )
            made: gs.Prepared | None = step.pop("prep", None)
            b.preps[preset], b.export_state[preset] = made, step
            results["setup"].append({"model": preset, **(made.setup if made else step)})
            b.progress.done(f"export {preset}", results["setup"][-1])
        prep = b.preps.get(preset)
        for rt in gs.runtimes(b.args.device):
            if (rt.kind == "torch.compile") == last:
                for tower in ("image", "text"):
                    state = {"model": preset, **b.export_state.get(preset, {})}
                    results.setdefault(tower, []).extend(encoder_rows(b, prep, rt, tower, state))
        if prep is not None:
            b.bundles[preset] = prep.bundle.parent
        if last:
            b.preps.pop(preset, None)
        del prep
        free_device_memory()
        save(b.args, results)


def free_device_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def http(b: Bench, results: Row) -> None:
    """Section 3, on the bundle section 1 exported (or a fresh export of --http-model)."""
    preset = b.args.http_model

    def section() -> Row:
        if preset not in b.bundles:
            b.bundles[preset] = gs.prepare(preset, b.tmp / "models").bundle.parent
        folder = b.bundles[preset]
        return gpu_e2e.http_section(
            folder.parent, folder.name, b.args.device, b.args.seconds, b.args.http_concurrency
        )

    need = b.args.seconds + 30 + (0 if preset in b.bundles else EXPORT_GUESS_S.get(preset, 60.0))
    results["http"] = run_point(b.budget, need, b.reserve_s, section)
    b.progress.done(f"HTTP {preset}", results["http"])
    save(b.args, results)


def train(b: Bench, results: Row) -> None:
    """Section 4: `zeroshot train` per preset, in a subprocess (bounded by the budget left)."""
    results["train"] = []
    workers = 1 if b.args.device == "cpu" else max(1, min(12, (os.cpu_count() or 2) - 2))
    for preset, steps, batch in b.args.train:

        def one(p: str = preset, s: int = steps, n: int = batch) -> Row:
            timeout = max(30.0, b.budget.total_s - b.budget.elapsed())
            return gpu_e2e.train_row(p, s, n, b.args.device, workers, timeout, b.tmp)

        row = {"preset": preset, **run_point(b.budget, TRAIN_GUESS_S.get(preset, 60.0), 0.0, one)}
        results["train"].append(row)
        b.progress.done(f"train {preset}", row)
    save(b.args, results)


def save(args: argparse.Namespace, results: Row) -> str:
    """The JSON at args.out and the table at args.table, rewritten after every section (a run cut
    short keeps what it measured); returns the table."""
    from gpu_table import table

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    text = table(results)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument(
        "--models", help="comma list of presets (cuda: ViT-B-32,ViT-L-14; cpu: tiny-vit,ViT-B-32)"
    )
    ap.add_argument("--max-batch", type=int, help="largest image batch (cuda 256, cpu 8)")
    ap.add_argument("--seconds", type=float, help="timed seconds per point (cuda 3, cpu 2, --quick 0.5)")
    ap.add_argument("--quick", action="store_true", help="tiny-vit, batches 1 and 8, 0.5 s: for the tests")
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time (default 480)")
    ap.add_argument("--http-model", help="preset served over HTTP (ViT-B-32; --quick tiny-vit)")
    ap.add_argument("--http-concurrency", type=int, help="requests in flight (cuda 32, cpu 4)")
    ap.add_argument("--cpu-compile", action="store_true", help="also torch.compile on the CPU (slow)")
    ap.add_argument("--out", type=Path, help="JSON (default bench/results/gpu-<device>.json)")
    ap.add_argument("--table", type=Path, help="also write the Markdown table here")
    a = ap.parse_args(argv)
    cpu = a.device == "cpu"
    default_models = "tiny-vit" if a.quick else ("tiny-vit,ViT-B-32" if cpu else "ViT-B-32,ViT-L-14")
    a.models = [m.strip() for m in (a.models or default_models).split(",") if m.strip()]
    a.max_batch = a.max_batch or (8 if a.quick or cpu else 256)
    a.batches = [n for n in IMAGE_BATCHES if n <= a.max_batch] or [a.max_batch]
    a.seconds = a.seconds or (0.5 if a.quick else 2.0 if cpu else 3.0)
    a.http_model = a.http_model or ("tiny-vit" if a.quick else "ViT-B-32")
    a.http_concurrency = a.http_concurrency or (4 if cpu else 32)
    a.train = TRAIN_QUICK if a.quick else TRAIN[a.device]
    a.out = a.out or BENCH / "results" / f"gpu-{a.device}.json"
    return a


def busy_s() -> tuple[float, float]:
    """(CPU seconds the whole machine was busy, CPU seconds of this process and its waited-for
    children: the server and the training runs) so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    machine = sum(int(x) for i, x in enumerate(cpu) if i not in (3, 4)) / ticks  # all but idle, iowait
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return machine, me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(args: argparse.Namespace) -> Row:
    """Every section within the budget; the results (also written to args.out as they come)."""
    budget, busy0 = Budget(args.budget_s), busy_s()
    results: Row = {"header": gs.header(args.device), "args": {k: str(v) for k, v in vars(args).items()}}
    save(args, results)
    points = len(args.models) * len(gs.runtimes(args.device)) * (len(args.batches) + len(TEXT_BATCHES))
    progress = Progress(points + len(args.models) + 1 + len(args.train), budget)
    train_s = sum(TRAIN_GUESS_S.get(p, 60.0) for p, _, _ in args.train)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        b = Bench(args, budget, progress, Path(tmp), gs.Memory(args.device))
        b.reserve_s = train_s + args.seconds + 30 + (0 if args.http_model in args.models else 45)
        encoder_sections(b, results)
        b.reserve_s = train_s
        http(b, results)
        b.reserve_s = 0.0
        train(b, results)
        encoder_sections(b, results, last=True)
    progress.close()
    (machine0, ours0), (machine1, ours1) = busy0, busy_s()
    other = max(0.0, (machine1 - machine0) - (ours1 - ours0)) / max(budget.elapsed(), 1e-9)
    results["budget"] = {"budget_s": args.budget_s, "elapsed_s": budget.elapsed(), "skipped": budget.skipped}
    results["budget"]["other_work_cores"] = other  # the host's CPU other processes used meanwhile
    print(save(args, results))
    return results


if __name__ == "__main__":
    run(parse_args())
