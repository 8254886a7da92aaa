"""A closed-loop HTTP/1.1 load generator that costs the machine next to nothing.

The benchmarks run the load generator on the same two cores as the servers, so every millisecond of
client CPU is taken from the server being measured. httpx spends about a millisecond of Python per
request (building multipart bodies, header objects, its connection pool); this generator builds each
distinct request once, before the clock starts, as the exact bytes httpx would send, and then only
writes them and reads the answers on keep-alive connections: one connection per request in flight.

    result = asyncio.run(run_load("http://127.0.0.1:8000/v1/classify", make, concurrency=4, seconds=10))

`make(i)` returns httpx.post keyword arguments (files=, data=, json=, headers=) for request i; the
generator cycles through the first `distinct` of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

Request = Callable[[int], dict[str, Any]]  # request number -> httpx.post kwargs


def serialize(url: str, kwargs: dict[str, Any]) -> bytes:
    """The bytes of one POST as httpx would send them (multipart boundary, Content-Length and all)."""
    req = httpx.Request("POST", url, **kwargs)
    body = req.read()
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in req.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response whole; return its status code. Handles Content-Length and chunked bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                break
    return status


async def run_load(
    url: str,
    make: Request,
    concurrency: int,
    seconds: float,
    min_requests: int = 0,
    distinct: int = 16,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """`concurrency` requests in flight for `seconds`, and until at least `min_requests` have started
    (so that a slow server still gives a percentile from more than a couple of requests). Returns
    requests, requests_per_s, p50/p95/p99 latency in ms and the count of errors (non-200 or broken
    connections; a broken connection is reopened)."""
    payloads = [serialize(url, make(i)) for i in range(distinct)]
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[float] = []
    errors = started = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal errors, started
        reader = writer = None
        while time.monotonic() < end or started < min_requests:
            payload = payloads[started % len(payloads)]
            started += 1
            t = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                writer.write(payload)
                ok = await asyncio.wait_for(_read_response(reader), timeout_s) == 200
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                ok = False
                if writer is not None:
                    writer.close()
                reader = writer = None
            latencies.append(time.monotonic() - t)
            errors += not ok
        if writer is not None:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(latencies, errors, time.monotonic() - t0)


def summarize(latencies_s: list[float], errors: int, wall_s: float) -> dict[str, Any]:
    """A load run's figures: requests, requests/s, p50/p95/p99 latency in ms, errors."""
    ms = np.array(latencies_s) * 1000
    return {
        "requests": len(latencies_s),
        "requests_per_s": len(latencies_s) / wall_s,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
    }
