"""Small requests while a large label set is encoded: how much slower do they get?

    .venv/bin/python bench/cold_build.py [--builds 4] [--labels 1000] [--templates imagenet80]
    .venv/bin/python bench/cold_build.py --vit-b32 --labels 50 --builds 2   # a ViT-B/32-sized model

Starts `zeroshot serve` on the default model (127.0.0.1 only), times one label-set build alone, then
runs `--clients` loops of small requests (one image each, alternately against 3 cached labels and
against 3 labels never seen, so the second kind needs the text encoder too) for `--base-s` seconds
and then while `--builds` label sets of `--labels` new labels x the templates are PUT one after
another. Prints p50/p99 of each kind of small request with and without a build under way, and the
build's own speed with and without that traffic. Writes bench/results/cold_build.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import build, start, stop  # noqa: E402
from model.bundle.prompts import resolve_templates  # noqa: E402
from model.data.synthetic import SyntheticShapes  # noqa: E402

PORT = 8124
URL = f"http://127.0.0.1:{PORT}"
TOKEN = "bench-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CACHED = ["red circle", "blue heart", "yellow cross"]
WORDS = [
    *("amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "heron"),
    *("iris", "jade", "kelp", "lotus", "moss", "nectar", "onyx"),
]


def fresh_label(i: int, tag: str) -> str:
    """A label no earlier request used: words from a small list, so its token count is ordinary."""
    return f"{tag} {WORDS[i % 15]} {WORDS[(i // 15) % 15]} {i}"


def put_set(c: httpx.Client, name: str, labels: list[str], templates: str) -> tuple[float, float]:
    t = time.perf_counter()
    # ?wait=true: the build is what is timed, so the call holds until it ends (not 202 at once)
    body = {"labels": labels, "templates": templates}
    r = c.put(f"/v1/label-sets/{name}?wait=true", json=body, headers=ADMIN)
    t1 = time.perf_counter()
    if r.status_code != 200 or r.json()["embeddings"]["source"] != "encoded":
        raise RuntimeError(f"PUT {name}: {r.status_code} {r.text[:300]}")
    return t, t1


class Small:
    """Loops of small classify requests; every request's (start, end, kind, status) is kept."""

    def __init__(self, image: str, clients: int) -> None:
        self.image, self.clients = image, clients
        self.samples: list[tuple[float, float, str, int]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.n = 0

    def _loop(self) -> None:
        with httpx.Client(base_url=URL, timeout=600) as c:
            i = 0
            while not self.stop.is_set():
                cold = i % 2 == 1
                with self.lock:
                    self.n += 1
                    n = self.n
                labels = [fresh_label(3 * n + j, "small") for j in range(3)] if cold else CACHED
                t = time.perf_counter()
                r = c.post("/v1/classify", json={"images": [self.image], "labels": labels, "top_k": 1})
                self.samples.append(
                    (t, time.perf_counter(), "new labels" if cold else "cached labels", r.status_code)
                )
                i += 1

    def __enter__(self) -> Small:
        self.threads = [threading.Thread(target=self._loop) for _ in range(self.clients)]
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for th in self.threads:
            th.join()


def percentiles(ms: list[float]) -> dict[str, Any]:
    if not ms:
        return {"n": 0}
    a = np.array(ms)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
    }


def run(models: Path, args: argparse.Namespace) -> dict[str, Any]:
    buf = io.BytesIO()
    SyntheticShapes(64, seed=3, split="seen", length=1)[0].image.save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    tmp = Path(tempfile.mkdtemp(prefix="cold-build-"))
    env = {
        "ZEROSHOT_MODELS_DIR": str(models),
        "ZEROSHOT_MODEL_NAME": args.model_name,
        "ZEROSHOT_RELOAD_INTERVAL_S": "0",
        "ZEROSHOT_ADMIN_TOKEN": TOKEN,
        "ZEROSHOT_LABEL_SETS_DIR": str(tmp / "label-sets"),
        "ZEROSHOT_MAX_LABELS_PER_REQUEST": str(max(1000, args.labels)),
        **({"ZEROSHOT_TEXT_SLICE_MS": str(args.slice_ms)} if args.slice_ms else {}),
    }
    cmd = [sys.executable, "-m", "model.cli", "serve", "--host", "127.0.0.1", "--port", str(PORT)]
    proc = start(cmd, f"{URL}/readyz", env)
    try:
        with httpx.Client(base_url=URL, timeout=3600) as c:
            c.post("/v1/classify", json={"images": [image], "labels": CACHED})  # cache the 3 labels
            labels = [fresh_label(i, "alone") for i in range(args.labels)]
            t0, t1 = put_set(c, "alone", labels, args.templates)
            alone_s = t1 - t0
            windows = []
            with Small(image, args.clients) as small:
                time.sleep(args.base_s)
                base_end = time.perf_counter()
                for b in range(args.builds):
                    labels = [fresh_label(i, f"big{b}") for i in range(args.labels)]
                    windows.append(put_set(c, f"big{b}", labels, args.templates))
                    time.sleep(0.5)
        samples = list(small.samples)
    finally:
        stop(proc)
    bad = sum(s[3] != 200 for s in samples)
    during = [s for s in samples if any(a <= s[0] < b for a, b in windows)]
    base = [s for s in samples if s[1] <= base_end]
    prompts = args.labels * len(resolve_templates(args.templates))
    rows = {}
    for kind in ("cached labels", "new labels"):
        rows[kind] = {
            "alone": percentiles([1000 * (e - s) for s, e, k, _ in base if k == kind]),
            "during a build": percentiles([1000 * (e - s) for s, e, k, _ in during if k == kind]),
        }
    with_traffic = [b - a for a, b in windows]
    return {
        "prompts_per_build": prompts,
        "build_alone_s": round(alone_s, 2),
        "build_with_traffic_s": [round(x, 2) for x in with_traffic],
        "small_requests": rows,
        "non_200": bad,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--model-name", default="default")
    ap.add_argument("--vit-b32", action="store_true", help="a random ViT-B/32-sized bundle instead")
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--templates", default="imagenet80")
    ap.add_argument("--builds", type=int, default=4)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--base-s", type=float, default=8.0)
    ap.add_argument("--slice-ms", type=float, help="ZEROSHOT_TEXT_SLICE_MS for the server")
    args = ap.parse_args()
    models = Path(args.models_dir)
    if args.vit_b32:
        _, models = build(Path(tempfile.mkdtemp(prefix="cold-build-b32-")))
        args.model_name = "b32"
    out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "args": vars(args)}
    out.update(run(models, args))
    print(
        f"{out['prompts_per_build']:,} prompts per build: {out['build_alone_s']} s alone, "
        f"{out['build_with_traffic_s']} s with small requests going on; non-200: {out['non_200']}"
    )
    print(f"{'small request':<15} {'when':<16} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, by in out["small_requests"].items():
        for when, p in by.items():
            print(f"{kind:<15} {when:<16} {p['n']:>5} {p.get('p50_ms', '-'):>8} {p.get('p99_ms', '-'):>8}")
    res = ROOT / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / "cold_build.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
