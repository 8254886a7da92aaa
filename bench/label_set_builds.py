"""Large label-set builds in the background, and a hot reload with a registered set under load.

    .venv/bin/python bench/label_set_builds.py [--labels 1000] [--templates imagenet80]

Starts `zeroshot serve` on a copy of the default model (127.0.0.1, a free port, temporary models and
label-sets folders: the real ones are never touched), then measures:

A. Background build. Small classify requests (one 64x64 PNG, 3 ad-hoc labels cached by a warm-up
   request) sent back to back by 1 client, then by 2, first with nothing building and then while
   `PUT /v1/label-sets/...` builds `--labels` labels x the templates (a new set each time): how long
   the PUT took to answer (202 expected), the build's seconds with a few progress samples from GET,
   and the small requests' count, failures, p50/p99/max.
B. Hot reload. With the set `big` ready, 3 clients classify with `label_set=big` continuously; after
   `--steady-s` a copy of the bundle is published as a new version (its manifest names the version,
   so its sha differs and every registered set is built again for it) and CURRENT points at it; the
   clients go on `--after-s` after GET /v1/models shows the new version. Reports failed requests,
   latency before the reload, from CURRENT's change to the swap (load, warm-up, preparation) and in
   the 5 s after the swap, the preparation's seconds, and whether anything was built on demand after
   the swap (label-cache encoded_prompts at the swap and at the end; "encoding N labels" log lines).

Prints a table; writes bench/results/label_set_builds.json (and the server's log beside it).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.bundle.format import MANIFEST, current_bundle, set_current  # noqa: E402
from model.data.synthetic import SyntheticShapes  # noqa: E402

TOKEN = "bench-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CACHED = ["red circle", "blue heart", "yellow cross"]
Body = dict[str, Any]


class Sample(NamedTuple):
    start: float
    end: float
    status: int  # 0: no answer (a transport error)
    version: str | None  # the model that answered
    error: str | None


class Clients:
    """`n` threads sending one classify body back to back; every request becomes a Sample."""

    def __init__(self, url: str, body: Body, n: int) -> None:
        self.url, self.body, self.n = url, body, n
        self.samples: list[Sample] = []
        self.stop = threading.Event()

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                try:
                    r = c.post("/v1/classify", json=self.body)
                    ok = r.status_code == 200
                    version, error = (r.json()["model"]["version"], None) if ok else (None, r.text[:300])
                    s = Sample(t, time.perf_counter(), r.status_code, version, error)
                except (httpx.HTTPError, ValueError) as e:
                    s = Sample(t, time.perf_counter(), 0, None, f"{type(e).__name__}: {e}")
                self.samples.append(s)

    def __enter__(self) -> Clients:
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.n)]
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for th in self.threads:
            th.join()


def stats(samples: list[Sample]) -> dict[str, Any]:
    ms = np.array([1000 * (s.end - s.start) for s in samples])
    out: dict[str, Any] = {"n": len(samples), "failures": sum(s.status != 200 for s in samples)}
    if len(ms):
        out |= {k: round(float(np.percentile(ms, q)), 1) for k, q in (("p50_ms", 50), ("p99_ms", 99))}
        out["max_ms"] = round(float(ms.max()), 1)
    out["errors"] = sorted({f"{s.status} {s.error}" for s in samples if s.status != 200})[:5]
    return out


def within(samples: list[Sample], a: float, b: float) -> list[Sample]:
    return [s for s in samples if a <= s.start and s.end <= b]


def copy_bundle(model_dir: Path, version: str) -> None:
    """The bundle served, copied in as `version`, not yet published. Its manifest names the version,
    which changes the bundle's sha (the sha256 of manifest.json), as a new export would."""
    dst = model_dir / version
    shutil.copytree(current_bundle(model_dir, verify_hashes=False).path, dst)
    manifest = json.loads((dst / MANIFEST).read_text()) | {"version": version}
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=2))


def background_build(
    c: httpx.Client, body: Body, name: str, word: str, n: int, a: argparse.Namespace
) -> Body:
    url = str(c.base_url)
    with Clients(url, body, n) as idle:
        time.sleep(a.idle_s)
    labels = [f"{word} number {i}" for i in range(a.labels)]
    with Clients(url, body, n) as busy:
        t0 = time.perf_counter()
        r = c.put(f"/v1/label-sets/{name}", json={"labels": labels, "templates": a.templates}, headers=ADMIN)
        put_s = time.perf_counter() - t0
        if r.status_code not in (200, 202):
            raise RuntimeError(f"PUT {name}: {r.status_code} {r.text[:300]}")
        progress = []
        while True:
            g = c.get(f"/v1/label-sets/{name}").json()
            b, keys = g["build"], ("prompts_done", "prompts_total", "prompts_per_s", "eta_s")
            progress.append({"t_s": round(time.perf_counter() - t0, 1)} | {k: b[k] for k in keys})
            if g["status"] != "building":
                break
            time.sleep(1.0)
        t1 = time.perf_counter()
    if g["status"] != "ready":
        raise RuntimeError(f"build of {name}: {g['status']} {b.get('error')}")
    return {
        "clients": n,
        "put_status": r.status_code,
        "put_s": round(put_s, 3),
        "build_s": b["elapsed_s"],
        "ready_seen_s": round(t1 - t0, 2),
        "progress": progress,
        "idle": stats(idle.samples),
        "building": stats(within(busy.samples, t0, t1)),
    }


def hot_reload(c: httpx.Client, image: str, model_dir: Path, log: Path, a: argparse.Namespace) -> Body:
    m0 = c.get("/v1/models").json()
    new, prep_seen = f"{m0['version']}-copy", False
    with Clients(str(c.base_url), {"images": [image], "label_set": "big", "top_k": 1}, 3) as load:
        time.sleep(a.steady_s / 2)
        copy_bundle(model_dir, new)  # 55 MB: copied while the window "before the reload" runs
        time.sleep(a.steady_s / 2)
        t_pub = time.perf_counter()
        set_current(model_dir, new)
        while (m := c.get("/v1/models").json())["version"] != new and time.perf_counter() - t_pub < 900:
            prep_seen |= m["reload_preparation"]["running"] is not None
            time.sleep(0.1)
        t_swap, at_swap = time.perf_counter(), m["label_cache"]["encoded_prompts"]
        time.sleep(a.after_s)
        t_end = time.perf_counter()
    end = c.get("/v1/models").json()
    end_prompts = end["label_cache"]["encoded_prompts"]
    lines = log.read_text(errors="replace").splitlines()
    swap = next((i for i, ln in enumerate(lines) if "now serving" in ln and new in ln), len(lines))
    encoding = f"encoding {a.labels} labels"
    versions = {str(v): sum(s.version == v for s in load.samples) for v in {s.version for s in load.samples}}
    return {
        "old": {"version": m0["version"], "sha256": m0["sha256"]},
        "new": {"version": end["version"], "sha256": end["sha256"]},
        "swapped": m["version"] == new,
        "swap_logged": swap < len(lines),
        "reload_error": end["reload_error"],
        "preparation_seen_running": prep_seen,
        "preparation": end["reload_preparation"]["last"],
        "current_to_swap_seen_s": round(t_swap - t_pub, 2),
        "windows": {
            "before the reload": stats(within(load.samples, 0, t_pub)),
            "CURRENT changed, until the swap": stats(within(load.samples, t_pub, t_swap)),
            "first 5 s after the swap": stats([s for s in load.samples if t_swap <= s.start < t_swap + 5]),
            "the rest after the swap": stats(within(load.samples, t_swap + 5, t_end)),
            "all": stats(load.samples),
        },
        "answers_by_version": versions,
        "encoded_prompts": [m0["label_cache"]["encoded_prompts"], at_swap, end_prompts],
        "encoding_lines": [sum(encoding in ln for ln in part) for part in (lines[:swap], lines[swap:])],
        "log_after_swap_suspect": [
            ln for ln in lines[swap:] if " ERROR " in ln or "Traceback" in ln or '" 5' in ln
        ][:20],
    }


def run(a: argparse.Namespace, tmp: Path) -> Body:
    src = current_bundle(ROOT / "models" / "default", verify_hashes=False)
    model_dir = tmp / "models" / "default"
    shutil.copytree(src.path, model_dir / src.version)
    set_current(model_dir, src.version)
    with socket.socket() as sock:  # a free port
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "ZEROSHOT_MODELS_DIR": str(tmp / "models"),
        "ZEROSHOT_MODEL_NAME": "default",
        "ZEROSHOT_LABEL_SETS_DIR": str(tmp / "label-sets"),
        "ZEROSHOT_ADMIN_TOKEN": TOKEN,
        "ZEROSHOT_RELOAD_INTERVAL_S": "0.5",
        "ZEROSHOT_DRAIN_S": "0",
    }
    exe = Path(sys.executable).with_name("zeroshot")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "model.cli"]
    log = tmp / "server.log"
    with log.open("wb") as f:
        serve = [*cmd, "serve", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(serve, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        buf = io.BytesIO()
        SyntheticShapes(64, seed=3, split="seen", length=1)[0].image.save(buf, format="PNG")
        image = base64.b64encode(buf.getvalue()).decode()
        small = {"images": [image], "labels": CACHED, "top_k": 1}
        with httpx.Client(base_url=url, timeout=600) as c:
            assert c.post("/v1/classify", json=small).status_code == 200  # caches the 3 labels
            builds = [background_build(c, small, "big", "object", 1, a)]
            builds.append(background_build(c, small, "big2", "item", 2, a))
            c.delete("/v1/label-sets/big2", headers=ADMIN)  # only `big` is prepared at the reload
            return {"builds": builds, "reload": hot_reload(c, image, model_dir, log, a)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(out: Body) -> None:
    head = "| requests | n | failed | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|"

    def row(label: str, s: Body) -> str:
        cells = [s.get(k, "-") for k in ("n", "failures", "p50_ms", "p99_ms", "max_ms")]
        return f"| {label} | " + " | ".join(str(x) for x in cells) + " |"

    print(f"\nA. background build, {out['args']['labels']:,} labels x {out['args']['templates']}")
    for b in out["builds"]:
        print(f"{b['clients']} client(s): PUT answered {b['put_status']} in {b['put_s']} s; built in")
        print(f"  {b['build_s']} s (GET showed ready after {b['ready_seen_s']} s); progress from GET:")
        shown = b["progress"][:: max(1, len(b["progress"]) // 5)]
        for p in shown + ([] if shown[-1] is b["progress"][-1] else b["progress"][-1:]):
            done = f"{p['prompts_done']}/{p['prompts_total']}"
            print(f"  {p['t_s']:>6} s {done:>13} {p['prompts_per_s']:>8} prompts/s  eta {p['eta_s']} s")
    print(head)
    for b in out["builds"]:
        print(row(f"{b['clients']} client(s), nothing building", b["idle"]))
        print(row(f"{b['clients']} client(s), during the build", b["building"]))
    r = out["reload"]
    old, new = (f"{m['version']} (sha {m['sha256'][:12]})" for m in (r["old"], r["new"]))
    print(f"\nB. hot reload, 3 clients with label_set=big: {old} -> {new}; swapped: {r['swapped']}")
    print(head)
    for what, s in r["windows"].items():
        print(row(what, s))
    p = r["preparation"] or {}
    print(f"preparation: {p.get('seconds')} s, {p.get('prompts_done')} prompts, failed {p.get('failed')}")
    print(f"CURRENT changed -> swap seen: {r['current_to_swap_seen_s']} s; reload_error {r['reload_error']}")
    print("label_cache.encoded_prompts before the reload, at the swap, at the end:", r["encoded_prompts"])
    print("'encoding N labels' log lines before the swap (preparation too), after:", r["encoding_lines"])
    print(f"answers by version {r['answers_by_version']}")
    for ln in r["log_after_swap_suspect"]:
        print("  log after the swap:", ln)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--templates", default="imagenet80")
    ap.add_argument("--idle-s", type=float, default=8.0, help="A: small requests with nothing building")
    ap.add_argument("--steady-s", type=float, default=10.0, help="B: load before the new version")
    ap.add_argument("--after-s", type=float, default=15.0, help="B: load after the swap is seen")
    args = ap.parse_args()
    out: Body = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "args": vars(args)}
    tmp, res = Path(tempfile.mkdtemp(prefix="label-set-builds-")), ROOT / "bench" / "results"
    res.mkdir(exist_ok=True)
    try:
        out |= run(args, tmp)
    finally:
        if (tmp / "server.log").exists():  # kept for reading after the run
            shutil.copy(tmp / "server.log", res / "label_set_builds.server.log")
        shutil.rmtree(tmp, ignore_errors=True)
    report(out)
    (res / "label_set_builds.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
