"""A flood of distinct label lists against a live `zeroshot serve`: does RSS level off within
baseline + ZEROSHOT_LABEL_CACHE_BYTES (issue 16 asks for 25%)?

    .venv/bin/python bench/label_cache_flood.py [--cache-mb 64] [--requests 1500] [--labels 200]

Starts the server on the default model (127.0.0.1 only) with the cache bound given, sends one image
with `--labels` never-seen labels per request, one request at a time, and samples the server's RSS
(/proc/<pid>/status) and the cache's own count of its bytes (/v1/models). The baseline is the RSS
after warm-up and a few requests with the same two labels. Prints a table and writes
bench/results/label_cache_flood.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import start, stop  # noqa: E402
from model.data.synthetic import SyntheticShapes  # noqa: E402

PORT = 8123


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-mb", type=float, default=64.0, help="ZEROSHOT_LABEL_CACHE_BYTES, in MiB")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--labels", type=int, default=200, help="new labels per request")
    ap.add_argument("--models-dir", default="models")
    args = ap.parse_args()

    buf = io.BytesIO()
    SyntheticShapes(64, seed=3, split="seen", length=1)[0].image.save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    bound = int(args.cache_mb * 1024 * 1024)
    env = {
        "ZEROSHOT_MODELS_DIR": args.models_dir,
        "ZEROSHOT_LABEL_CACHE_BYTES": str(bound),
        "ZEROSHOT_RELOAD_INTERVAL_S": "0",
        "ZEROSHOT_MAX_LABELS_PER_REQUEST": str(max(1000, args.labels)),
    }
    base = f"http://127.0.0.1:{PORT}"
    cmd = [sys.executable, "-m", "model.cli", "serve", "--port", str(PORT)]
    proc: subprocess.Popen[bytes] = start(cmd, f"{base}/readyz", env)
    samples: list[dict[str, float]] = []
    try:
        with httpx.Client(base_url=base, timeout=120) as c:
            for _ in range(20):
                c.post("/v1/classify", json={"images": [image], "labels": ["red circle", "blue square"]})
            baseline = rss_mb(proc.pid)
            t0 = time.monotonic()
            for i in range(args.requests):
                labels = [f"thing {i} number {j}" for j in range(args.labels)]
                r = c.post("/v1/classify", json={"images": [image], "labels": labels, "templates": "none"})
                r.raise_for_status()
                if i % 50 == 49 or i == args.requests - 1:
                    cache = c.get("/v1/models").json()["label_cache"]
                    samples.append(
                        {
                            "requests": i + 1,
                            "labels": (i + 1) * args.labels,
                            "rss_mb": round(rss_mb(proc.pid), 1),
                            "cache_mb": round(cache["bytes"] / 2**20, 1),
                            "entries": cache["entries"],
                            "s": round(time.monotonic() - t0, 1),
                        }
                    )
                    print(json.dumps(samples[-1]), flush=True)
    finally:
        stop(proc)

    final = samples[-1]["rss_mb"]
    limit = baseline + bound / 2**20
    tail = [s["rss_mb"] for s in samples[len(samples) // 2 :]]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "cache_bytes": bound,
        "labels_per_request": args.labels,
        "baseline_rss_mb": round(baseline, 1),
        "baseline_plus_bound_mb": round(limit, 1),
        "final_rss_mb": final,
        "final_over_baseline_plus_bound": round(final / limit, 3),
        "second_half_rss_growth_mb": round(max(tail) - min(tail), 1),
        "samples": samples,
    }
    growth = result["second_half_rss_growth_mb"]
    print(
        f"baseline {baseline:.0f} MB + bound {bound / 2**20:.0f} MB = {limit:.0f} MB; "
        f"final RSS {final:.0f} MB ({final / limit:.2f}x); growth over the second half: {growth} MB"
    )
    out = ROOT / "bench" / "results" / "label_cache_flood.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
