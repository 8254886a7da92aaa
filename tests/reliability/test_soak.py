"""Soak: minutes of steady mixed load on a real `zeroshot serve` process, beside a hostile client, a
client that hangs up mid-request and a greedy client over its quotas. No well-behaved request fails,
every hostile one gets a 4xx, `/metrics` counts no 5xx at all (disconnects are 499), and resident
memory stops growing once warm (the second half grows by less than a small bound).

Run on the default CLIP bundle and on a tiny SigLIP one (tests/siglip_checkpoint.py: its fixed-length
SentencePiece tokenizer, square resize and sigmoid scoring under the same load). ZEROSHOT_SOAK_S sets
the duration (default 120 s); the SigLIP run is capped at SIGLIP_SOAK_S so it adds under a minute
to CI. The figures are printed for bench/README.md.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from model.data.synthetic import SyntheticShapes, all_classes, class_name
from tests.servers import served_process

CLASSES = [class_name(*c) for c in all_classes()]
SECONDS = float(os.environ.get("ZEROSHOT_SOAK_S", "120"))
SIGLIP_SOAK_S = min(SECONDS, 40.0)  # the second model's run: the same checks, a third of the time
CLIENTS = 4
GROWTH_MB = 16  # allowed RSS growth over the second half
# SigLIP's second half is 20 s: half the bound keeps it near the default's rate (a leak of 0.4 MB/s
# fails it). Seen: +2.0 and +2.3 MB, the label caches the greedy key fills (~0.1 MB/s, capped).
SIGLIP_GROWTH_MB = 8
KEYS = [f"soak-key-{k}-abcdef" for k in range(CLIENTS)]
GREEDY = "soak-key-greedy-abcdef"
# The hostile client's own key: on a well-behaved client's, a hung-up request still being answered
# took one of that key's 2 slots, and that client was (rightly) refused 429 once in ~4,000 requests.
ATTACKER = "soak-key-attacker-abcdef"
DEEP = "[" * 50_000 + "]" * 50_000
SYLLABLES = [c + v for c in "bcdfgklmnprstvz" for v in "aeiou"]


def word(n: int) -> str:
    """A made-up word for n, from consonant-vowel syllables (0 "ba", 1 "be", 75 "beba"): distinct n,
    distinct word, to any tokenizer. Labels numbered with digits ("thing 7") are all one text to a
    vocabulary without digits, as the tiny SigLIP's is, and would be refused as duplicates."""
    out = ""
    while True:
        n, r = divmod(n, len(SYLLABLES))
        out = SYLLABLES[r] + out
        if n == 0:
            return out


def hostile(i: int, img: bytes) -> tuple[str, dict]:
    """The i-th hostile request: (path, httpx keyword arguments); each must get a 4xx."""
    b64 = base64.b64encode(img).decode()
    cases: list[tuple[str, dict]] = [
        ("/v1/classify", {"content": DEEP, "headers": {"content-type": "application/json"}}),
        ("/v1/classify", {"json": {"images": ["%%%"], "labels": ["a", "b"]}}),
        (
            "/v1/classify",
            {"json": {"images": [b64], "labels": ["a", "b"], "templates": [f"{{}} {k}" for k in range(500)]}},
        ),
        ("/v1/classify", {"json": {"images": [b64], "labels": ["yellow cross", "Yellow  Cross"]}}),
        (
            "/v1/classify",
            {"files": {"image": ("x", b"not an image", "image/png")}, "data": {"labels": ["a", "b"]}},
        ),
        (
            "/v1/classify",
            {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}},
        ),
        ("/v1/classify", {"content": b"labels=a", "headers": {"content-type": "text/plain"}}),
        ("/v1/label-sets/nope", {}),
    ]
    return cases[i % len(cases)]


def hang_up(base: str, body: bytes, whole: bool) -> None:
    """Send a classify request and close the connection: mid-body, or before reading the answer."""
    host, port = base.removeprefix("http://").split(":")
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ATTACKER}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + (body if whole else body[: len(body) // 2]))
        time.sleep(0.05)


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


@pytest.mark.parametrize("model", ["default", "siglip"])
def test_steady_load_has_no_errors_and_memory_levels_off(
    tmp_path: Path, model: str, request: pytest.FixtureRequest
) -> None:
    seconds, bound = (SECONDS, GROWTH_MB) if model == "default" else (SIGLIP_SOAK_S, SIGLIP_GROWTH_MB)
    imgs = images()
    label_lists = [CLASSES[i : i + 12] for i in range(0, 36, 4)] + [[f"thing {word(k)}" for k in range(50)]]
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def client(base: str, k: int) -> None:
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {KEYS[k]}"}) as c:
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

    others: Counter[str] = Counter()

    def attacker(base: str) -> None:
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {ATTACKER}"}) as c:
            i = 0
            while not stop.is_set():
                path, kw = hostile(i, imgs[0])
                r = c.get(path) if not kw else c.post(path, **kw)
                others["hostile 4xx" if 400 <= r.status_code < 500 else f"hostile {r.status_code}"] += 1
                b64 = base64.b64encode(imgs[i % len(imgs)]).decode()
                body = json.dumps({"images": [b64], "labels": ["a", "b"]}).encode()
                hang_up(base, body, whole=bool(i % 2))
                others["hung up"] += 1
                i += 1
                time.sleep(0.05)

    def greedy(base: str, k: int) -> None:
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {GREEDY}"}) as c:
            i = 0
            while not stop.is_set():
                labels = [f"greedy {word(k)} {word(i)} {word(j)}" for j in range(40)]
                r = c.post(
                    "/v1/classify",
                    files={"image": ("x", imgs[i % len(imgs)], "image/png")},
                    data={"labels": labels},
                )
                others[f"greedy {r.status_code}"] += 1
                i += 1

    env = {
        "ZEROSHOT_RELOAD_INTERVAL_S": "1",
        "ZEROSHOT_DRAIN_S": "0",
        "ZEROSHOT_API_KEYS": ",".join([*KEYS, GREEDY, ATTACKER]),
        "ZEROSHOT_KEY_MAX_CONCURRENT": "2",
        "ZEROSHOT_KEY_PROMPTS_PER_MINUTE": "2000",
        "ZEROSHOT_MAX_TEMPLATES_PER_REQUEST": "100",
    }
    if model == "siglip":  # served_process's env overrides its default models folder and name
        env |= {
            "ZEROSHOT_MODELS_DIR": str(request.getfixturevalue("siglip_models")),
            "ZEROSHOT_MODEL_NAME": model,
        }
    with served_process(tmp_path, env) as (proc, base):
        threads = [threading.Thread(target=client, args=(base, k)) for k in range(CLIENTS)]
        threads += [threading.Thread(target=attacker, args=(base,))]
        threads += [threading.Thread(target=greedy, args=(base, k)) for k in range(3)]
        for t in threads:
            t.start()
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(min(5.0, seconds / 10))
            samples.append((time.monotonic() - t0, rss_mb(proc.pid)))
        stop.set()
        for t in threads:
            t.join()
        # Every hang-up gave its slot back: the attacker's key is served again once they are answered.
        auth = {"Authorization": f"Bearer {ATTACKER}"}
        deadline = time.monotonic() + 10
        with httpx.Client(base_url=base, timeout=30, headers=auth) as c:
            while True:
                files = {"image": ("x", imgs[0], "image/png")}
                after = c.post("/v1/classify", files=files, data={"labels": ["a", "b"]}).status_code
                if after != 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        metrics = httpx.get(f"{base}/metrics").text
    by_status = Counter[str]()
    for status, n in re.findall(r'zeroshot_requests_total\{[^}]*status="(\d+)"\} ([0-9.e+]+)', metrics):
        by_status[status] += int(float(n))
    total = sum(statuses.values())
    half = [mb for t, mb in samples if t >= seconds / 2]
    growth = half[-1] - half[0]
    print(
        f"\nsoak ({model}): {total} requests in {seconds:.0f} s ({total / seconds:.0f}/s, "
        f"{CLIENTS} clients), "
        f"statuses {dict(statuses)}; others {dict(others)}; /metrics by status {dict(by_status)}; RSS MB at "
        + ", ".join(f"{t:.0f}s={mb:.0f}" for t, mb in samples)
        + f"; second-half growth {growth:+.1f} MB"
    )
    assert not errors, errors[:3]
    assert total > seconds  # the load really ran
    assert [k for k in others if k.startswith("hostile") and k != "hostile 4xx"] == []
    assert others["greedy 429"] > 0 and others["greedy 200"] > 0  # over its quota, and served within it
    assert not [s for s in by_status if s.startswith("5")], by_status  # no 5xx counted, disconnects included
    assert by_status["499"] > 0  # the hang-ups were seen, and counted as the client's
    assert after == 200, f"the hung-up requests' key still refused ({after}): slots not released"
    assert growth < bound, f"RSS grew {growth:.1f} MB over the second half (at most {bound} MB)"
