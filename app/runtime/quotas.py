"""Per-key quotas: requests per second, requests at once, and prompts encoded per minute.

Each API key (by its key id, a hash prefix: never the key) has a token bucket for requests, a count of
its requests in flight and a token bucket for the text encoder, whose cost is the prompts a request
makes the server encode (labels the cache lacks x templates: a repeated list is free). Beyond any of
them a request gets QuotaExceeded (429) with the seconds after which it would pass.

The token bucket is a few lines of arithmetic, written here: `limits` (the usual library) offers fixed
and moving windows, which cannot express "a burst of B, refilled at R per second". Every method runs
on the event loop, so nothing here needs a lock. The number of buckets is bounded by the keys
configured (plus one for requests without a key, when /v1 is open).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from app.runtime.errors import QuotaExceeded
from app.settings import Settings

ANONYMOUS = "anonymous"


def key_id(key: str) -> str:
    """What metrics and logs may show of a key: 12 hex digits of its sha256."""
    return hashlib.sha256(key.encode()).hexdigest()[:12] if key else ANONYMOUS


class TokenBucket:
    """`capacity` tokens at most, refilled at `rate` per second; taking n either succeeds at once or
    says how long until n would be there."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError(f"a token bucket needs rate > 0 and capacity > 0, not {rate}, {capacity}")
        self.rate, self.capacity, self.clock = rate, capacity, clock
        self.tokens, self._t = capacity, clock()

    def take(self, n: float = 1.0) -> float:
        """0.0 when n tokens were taken; else the seconds until they would be (nothing is taken)."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._t) * self.rate)
        self._t = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


@dataclass
class _Key:
    requests: TokenBucket | None
    prompts: TokenBucket | None
    in_flight: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # by quota: requests, concurrent, prompts


class Quotas:
    def __init__(self, s: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = (
            s.key_requests_per_s,
            s.key_request_burst or max(1, math.ceil(s.key_requests_per_s)),
        )
        self.max_concurrent, self.prompts_per_minute = s.key_max_concurrent, s.key_prompts_per_minute
        self.clock = clock
        self._keys: dict[str, _Key] = {}

    def _key(self, kid: str) -> _Key:
        k = self._keys.get(kid)
        if k is None:
            requests = TokenBucket(self.rate, self.burst, self.clock) if self.rate else None
            ppm = self.prompts_per_minute
            prompts = TokenBucket(ppm / 60, ppm, self.clock) if ppm else None
            k = self._keys[kid] = _Key(requests, prompts)
        return k

    def _refuse(self, k: _Key, quota: str, message: str, retry_after_s: float) -> QuotaExceeded:
        k.refused[quota] = k.refused.get(quota, 0) + 1
        return QuotaExceeded(
            message, {"quota": quota, "retry_after_s": round(retry_after_s, 3)}, retry_after_s
        )

    @contextlib.contextmanager
    def request(self, kid: str) -> Iterator[None]:
        """One request of key `kid`, from its admission to its answer."""
        k = self._key(kid)
        if self.max_concurrent and k.in_flight >= self.max_concurrent:
            raise self._refuse(
                k,
                "concurrent",
                f"this key has {k.in_flight} requests in flight; at most {self.max_concurrent}",
                1.0,
            )
        if k.requests is not None:
            wait = k.requests.take()
            if wait:
                raise self._refuse(
                    k,
                    "requests",
                    f"this key is over {self.rate:g} requests per second (burst {self.burst})",
                    wait,
                )
        k.in_flight += 1
        try:
            yield
        finally:
            k.in_flight -= 1

    @property
    def counts_prompts(self) -> bool:
        """Whether a prompt budget is set: counting a request's new prompts costs a cache pass."""
        return bool(self.prompts_per_minute)

    def spend_prompts(self, kid: str, prompts: int) -> None:
        """Charge `prompts` to be encoded to key `kid`'s text-encoder budget, or refuse them all."""
        k = self._key(kid)
        if k.prompts is None or prompts <= 0:
            return
        if prompts > self.prompts_per_minute:
            raise self._refuse(
                k,
                "prompts",
                f"{prompts:,} new prompts to encode; this key may have {self.prompts_per_minute:,} encoded "
                "per minute (register a label set, or send fewer new labels)",
                60.0,
            )
        wait = k.prompts.take(prompts)
        if wait:
            raise self._refuse(
                k,
                "prompts",
                f"{prompts:,} new prompts to encode would pass this key's "
                f"{self.prompts_per_minute:,} per minute",
                wait,
            )

    def stats(self) -> dict[str, dict[str, int]]:
        """Refusals by key id and quota, and requests in flight: for /metrics."""
        return {kid: {**k.refused, "in_flight": k.in_flight} for kid, k in self._keys.items()}
