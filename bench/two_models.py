"""Two models in one server: what a second model adds to the memory, and a reload of each under load.

    .venv/bin/python bench/two_models.py [--seconds 20] [--b32-swap-s 5] [--default-swap-s 12]

Needs models/default (`make setup`). Builds a random-weight ViT-B/32 bundle (bench/http_load.py's
build(), version v1) and copies the default model beside it into a temporary models folder, then
starts three `zeroshot serve` processes one after another on 127.0.0.1, each stopped before the next:
  (a) ZEROSHOT_MODELS=default   (b) ZEROSHOT_MODELS=b32   (c) ZEROSHOT_MODELS=default,b32
For each: the process's whole resident memory (VmRSS, and the peak VmHWM, from /proc/<pid>/status)
once /readyz answers 200, and each model's `memory.rss_growth_bytes` from GET /v1/models (the RSS the
process gained while that model was loaded and warmed). Does b32's growth predict RSS(c) - RSS(a)?

Then, on (c): 4 client threads (2 per model, httpx on loopback) POST /v1/classify multipart, one
224x224 PNG and 3 labels, `model` set, for `--seconds`. At `--b32-swap-s` a new version of b32 (v2,
a copy whose manifest names v2) is made CURRENT, at `--default-swap-s` the same for default (the
copies are made before the clients start, so each publish is one write of CURRENT). The clients run
until `--seconds` and at least 3 s after both swaps are seen in GET /v1/models (polled every 0.25 s).
Reports requests, failures (status codes), p50/p99 per model, the version each answer came from
between the publishes, and whether each model was reloaded once and only after its own CURRENT
changed: its version in /v1/models, its `memory` record (replaced only by a load of that model) and
the server log's "now serving" lines.

Prints tables; writes bench/results/two_models.json (with the servers' "now serving" log lines).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import build, cpu_name, start, stop  # noqa: E402
from model.bundle.format import MANIFEST, current_bundle, read_current, set_current  # noqa: E402
from model.data.synthetic import SyntheticShapes  # noqa: E402

TOKEN = "bench-admin-token"
LABELS = ["red circle", "blue square", "green triangle"]
SERVERS = [("a", ["default"], 8131), ("b", ["b32"], 8132), ("c", ["default", "b32"], 8133)]
MB = 1e6
Body = dict[str, Any]


class Sample(NamedTuple):
    model: str  # the model asked for
    start: float
    end: float
    status: int  # 0: no answer (a transport error)
    version: str | None  # the version that answered


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(line.split()[1]) * 1024
    return out


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point fd 2 at `path` while a server is started, so the child's log (its stderr) lands there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def serve(models: Path, names: list[str], port: int, tmp: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        "ZEROSHOT_MODELS_DIR": str(models),
        "ZEROSHOT_MODELS": ",".join(names),
        "ZEROSHOT_DEVICE": "cpu",
        "ZEROSHOT_LABEL_SETS_DIR": str(tmp / f"sets-{port}"),
        "ZEROSHOT_ADMIN_TOKEN": TOKEN,
        "ZEROSHOT_RELOAD_INTERVAL_S": "0.2",
    }
    cmd = [str(ROOT / ".venv" / "bin" / "zeroshot"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with stderr_to(log):
        return start(cmd, f"http://127.0.0.1:{port}/readyz", env)


def per_model(listing: Body) -> dict[str, Body]:
    return {m["name"]: m for m in listing["models"]}


def memory_of(pid: int, url: str) -> Body:
    """The process's RSS right after ready, and what /v1/models says each model's load added."""
    status = proc_status(pid)
    listing = httpx.get(f"{url}/v1/models", timeout=30).json()
    return {
        "rss_bytes": status["VmRSS"],
        "hwm_bytes": status["VmHWM"],
        "models": {n: m["memory"] for n, m in per_model(listing).items()},
        "versions": {n: m.get("version") for n, m in per_model(listing).items()},
    }


def png_224() -> bytes:
    buf = io.BytesIO()
    SyntheticShapes(224, seed=1, split="all", length=1)[0].image.save(buf, format="PNG")
    return buf.getvalue()


class Clients:
    """One thread per entry of `models`, each POSTing one classify request after another."""

    def __init__(self, url: str, image: bytes, models: list[str]) -> None:
        self.url, self.image, self.models = url, image, models
        self.samples: list[Sample] = []
        self.stop = threading.Event()

    def _loop(self, model: str) -> None:
        data = {"labels": json.dumps(LABELS), "model": model, "top_k": "1"}
        files = [("image", ("shape.png", self.image, "image/png"))]
        with httpx.Client(base_url=self.url, timeout=120) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                try:
                    r = c.post("/v1/classify", data=data, files=files)
                    version = r.json()["model"]["version"] if r.status_code == 200 else None
                    status = r.status_code
                except (httpx.HTTPError, ValueError, KeyError):
                    status, version = 0, None
                self.samples.append(Sample(model, t, time.perf_counter(), status, version))

    def __enter__(self) -> Clients:
        self.threads = [threading.Thread(target=self._loop, args=(m,), daemon=True) for m in self.models]
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for th in self.threads:
            th.join()


class Monitor:
    """GET /v1/models every `every_s`: (time, {model: (version, memory record)}) per poll."""

    def __init__(self, url: str, every_s: float = 0.25) -> None:
        self.url, self.every_s = url, every_s
        self.polls: list[tuple[float, dict[str, tuple[str | None, str]]]] = []
        self.stop = threading.Event()

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    ms = per_model(c.get("/v1/models").json())
                    self.polls.append(
                        (
                            t,
                            {
                                n: (m.get("version"), json.dumps(m["memory"], sort_keys=True))
                                for n, m in ms.items()
                            },
                        )
                    )
                self.stop.wait(self.every_s)

    def seen(self, model: str, version: str) -> float | None:
        """When a poll first showed `model` at `version`."""
        return next((t for t, v in self.polls if v.get(model, (None,))[0] == version), None)

    def changes(self, model: str, t0: float) -> list[Body]:
        """Each poll at which the model's version or memory record differed from the poll before."""
        out, prev = [], None
        for t, v in self.polls:
            cur = v.get(model)
            if prev is not None and cur != prev:
                out.append(
                    {
                        "t_s": round(t - t0, 2),
                        "version": [prev[0], cur[0] if cur else None],
                        "memory_record_replaced": cur is not None and cur[1] != prev[1],
                    }
                )
            prev = cur
        return out

    def __enter__(self) -> Monitor:
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def latency(samples: list[Sample]) -> Body:
    ms = np.array([1000 * (s.end - s.start) for s in samples])
    codes = Counter(s.status for s in samples if s.status != 200)
    out: Body = {"n": len(samples), "failures": sum(codes.values()), "failure_codes": dict(codes)}
    if len(ms):
        out |= {k: round(float(np.percentile(ms, q)), 1) for k, q in (("p50_ms", 50), ("p99_ms", 99))}
        out["max_ms"] = round(float(ms.max()), 1)
    return out


def new_version(model_dir: Path, version: str) -> str:
    """The bundle served, copied in as `version` (its manifest naming it), not yet published."""
    src = current_bundle(model_dir, verify_hashes=False)
    dst = model_dir / version
    shutil.copytree(src.path, dst)
    manifest = json.loads((dst / MANIFEST).read_text()) | {"version": version}
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return src.version


def reload_under_load(url: str, pid: int, models: Path, log: Path, a: argparse.Namespace) -> Body:
    old = {"b32": new_version(models / "b32", "v2")}
    nxt = f"{read_current(models / 'default')}-next"
    old["default"] = new_version(models / "default", nxt)
    new = {"b32": "v2", "default": nxt}
    image = png_224()
    with Monitor(url) as mon, Clients(url, image, ["default", "b32", "default", "b32"]) as load:
        t0 = time.perf_counter()
        publish: dict[str, float] = {}
        for name, at in (("b32", a.b32_swap_s), ("default", a.default_swap_s)):
            time.sleep(max(0.0, t0 + at - time.perf_counter()))
            set_current(models / name, new[name])
            publish[name] = time.perf_counter()
        while True:
            seen = {n: mon.seen(n, new[n]) for n in new}
            now = time.perf_counter()
            if now - t0 >= a.seconds and all(seen.values()) and now - max(s or 0 for s in seen.values()) >= 3:
                break
            if now - t0 > a.seconds + 300:
                break
            time.sleep(0.1)
        t_end = time.perf_counter()
    samples = list(load.samples)
    end = per_model(httpx.get(f"{url}/v1/models", timeout=30).json())
    time.sleep(2.0)  # the watcher's next checks (every 0.2 s) release what the replaced versions freed
    settled = proc_status(pid)["VmRSS"]
    # windows between consecutive events: each publish, and when GET /v1/models first showed its swap
    marks = [(f"{n} published", t) for n, t in publish.items()]
    marks += [(f"{n} swap seen", t) for n, t in seen.items() if t is not None]
    events = [("start", t0), *sorted(marks, key=lambda e: e[1]), ("end", t_end + 1)]
    windows = {f"{a[0]} -> {b[0]}": (a[1], b[1]) for a, b in itertools.pairwise(events)}
    lines = log.read_text(errors="replace").splitlines()
    result: Body = {
        "seconds": round(t_end - t0, 1),
        "publish_s": {n: round(t - t0, 2) for n, t in publish.items()},
        "swap_seen_s": {n: None if s is None else round(s - t0, 2) for n, s in seen.items()},
        "publish_to_swap_seen_s": {
            n: None if s is None else round(s - publish[n], 2) for n, s in seen.items()
        },
        "old_versions": old,
        "new_versions": new,
        "final": {n: {"version": m.get("version"), "memory": m["memory"]} for n, m in end.items()},
        "rss_settled_after_reloads_bytes": settled,
        "models": {},
        "log_now_serving": [ln for ln in lines if "now serving" in ln],
        "log_suspect": [ln for ln in lines if " ERROR " in ln or "Traceback" in ln or '" 5' in ln][:20],
    }
    for name in ("default", "b32"):
        mine = [s for s in samples if s.model == name]
        by_window, lat_window = {}, {}
        for w, (lo, hi) in windows.items():
            inside = [s for s in mine if lo <= s.start < hi]
            by_window[w] = dict(Counter(str(s.version) for s in inside if s.status == 200))
            lat_window[w] = latency(inside)
        changes = mon.changes(name, t0)
        result["models"][name] = {
            "latency": latency(mine),
            "answers_by_version": by_window,
            "latency_by_window": lat_window,
            "changes_in_v1_models": changes,
            "reloaded_once_after_own_publish": len(changes) == 1
            and changes[0]["version"] == [old[name], new[name]]
            and changes[0]["memory_record_replaced"]
            and changes[0]["t_s"] >= publish[name] - t0,
            # a change before its own CURRENT changed would be the other model's swap reloading it
            "changes_before_own_publish": sum(c["t_s"] < publish[name] - t0 for c in changes),
            "now_serving_log_lines": sum(f"now serving {name}/" in ln for ln in lines),
            "wrong_version_answers": sum(
                s.version not in (old[name], new[name]) for s in mine if s.status == 200
            )
            + sum(s.version == new[name] for s in mine if s.status == 200 and s.start < publish[name]),
        }
    result["all"] = latency(samples)
    return result


def report(out: Body) -> None:
    print(f"\n{'server':<28}{'process RSS MB':>15}{'peak MB':>9}   per-model rss_growth MB")
    for key, names, _ in SERVERS:
        s = out["servers"][key]
        growth = ", ".join(
            f"{n} {m['rss_growth_bytes'] / MB:.1f}"
            if m and m.get("rss_growth_bytes") is not None
            else f"{n} -"
            for n, m in s["models"].items()
        )
        print(
            f"({key}) {','.join(names):<24}{s['rss_bytes'] / MB:>15.1f}{s['hwm_bytes'] / MB:>9.1f}   {growth}"
        )
    d = out["derived"]
    print(
        f"RSS(c) - RSS(a) = {d['rss_c_minus_a_mb']} MB; b32's growth: {d['b32_growth_b_mb']} MB in (b), "
        f"{d['b32_growth_c_mb']} MB in (c); RSS(c) - RSS(b) = {d['rss_c_minus_b_mb']} MB, default's growth "
        f"{d['default_growth_a_mb']} MB in (a), {d['default_growth_c_mb']} MB in (c)"
    )
    r = out["reload"]
    print(
        f"\nreload under load on (c), {r['seconds']} s: published at {r['publish_s']} s, seen swapped at "
        f"{r['swap_seen_s']} s"
    )
    print(f"{'model':<9}{'n':>7}{'failed':>8}{'codes':>12}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, m in r["models"].items():
        lat = m["latency"]
        print(
            f"{name:<9}{lat['n']:>7}{lat['failures']:>8}{json.dumps(lat['failure_codes']):>12}"
            f"{lat.get('p50_ms', '-'):>9}{lat.get('p99_ms', '-'):>9}{lat.get('max_ms', '-'):>9}"
        )
    for name, m in r["models"].items():
        print(f"{name}, by window: n, failed, p50 / p99 ms, answers by version")
        for w, lat in m["latency_by_window"].items():
            print(
                f"  {w:<40}{lat['n']:>6}{lat['failures']:>4}  {lat.get('p50_ms', '-')} / "
                f"{lat.get('p99_ms', '-')}  {m['answers_by_version'][w]}"
            )
        print(
            f"  changes seen in /v1/models {m['changes_in_v1_models']}; reloaded once after its own "
            f"publish: {m['reloaded_once_after_own_publish']}; changes before its own publish: "
            f"{m['changes_before_own_publish']}; 'now serving' log lines: {m['now_serving_log_lines']}; "
            f"wrong-version answers: {m['wrong_version_answers']}"
        )
    ready = out["servers"]["c"]["rss_bytes"]
    after = r["rss_settled_after_reloads_bytes"]
    print(f"(c) RSS at ready {ready / MB:.1f} MB, 2 s after both reloads {after / MB:.1f} MB")
    for ln in r["log_suspect"]:
        print("  log:", ln)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="the load on (c), at least")
    ap.add_argument("--b32-swap-s", type=float, default=5.0, help="when b32's new version is published")
    ap.add_argument("--default-swap-s", type=float, default=12.0, help="when default's is published")
    args = ap.parse_args()
    source = ROOT / "models" / "default"
    if not (source / "CURRENT").is_file():
        sys.exit(f"{source / 'CURRENT'} is missing: run make setup")
    out: Body = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {cpu_name()}, {os.cpu_count()} CPUs",
        "processor": platform.processor(),  # often empty on Linux: cpu_name() reads /proc/cpuinfo
        "cpu_count": os.cpu_count(),
        "args": vars(args),
        "servers": {},
    }
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="two-models-"))
    try:
        _, models = build(tmp)
        src = current_bundle(source, verify_hashes=False)
        shutil.copytree(src.path, models / "default" / src.path.name)
        shutil.copy(source / "CURRENT", models / "default" / "CURRENT")
        for key, names, port in SERVERS:
            url, log = f"http://127.0.0.1:{port}", tmp / f"server-{key}.log"
            print(f"({key}) serving {','.join(names)} ...", flush=True)
            proc = serve(models, names, port, tmp, log)
            try:
                out["servers"][key] = {"models_served": names} | memory_of(proc.pid, url)
                if key == "c":
                    out["reload"] = reload_under_load(url, proc.pid, models, log, args)
            finally:
                stop(proc)
                out["servers"][key]["log_now_serving"] = [
                    ln for ln in log.read_text(errors="replace").splitlines() if "now serving" in ln
                ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s = out["servers"]

    def growth(key: str, name: str) -> float:
        return round(s[key]["models"][name]["rss_growth_bytes"] / MB, 1)

    out["derived"] = {
        "rss_c_minus_a_mb": round((s["c"]["rss_bytes"] - s["a"]["rss_bytes"]) / MB, 1),
        "rss_c_minus_b_mb": round((s["c"]["rss_bytes"] - s["b"]["rss_bytes"]) / MB, 1),
        "b32_growth_b_mb": growth("b", "b32"),
        "b32_growth_c_mb": growth("c", "b32"),
        "default_growth_a_mb": growth("a", "default"),
        "default_growth_c_mb": growth("c", "default"),
    }
    report(out)
    (res / "two_models.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {res / 'two_models.json'}")


if __name__ == "__main__":
    main()
