"""The fuzz targets (bench/fuzz_targets.py) over their seeds, seeded random mutations of them and
every input a fuzzing run has found to crash (tests/fuzz_regressions/<target>/): short and
deterministic, so what `bench/fuzz.py` finds stays fixed. The long coverage-guided runs are
bench/fuzz.py's (figures in bench/README.md)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.fuzz_targets import TARGETS, seeds

REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
MUTATIONS = 150


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """One of libFuzzer's simple moves: flip, insert, delete, repeat, truncate or splice."""
    b = bytearray(data)
    move = rng.randrange(6)
    i = rng.randrange(len(b) + 1)
    if move == 0 and b:
        b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
    elif move == 1:
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif move == 2:
        del b[i : i + rng.randint(1, 16)]
    elif move == 3:
        b[i:i] = b[i : i + rng.randint(1, 8)] * rng.randint(2, 50)
    elif move == 4:
        del b[i:]
    else:
        other = rng.choice(pool)
        b = b[:i] + other[rng.randrange(len(other) + 1) :]
    return bytes(b)


def inputs(target: str) -> list[bytes]:
    base = seeds(target)
    rng = random.Random(f"zeroshot-fuzz-{target}")
    out = list(base)
    for _ in range(MUTATIONS):
        data = rng.choice(base)
        for _ in range(rng.randint(1, 4)):
            data = mutate(data, rng, base)
        out.append(data)
    found = REGRESSIONS / target
    if found.is_dir():
        out += [p.read_bytes() for p in sorted(found.iterdir())]
    return out


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_survives_seeds_mutations_and_past_crashes(target: str) -> None:
    fn = TARGETS[target]
    for i, data in enumerate(inputs(target)):
        try:
            fn(data)
        except Exception as e:  # a finding: say which input, so it can be kept as a regression
            raise AssertionError(f"{target} input {i} ({data[:80]!r}...): {type(e).__name__}: {e}") from e


def test_a_server_error_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP targets do not swallow what they look for: an unhandled error in a route surfaces."""
    from bench import fuzz_targets

    client, _ = fuzz_targets._client()

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(client.app.state.engine, "classify", broken)
    with pytest.raises(RuntimeError, match="boom"):
        fuzz_targets.classify_json(seeds("classify_json")[0])
