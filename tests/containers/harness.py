"""Helpers of the container test (tests/containers/run.sh): HTTP checks, a load loop, model publishing.

Standard library only, so any python3 runs it. Every request goes to a loopback address.

    harness.py nginx-conf SRC OUT --listen 127.0.0.1:18080 --upstream 127.0.0.1:18081 --upstream ...
    harness.py wait-ready URL [URL ...] [--timeout S]
    harness.py classify URL [--label-set NAME]        # one request; checks the top label, prints the version
    harness.py put-label-set URL NAME --token T
    harness.py version URL                             # GET /v1/models -> version
    harness.py wait-version VERSION URL [URL ...] [--timeout S]
    harness.py load URL --out FILE [--concurrency N] [--max-seconds S]   # until SIGINT/SIGTERM
    harness.py check-load FILE [--min-requests N] [--last-version V]
    harness.py publish MODEL_DIR VERSION               # copy CURRENT's bundle as VERSION, make it CURRENT
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "docs" / "yellow-cross.png"
LABELS = ["yellow cross", "red cross", "blue heart"]
EXPECTED = "yellow cross"


class CheckFailed(Exception):
    pass


def multipart(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = "zeroshot-container-test-boundary"
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def classify_body(label_set: str | None = None) -> tuple[bytes, str]:
    fields = [("label_set", label_set)] if label_set else [("labels", json.dumps(LABELS))]
    return multipart(fields, [("image", IMAGE.name, IMAGE.read_bytes())])


def request(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check_answer(status: int, raw: bytes) -> str:
    """The model version of a classify answer, or CheckFailed with what was wrong."""
    if status != 200:
        raise CheckFailed(f"HTTP {status}: {raw[:300]!r}")
    answer = json.loads(raw)
    top = answer["results"][0]["labels"][0]["label"]
    if top != EXPECTED:
        raise CheckFailed(f"top label {top!r}, expected {EXPECTED!r}: {answer}")
    return str(answer["model"]["version"])


# ---- commands ----


def cmd_nginx_conf(a: argparse.Namespace) -> None:
    """docker/nginx.conf with the test's ports: the one `server api:8000 ...` line becomes one line per
    replica (same parameters, minus `resolve`, which needs a name and nginx >= 1.27.3); the one `listen`
    line becomes the test's address. Everything else stays as compose runs it."""
    text = Path(a.src).read_text()
    server = re.compile(r"^(\s*)server api:8000 resolve (.*);$", re.M)
    listen = re.compile(r"^(\s*)listen 8080;$", re.M)
    if len(server.findall(text)) != 1 or len(listen.findall(text)) != 1:
        raise CheckFailed(f"{a.src}: expected one `server api:8000 resolve ...;` and one `listen 8080;` line")
    text = server.sub(lambda m: "\n".join(f"{m[1]}server {u} {m[2]};" for u in a.upstream), text)
    text = listen.sub(lambda m: f"{m[1]}listen {a.listen};", text)
    Path(a.out).write_text(text)


def cmd_wait_ready(a: argparse.Namespace) -> None:
    deadline = time.monotonic() + a.timeout
    for url in a.urls:
        while True:
            try:
                status, raw = request(url.rstrip("/") + "/readyz")
            except OSError as e:
                status, raw = 0, str(e).encode()
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"{url} not ready after {a.timeout} s: {status} {raw[:200]!r}")
            time.sleep(0.2)


def cmd_classify(a: argparse.Namespace) -> None:
    body, ctype = classify_body(a.label_set)
    status, raw = request(a.url.rstrip("/") + "/v1/classify", "POST", body, {"Content-Type": ctype})
    print(check_answer(status, raw))


def cmd_put_label_set(a: argparse.Namespace) -> None:
    body = json.dumps({"labels": LABELS, "templates": "synthetic"}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {a.token}"}
    status, raw = request(f"{a.url.rstrip('/')}/v1/label-sets/{a.name}", "PUT", body, headers)
    if status not in (200, 201):
        raise CheckFailed(f"PUT label set: HTTP {status}: {raw[:300]!r}")


def version(url: str) -> str:
    status, raw = request(url.rstrip("/") + "/v1/models")
    if status != 200:
        raise CheckFailed(f"{url}/v1/models: HTTP {status}: {raw[:200]!r}")
    return str(json.loads(raw)["version"])


def cmd_version(a: argparse.Namespace) -> None:
    print(version(a.url))


def cmd_wait_version(a: argparse.Namespace) -> None:
    deadline = time.monotonic() + a.timeout
    for url in a.urls:
        while (seen := version(url)) != a.version:
            if time.monotonic() > deadline:
                raise CheckFailed(f"{url} still serves {seen} after {a.timeout} s, expected {a.version}")
            time.sleep(0.2)


def cmd_load(a: argparse.Namespace) -> None:
    """Steady classify requests through the balancer until SIGINT/SIGTERM (or the time/count bound),
    then a JSON summary: requests, failures (with what failed), versions answered, latency."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    body, ctype = classify_body()
    target = urlsplit(a.url)
    lock = threading.Lock()
    versions: Counter[str] = Counter()
    failures: list[str] = []
    latencies: list[float] = []
    last_versions: list[str] = []
    started = time.monotonic()

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        while not stop.is_set():
            if time.monotonic() - started > a.max_seconds or len(latencies) >= a.max_requests:
                stop.set()
                break
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request("POST", "/v1/classify", body, {"Content-Type": ctype})
                resp = conn.getresponse()
                v = check_answer(resp.status, resp.read())
                with lock:
                    versions[v] += 1
                    latencies.append(time.perf_counter() - t0)
                    last_versions.append(v)
                    del last_versions[:-20]
            except (OSError, http.client.HTTPException, CheckFailed, ValueError, KeyError) as e:
                with lock:
                    failures.append(f"{time.monotonic() - started:.2f}s {type(e).__name__}: {e}"[:500])
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(a.pause_ms / 1000)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    while not stop.wait(0.1):
        pass
    for t in threads:
        t.join(timeout=35)
    lat = sorted(latencies)
    elapsed = time.monotonic() - started

    def pct(p: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else 0.0

    summary: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        "requests": len(latencies) + len(failures),
        "ok": len(latencies),
        "failed": len(failures),
        "failures": failures[:20],
        "versions": dict(versions),
        "last_versions": last_versions,
        "rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
    }
    Path(a.out).write_text(json.dumps(summary, indent=1))


def cmd_check_load(a: argparse.Namespace) -> None:
    s = json.loads(Path(a.file).read_text())
    print(
        f"  load: {s['requests']} requests in {s['seconds']} s ({s['rps']}/s), {s['failed']} failed, "
        f"versions {s['versions']}, latency p50 {s['latency_ms']['p50']} ms, "
        f"p99 {s['latency_ms']['p99']} ms, max {s['latency_ms']['max']} ms"
    )
    if s["failed"]:
        raise CheckFailed("failed requests through nginx:\n    " + "\n    ".join(s["failures"]))
    if s["ok"] < a.min_requests:
        raise CheckFailed(f"only {s['ok']} requests were answered, expected at least {a.min_requests}")
    if a.last_version and set(s["last_versions"]) != {a.last_version}:
        raise CheckFailed(f"the last answers came from {s['last_versions']}, expected only {a.last_version}")


def cmd_publish(a: argparse.Namespace) -> None:
    """What `zeroshot export` does, with a copy: the bundle under a new version folder (its manifest's
    `version` changed: the hashes cover the other files, not the manifest), then CURRENT replaced
    atomically. Files are made world-readable, since the servers run as another user."""
    model_dir = Path(a.model_dir)
    src = model_dir / (model_dir / "CURRENT").read_text().strip()
    tmp = model_dir / f".tmp-{a.version}"
    shutil.copytree(src, tmp)
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest["version"] = a.version
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for p in [tmp, *tmp.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    tmp.rename(model_dir / a.version)
    current = model_dir / f".CURRENT.{a.version}"
    current.write_text(a.version + "\n")
    current.chmod(0o644)
    os.replace(current, model_dir / "CURRENT")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("nginx-conf")
    s.add_argument("src")
    s.add_argument("out")
    s.add_argument("--listen", required=True)
    s.add_argument("--upstream", action="append", required=True)
    s.set_defaults(func=cmd_nginx_conf)
    s = sub.add_parser("wait-ready")
    s.add_argument("urls", nargs="+")
    s.add_argument("--timeout", type=float, default=120)
    s.set_defaults(func=cmd_wait_ready)
    s = sub.add_parser("classify")
    s.add_argument("url")
    s.add_argument("--label-set")
    s.set_defaults(func=cmd_classify)
    s = sub.add_parser("put-label-set")
    s.add_argument("url")
    s.add_argument("name")
    s.add_argument("--token", required=True)
    s.set_defaults(func=cmd_put_label_set)
    s = sub.add_parser("version")
    s.add_argument("url")
    s.set_defaults(func=cmd_version)
    s = sub.add_parser("wait-version")
    s.add_argument("version")
    s.add_argument("urls", nargs="+")
    s.add_argument("--timeout", type=float, default=60)
    s.set_defaults(func=cmd_wait_version)
    s = sub.add_parser("load")
    s.add_argument("url")
    s.add_argument("--out", required=True)
    s.add_argument("--concurrency", type=int, default=4)
    s.add_argument("--pause-ms", type=float, default=5, help="pause between a worker's requests")
    s.add_argument("--max-seconds", type=float, default=300, help="stop by itself after this long")
    s.add_argument("--max-requests", type=int, default=200_000)
    s.set_defaults(func=cmd_load)
    s = sub.add_parser("check-load")
    s.add_argument("file")
    s.add_argument("--min-requests", type=int, default=1)
    s.add_argument("--last-version")
    s.set_defaults(func=cmd_check_load)
    s = sub.add_parser("publish")
    s.add_argument("model_dir")
    s.add_argument("version")
    s.set_defaults(func=cmd_publish)
    args = p.parse_args(argv)
    try:
        args.func(args)
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
