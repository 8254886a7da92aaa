"""End to end over HTTP: our server against the Hugging Face pipeline baseline, on the same weights.

    .venv/bin/python bench/http_load.py [--concurrency 4] [--seconds 15] [--big-labels 1000]
    .venv/bin/python bench/http_load.py --sweep 1,2,4,8 [--seconds 8] [--sweep-scenarios a,c] \
        [--wait-quiet 180]

Builds a randomly initialised ViT-B/32 with `transformers` (QuickGELU, the paper's sizes), saves it
as a Hugging Face folder for the baseline (bench/baseline_hf.py) and converts the same weights into
one of our bundles. Each server runs alone, in its own process; this process is the load generator:
`--concurrency` requests kept in flight for `--seconds` per scenario, reporting throughput,
p50/p95/p99 latency and errors. The load generator (bench/loadgen.py, `--client raw`) sends
prebuilt requests on keep-alive connections, so it takes little CPU from the servers it shares the
machine with; `--client httpx` uses httpx instead (about 1 ms of client CPU per request).
  (a) one 512x512 JPEG photo + 10 labels ("a photo of a {}.")
  (b) one photo + a 1,000-label set: ours registered once with the 80 ImageNet templates;
      the pipeline encodes its 1,000 labels with one template on every request
  (c) 8 photos per request + 10 labels
`--backends onnxruntime,openvino:bf16` measures our server on each backend (and precision) back to back
in one run, the first as the reference, and prints each one's ratio to it; the pipeline runs once.
Also: the raw image-encoder throughput (onnxruntime, in process) at the batch sizes the server formed,
so the gap between the two is the server's overhead; and the cold build time of the big label set.
Writes bench/results/http_load.json.

`--sweep` measures scenarios (a) and (c) (no label-set build) at each concurrency for both servers,
writes bench/results/http_sweep.json and draws bench/charts/http_sweep.png: throughput and
p50/p95 latency against concurrency, ours against the pipeline. Both servers stay up and each point
is measured for both back to back; every point records the CPU that other processes used meanwhile
(`other_work_cores`), and `--wait-quiet S` waits up to S seconds before each point for a shared
machine to go quiet. Each point also records CPU time: the server's per image, the encoder alone's
per image at the batch the server formed, and the load generator's per request.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from loadgen import Request, run_load, summarize

ROOT = Path(__file__).resolve().parents[1]
LABELS10 = ["cat", "dog", "astronaut", "coffee", "rocket", "car", "tree", "house", "bird", "boat"]
TOKEN = "bench-admin-token"


def photos() -> list[bytes]:
    from PIL import Image
    from skimage import data

    out = []
    for arr in (data.astronaut(), data.chelsea(), data.coffee(), data.rocket()):
        buf = io.BytesIO()
        Image.fromarray(arr).resize((512, 512)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def new_results(**fields: Any) -> dict[str, Any]:
    """The JSON a run writes: the machine, the run's own fields, then figures per server."""
    machine = f"{platform.machine()}, {cpu_name()}, {os.cpu_count()} CPUs"
    return {"machine": machine, **fields, "ours": {}, "hf": {}}


def build(tmp: Path) -> tuple[Path, Path]:
    """A random ViT-B/32 as a Hugging Face folder and, with the same weights, as our bundle."""
    print("building a random ViT-B/32 (transformers) and its bundle ...", flush=True)
    import torch
    import transformers

    from model.bundle.preprocess import PreprocessConfig, preprocess_bytes
    from model.bundle.tokenizer import ClipTokenizer
    from model.export import export_bundle
    from model.weights import model_from_hf

    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config={"hidden_act": "quick_gelu"},
        vision_config={"hidden_act": "quick_gelu"},
        projection_dim=512,
    )
    hf = transformers.CLIPModel(cfg).eval()
    hf_dir = tmp / "hf"
    hf.save_pretrained(hf_dir)
    ClipTokenizer.clip_bpe().save(hf_dir / "tokenizer.json")
    ours = model_from_hf(hf.state_dict(), cfg.to_dict())
    pre = PreprocessConfig(image_size=224)
    sample = np.stack([preprocess_bytes(p, pre) for p in photos()])
    export_bundle(ours, ClipTokenizer.clip_bpe(), tmp / "models" / "b32", sample, LABELS10, version="v1")
    return hf_dir, tmp / "models"


def start(cmd: list[str], url: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd} did not start")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


CLIENT = "raw"  # set by --client: "raw" (bench/loadgen.py) or "httpx"


async def load(
    url: str, make: Request, concurrency: int, seconds: float, min_requests: int = 0
) -> dict[str, Any]:
    """`concurrency` requests in flight for `seconds`, and until at least `min_requests` have started
    (so that a slow server still gives a percentile from more than a couple of requests)."""
    if CLIENT == "raw":
        return await run_load(url, make, concurrency, seconds, min_requests)
    latencies: list[float] = []
    errors = started = 0
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as c:
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal errors, started
            while time.monotonic() < end or started < min_requests:
                t = time.monotonic()
                started += 1
                try:
                    r = await c.post(url, **make(started))
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.monotonic() - t)
                errors += not ok

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - t0
    return summarize(latencies, errors, wall)


class OtherWork:
    """CPU used by processes other than ours (this one and the servers) while a point is measured,
    as cores busy on average: the machine is shared, and this says how much it was."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.start = self._sample()

    def _sample(self) -> tuple[float, int, int]:
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        busy = sum(int(x) for i, x in enumerate(cpu) if i not in (3, 4))  # all but idle, iowait
        ours = 0
        for pid in self.pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ours += int(fields[11]) + int(fields[12])  # utime + stime, all threads
        return time.monotonic(), busy, ours

    def cores(self) -> float:
        t1, busy1, ours1 = self._sample()
        t0, busy0, ours0 = self.start
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / self.ticks / max(t1 - t0, 1e-9)


def wait_for_quiet(pids: list[int], max_wait_s: float, below: float = 0.2) -> float:
    """On a shared machine: wait (up to max_wait_s) until other work uses under `below` cores over a
    2 s window, so that a point measures our servers rather than a neighbour. Returns seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait_s:
        other = OtherWork(pids)
        time.sleep(2.0)
        if other.cores() < below:
            break
    return time.monotonic() - t0


_ENCODERS: dict[Path, Any] = {}


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) that process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_image_rate(models: Path, batch: int, seconds: float = 3.0) -> float:
    return raw_image_stats(models, batch, seconds)[0]


def raw_image_stats(models: Path, batch: int, seconds: float = 3.0) -> tuple[float, float]:
    """The image encoder alone, in this process: images/s (median call) and CPU ms per image."""
    from model.bundle.encoders import OnnxEncoders
    from model.bundle.format import current_bundle

    if models not in _ENCODERS:  # loaded once per run: a sweep measures it after every point
        _ENCODERS[models] = OnnxEncoders(current_bundle(models / "b32"), device="cpu")
    enc = _ENCODERS[models]
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    enc.encode_images(x)
    times: list[float] = []
    cpu0 = time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        enc.encode_images(x)
        times.append(time.perf_counter() - t)
    cpu_ms = 1000 * (time.process_time() - cpu0) / (batch * len(times))
    return batch / statistics.median(times), cpu_ms


def ours_env(models: Path, tmp: Path, jpeg_draft: bool) -> dict[str, str]:
    return {
        "ZEROSHOT_MODELS_DIR": str(models),
        "ZEROSHOT_MODEL_NAME": "b32",
        "ZEROSHOT_ADMIN_TOKEN": TOKEN,
        "ZEROSHOT_LABEL_SETS_DIR": str(tmp / "sets"),
        "ZEROSHOT_RELOAD_INTERVAL_S": "0",
        "ZEROSHOT_JPEG_DRAFT": "true" if jpeg_draft else "false",
    }


def sweep_requests(imgs: list[bytes], ours: bool) -> dict[str, tuple[int, Request]]:
    """Scenario -> (images per request, request maker) for the concurrency sweep."""

    def make(n: int) -> Request:
        def request(i: int) -> dict[str, Any]:
            files = [("image", (f"{k}.jpg", imgs[(i + k) % len(imgs)], "image/jpeg")) for k in range(n)]
            data = {"labels": json.dumps(LABELS10), **({"templates": "default"} if ours else {})}
            return {"files": files, "data": data}

        return request

    return {"a": (1, make(1)), "c": (8, make(8))}


def run_sweep(args: argparse.Namespace) -> None:
    """Both servers at each concurrency, for (a) and optionally (c); JSON + PNG + table."""
    levels = [int(x) for x in args.sweep.split(",")]
    scenarios = [x.strip() for x in args.sweep_scenarios.split(",")]
    seconds = args.seconds or 8.0
    imgs = photos()
    results = new_results(seconds_per_point=seconds, concurrency=levels)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        hf_dir, models = build(tmp)
        servers = [
            (
                "ours",
                [sys.executable, "-m", "model.cli", "serve", "--port", "8111"],
                "http://127.0.0.1:8111",
                "/readyz",
                "/v1/classify",
                ours_env(models, tmp, args.jpeg_draft),
            ),
            (
                "hf",
                [sys.executable, "bench/baseline_hf.py", "--model", str(hf_dir), "--port", "8112"],
                "http://127.0.0.1:8112",
                "/healthz",
                "/classify",
                {},
            ),
        ]
        # Both servers stay up and each point is measured for ours and then the pipeline back to
        # back, so both see the same background load on a shared machine; an idle server costs
        # next to nothing.
        chosen = servers[:1] if args.skip_baseline else servers
        procs = []
        try:
            for _, cmd, base, ready, _, env in chosen:
                procs.append(start(cmd, base + ready, env))
            for name in scenarios:
                for who, _, base, _, route, _ in chosen:  # warm-up: first calls, allocations
                    asyncio.run(load(base + route, sweep_requests(imgs, who == "ours")[name][1], 2, 2.0))
                for c in levels:
                    for (who, _, base, _, route, _), proc in zip(chosen, procs, strict=True):
                        per_request, make = sweep_requests(imgs, who == "ours")[name]
                        pids = [p.pid for p in procs]
                        row = measure_point(
                            base, route, who == "ours", make, c, seconds, pids, proc.pid, models, args
                        )
                        row["server_cpu_ms_per_image"] = row.pop("server_cpu_ms_per_request") / per_request
                        row["images_per_s"] = row["requests_per_s"] * per_request
                        results[who].setdefault(name, {})[str(c)] = row
                        print(f"{who} ({name}) concurrency {c}: {row}", flush=True)
        finally:
            for proc in procs:
                stop(proc)
        batches = sorted(
            {1, 8, *(round(r["mean_batch"]) for s in results["ours"].values() for r in s.values())}
        )
        results["raw_images_per_s"] = {str(b): raw_image_rate(models, b) for b in batches}
        print(f"raw image encoder: {results['raw_images_per_s']}", flush=True)
    print_sweep(results)
    if args.skip_baseline:  # a quick look at our server alone: no files written
        return
    out = ROOT / "bench/results/http_sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    chart = ROOT / "bench/charts/http_sweep.png"  # committed, shown in bench/README.md
    chart.parent.mkdir(parents=True, exist_ok=True)
    png = plot_sweep(results, chart)
    print(f"wrote {out} and {png}")


def measure_point(
    base: str,
    route: str,
    ours: bool,
    make: Request,
    concurrency: int,
    seconds: float,
    pids: list[int],
    server_pid: int,
    models: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One point of the sweep. With --wait-quiet, a point during which other work took more than 0.2
    cores is measured again (up to three tries; the quietest is kept).

    Besides wall-clock throughput it records CPU time: the server's per request and the load
    generator's, and (ours) the encoder alone's per image, so that the server's overhead per image is
    a difference of CPU times, which a noisy shared machine disturbs far less than throughput."""
    best: dict[str, Any] | None = None
    for _ in range(3 if args.wait_quiet else 1):
        waited = wait_for_quiet(pids, args.wait_quiet) if args.wait_quiet else 0.0
        before = httpx.get(f"{base}/v1/models").json()["batcher"] if ours else None
        other = OtherWork(pids)
        cpu_server, cpu_client = process_cpu_s(server_pid), process_cpu_s(os.getpid())
        row = asyncio.run(load(base + route, make, concurrency, seconds, min_requests=2 * concurrency + 2))
        row["server_cpu_ms_per_request"] = 1000 * (process_cpu_s(server_pid) - cpu_server) / row["requests"]
        row["client_cpu_ms_per_request"] = 1000 * (process_cpu_s(os.getpid()) - cpu_client) / row["requests"]
        row["other_work_cores"] = other.cores()
        row["waited_for_quiet_s"] = waited
        if before is not None:  # the batches formed, and the raw encoder at that batch right now
            after = httpx.get(f"{base}/v1/models").json()["batcher"]
            batches = max(1, after["batches"] - before["batches"])
            row["mean_batch"] = (after["images"] - before["images"]) / batches
            rate, cpu_ms = raw_image_stats(models, max(1, round(row["mean_batch"])), 3.0)
            row["raw_images_per_s"], row["raw_cpu_ms_per_image"] = rate, cpu_ms
        if best is None or row["other_work_cores"] < best["other_work_cores"]:
            best = row
        if row["other_work_cores"] < 0.2:
            break
    assert best is not None
    return best


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def print_sweep(results: dict[str, Any]) -> None:
    """The table; "of raw": our images/s against the raw encoder at the batch formed, measured
    right after the point; "cpu/img": CPU ms per image of our server and of the encoder alone at
    that batch (their difference is the server's overhead); "client": the load generator's CPU ms
    per request; "other": cores used by other work during the point (the larger of the two
    servers' points)."""
    print(
        f"\n{'scen.':<6}{'conc.':>6}{'ours img/s':>12}{'p50':>7}{'p95':>7}{'batch':>7}{'of raw':>8}"
        f"{'cpu/img':>9}{'enc':>7}{'client':>8}"
        f"{'HF img/s':>10}{'p50':>8}{'p95':>8}{'ratio':>7}{'other':>7}"
    )
    for name, rows in results["ours"].items():
        for c, o in rows.items():
            share = o["images_per_s"] / o["raw_images_per_s"]
            line = (
                f"({name})  {c:>6}{o['images_per_s']:>12.1f}{o['p50_ms']:>7.0f}{o['p95_ms']:>7.0f}"
                f"{o['mean_batch']:>7.1f}{100 * share:>7.0f}%{o['server_cpu_ms_per_image']:>9.1f}"
                f"{o['raw_cpu_ms_per_image']:>7.1f}{o['client_cpu_ms_per_request']:>8.2f}"
            )
            h = results["hf"].get(name, {}).get(c)
            if h is not None:
                line += (
                    f"{h['images_per_s']:>10.2f}{h['p50_ms']:>8.0f}{h['p95_ms']:>8.0f}"
                    f"{o['images_per_s'] / max(h['images_per_s'], 1e-9):>6.1f}x"
                    f"{max(o['other_work_cores'], h['other_work_cores']):>7.2f}"
                )
            print(line)


def plot_sweep(results: dict[str, Any], path: Path) -> Path:
    """Two panels against concurrency: images/s, and p50 (solid) / p95 (dashed) latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (thr, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        "ours": ("tab:blue", "ours (onnxruntime server)"),
        "hf": ("tab:orange", "transformers pipeline"),
    }
    markers = {"a": "o", "c": "s"}
    what = {"a": "(a) 1 image + 10 labels", "c": "(c) 8 images + 10 labels"}
    for who, (color, label) in styles.items():
        for name, rows in results[who].items():
            cs = [int(c) for c in rows]
            kw = {"color": color, "marker": markers.get(name, "o")}
            thr.plot(cs, [r["images_per_s"] for r in rows.values()], label=f"{label}, {what[name]}", **kw)
            lat.plot(cs, [r["p50_ms"] for r in rows.values()], label=f"{label}, {what[name]}, p50", **kw)
            lat.plot(cs, [r["p95_ms"] for r in rows.values()], linestyle="--", alpha=0.6, **kw)
    best = max(results["raw_images_per_s"].values())  # the ceiling: the encoder alone, at its best batch
    thr.axhline(best, color="gray", linestyle=":", label="raw image encoder alone (best batch)")
    for ax in (thr, lat):
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["concurrency"], [str(c) for c in results["concurrency"]])
        ax.set_xlabel("requests in flight (concurrency)")
        ax.grid(True, which="both", alpha=0.3)
    thr.set_ylabel("images / s")
    thr.set_yscale("log")
    thr.set_title("Throughput")
    lat.set_ylabel("latency per request, ms (p50 solid, p95 dashed)")
    lat.set_yscale("log")
    lat.set_title("Latency")
    thr.legend(fontsize=7, loc="best")
    fig.suptitle(f"Random ViT-B/32 over HTTP, CPU only: {results['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_backend(spec: str) -> tuple[str, dict[str, str]]:
    """ "onnxruntime", "openvino:bf16", "onnxruntime:int8" -> (label, the server's environment)."""
    backend, _, precision = spec.strip().partition(":")
    if backend not in ("onnxruntime", "openvino"):
        raise SystemExit(f"--backends: {backend!r} is not onnxruntime or openvino")
    env = {"ZEROSHOT_BACKEND": backend, "ZEROSHOT_PRECISION": precision or "fp32"}
    return f"{backend}-{precision or 'fp32'}", env


def measure_ours(
    label: str,
    env: dict[str, str],
    args: argparse.Namespace,
    big: list[str],
    files: Callable[[int, int], list[tuple[str, tuple[str, bytes, str]]]],
) -> dict[str, Any]:
    """Our server on one backend: the cold build of the big label set, then scenarios (a)-(c)."""
    port = 8111
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    Path(env["ZEROSHOT_LABEL_SETS_DIR"]).parent.mkdir(parents=True, exist_ok=True)
    proc = start([sys.executable, "-m", "model.cli", "serve", "--port", str(port)], f"{base}/readyz", env)
    try:
        t = time.monotonic()
        r = httpx.put(
            f"{base}/v1/label-sets/big?wait=true",  # the build is timed: hold until it ends
            json={"labels": big, "templates": "imagenet80"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=3600,
        )
        r.raise_for_status()
        out["label_set_build_s"] = time.monotonic() - t
        print(
            f"{label}: registered {len(big)} labels x 80 templates in {out['label_set_build_s']:.1f} s",
            flush=True,
        )
        scenarios: dict[str, Request] = {
            "a": lambda i: {
                "files": files(i, 1),
                "data": {"labels": json.dumps(LABELS10), "templates": "default"},
            },
            "b": lambda i: {"files": files(i, 1), "data": {"label_set": "big"}},
            "c": lambda i: {
                "files": files(i, 8),
                "data": {"labels": json.dumps(LABELS10), "templates": "default"},
            },
        }
        for name, make in scenarios.items():
            asyncio.run(load(f"{base}/v1/classify", make, args.concurrency, 2.0))  # warm-up
            before = httpx.get(f"{base}/v1/models").json()["batcher"]
            row = asyncio.run(load(f"{base}/v1/classify", make, args.concurrency, args.seconds))
            after = httpx.get(f"{base}/v1/models").json()["batcher"]
            row["mean_batch"] = (after["images"] - before["images"]) / max(
                1, after["batches"] - before["batches"]
            )
            out[name] = row
            print(f"{label} ({name}): {row}", flush=True)
    finally:
        stop(proc)
    return out


def print_backends(results: dict[str, Any]) -> None:
    """Each backend's req/s (p50) per scenario and its cold build, with its ratio to the first."""
    runs = results["by_backend"]
    if len(runs) < 2:
        return
    labels = list(runs)
    ref = runs[labels[0]]
    print(f"\n{'scenario':<12}" + "".join(f"{label:>30}" for label in labels))
    for name in ("a", "b", "c"):
        cells = []
        for label in labels:
            row = runs[label][name]
            ratio = row["requests_per_s"] / max(ref[name]["requests_per_s"], 1e-9)
            cells.append(f"{row['requests_per_s']:.2f} req/s ({row['p50_ms']:.0f} ms) {ratio:.2f}x")
        print(f"({name}){'':<9}" + "".join(f"{c:>30}" for c in cells))
    builds = [f"{runs[label]['label_set_build_s']:.1f} s" for label in labels]
    print(f"{'cold build':<12}" + "".join(f"{b:>30}" for b in builds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=None, help="per scenario (15) or sweep point (8)")
    ap.add_argument("--big-labels", type=int, default=1000)
    ap.add_argument("--jpeg-draft", action="store_true", help="serve with ZEROSHOT_JPEG_DRAFT=true")
    ap.add_argument("--skip-baseline", action="store_true", help="measure our server only")
    ap.add_argument(
        "--backends",
        default="onnxruntime",
        help="our server on each, back to back, e.g. onnxruntime,openvino:bf16 (the first is the reference)",
    )
    ap.add_argument("--sweep", help="comma-separated concurrencies: throughput/latency sweep + chart")
    ap.add_argument("--sweep-scenarios", default="a,c", help="scenarios in the sweep (default a,c)")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="sweep: before each point, wait up to this many seconds for other work to stop",
    )
    ap.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator: raw (prebuilt requests on asyncio streams, bench/loadgen.py) or httpx",
    )
    args = ap.parse_args()
    global CLIENT
    CLIENT = args.client
    if args.sweep:
        run_sweep(args)
        return
    args.seconds = args.seconds or 15.0
    imgs = photos()
    big = [f"object category number {i}" for i in range(args.big_labels)]

    def files(i: int, n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
        return [("image", (f"{k}.jpg", imgs[(i + k) % len(imgs)], "image/jpeg")) for k in range(n)]

    backends = [parse_backend(b) for b in args.backends.split(",")]
    results = new_results(concurrency=args.concurrency, backends=[label for label, _ in backends])
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        hf_dir, models = build(tmp)
        results["by_backend"] = {}
        for label, extra_env in backends:  # back to back in one run: ratios on the same machine state
            env = {**ours_env(models, tmp / label, args.jpeg_draft), **extra_env}
            results["by_backend"][label] = measure_ours(label, env, args, big, files)
        results["ours"] = results["by_backend"][backends[0][0]]  # the first is the reference
        # raw encoder at the batch the server formed in (a), and at 8 for (c)
        mean_a = max(1, round(results["ours"]["a"]["mean_batch"]))
        results["raw_images_per_s"] = {str(b): raw_image_rate(models, b) for b in sorted({1, mean_a, 8})}
        print(f"raw image encoder: {results['raw_images_per_s']}", flush=True)
        results["jpeg_draft"] = args.jpeg_draft
        if args.skip_baseline:
            raw = results["raw_images_per_s"][str(mean_a)]
            served = results["ours"]["a"]["requests_per_s"]
            print(
                f"(a) server {served:.2f} images/s vs raw encoder {raw:.2f} at batch {mean_a}: "
                f"{100 * served / raw:.0f}%"
            )
            print_backends(results)
            write_results(results)
            return
        # --- the Hugging Face pipeline baseline, same weights ---
        port = 8112
        hbase = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "bench/baseline_hf.py", "--model", str(hf_dir), "--port", str(port)]
        proc = start(cmd, f"{hbase}/healthz")
        try:
            hf_scenarios: dict[str, Request] = {
                "a": lambda i: {"files": files(i, 1), "data": {"labels": json.dumps(LABELS10)}},
                "b": lambda i: {"files": files(i, 1), "data": {"labels": json.dumps(big)}},
                "c": lambda i: {"files": files(i, 8), "data": {"labels": json.dumps(LABELS10)}},
            }
            for name, make in hf_scenarios.items():
                if name != "b":  # warm-up ((b) takes half a minute a request: its first is warm enough)
                    asyncio.run(load(f"{hbase}/classify", make, args.concurrency, 2.0))
                row = asyncio.run(load(f"{hbase}/classify", make, args.concurrency, args.seconds))
                results["hf"][name] = row
                print(f"hf ({name}): {row}", flush=True)
        finally:
            stop(proc)
    print()
    print(
        f"{'scenario':<34}{'ours req/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'HF req/s':>10}{'p50 ms':>9}{'ratio':>8}"
    )
    for name, what in (
        ("a", "1 image + 10 labels"),
        ("b", f"1 image + {len(big)} labels"),
        ("c", "8 images + 10 labels"),
    ):
        o, h = results["ours"][name], results["hf"][name]
        ratio = o["requests_per_s"] / max(h["requests_per_s"], 1e-9)
        print(
            f"({name}) {what:<30}{o['requests_per_s']:>11.2f}{o['p50_ms']:>9.0f}{o['p99_ms']:>9.0f}"
            f"{h['requests_per_s']:>10.2f}{h['p50_ms']:>9.0f}{ratio:>7.1f}x"
        )
    raw = results["raw_images_per_s"][str(mean_a)]
    share = results["ours"]["a"]["requests_per_s"] / raw
    served = results["ours"]["a"]["requests_per_s"]
    print(f"(a) server {served:.2f} images/s vs raw encoder {raw:.2f} at batch {mean_a}: {100 * share:.0f}%")
    print_backends(results)
    write_results(results)


def write_results(results: dict[str, Any]) -> None:
    out = ROOT / "bench/results/http_load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
