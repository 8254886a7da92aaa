"""Soak: minutes of steady mixed load on a real `zeroshot serve` process. No request fails, and its
resident memory stops growing once warm (the second half grows by less than a small bound).

ZEROSHOT_SOAK_S sets the duration (default 120 s); the figures are printed for bench/README.md.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from model.data.synthetic import SyntheticShapes, all_classes, class_name
from tests.servers import served_process

CLASSES = [class_name(*c) for c in all_classes()]
SECONDS = float(os.environ.get("ZEROSHOT_SOAK_S", "120"))
CLIENTS = 4
GROWTH_MB = 16  # allowed RSS growth over the second half


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def images() -> list[bytes]:
    out = []
    for i, s in enumerate(SyntheticShapes(64, seed=21, split="all", length=24)):
        buf = io.BytesIO()
        s.image.save(buf, format="PNG" if i % 2 else "JPEG")
        out.append(buf.getvalue())
    return out


def test_steady_load_has_no_errors_and_memory_levels_off(tmp_path: Path) -> None:
    imgs = images()
    label_lists = [CLASSES[i : i + 12] for i in range(0, 36, 4)] + [[f"thing {k}" for k in range(50)]]
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def client(base: str, k: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            i = k
            while not stop.is_set():
                i += 1
                img, labels = imgs[i % len(imgs)], label_lists[i % len(label_lists)]
                try:
                    if i % 5 == 0:
                        b64 = base64.b64encode(img).decode()
                        r = c.post("/v1/classify", json={"images": [b64, b64], "labels": labels, "top_k": 3})
                    elif i % 7 == 0:
                        r = c.post("/v1/embeddings/images", files={"image": ("x", img, "image/png")})
                    elif i % 11 == 0:
                        r = c.post("/v1/embeddings/texts", json={"texts": labels[:5]})
                    else:
                        r = c.post(
                            "/v1/classify",
                            files={"image": ("x", img, "image/png")},
                            data={"labels": labels, "templates": "synthetic" if i % 2 else "default"},
                        )
                    statuses[r.status_code] += 1
                    if r.status_code != 200:
                        errors.append(r.text[:200])
                except httpx.HTTPError as e:
                    errors.append(repr(e))

    env = {"ZEROSHOT_RELOAD_INTERVAL_S": "1", "ZEROSHOT_DRAIN_S": "0"}
    with served_process(tmp_path, env) as (proc, base):
        threads = [threading.Thread(target=client, args=(base, k)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < SECONDS:
            time.sleep(min(5.0, SECONDS / 10))
            samples.append((time.monotonic() - t0, rss_mb(proc.pid)))
        stop.set()
        for t in threads:
            t.join()
    total = sum(statuses.values())
    half = [mb for t, mb in samples if t >= SECONDS / 2]
    growth = half[-1] - half[0]
    print(
        f"\nsoak: {total} requests in {SECONDS:.0f} s ({total / SECONDS:.0f}/s, {CLIENTS} clients), "
        f"statuses {dict(statuses)}; RSS MB at "
        + ", ".join(f"{t:.0f}s={mb:.0f}" for t, mb in samples)
        + f"; second-half growth {growth:+.1f} MB"
    )
    assert not errors, errors[:3]
    assert total > SECONDS  # the load really ran
    assert growth < GROWTH_MB, f"RSS grew {growth:.1f} MB over the second half"
