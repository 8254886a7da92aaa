"""The micro-batcher on its own, with a fake encoder: batching, admission, deadlines, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.runtime.batcher import DeadlineExceeded, ImageBatcher, QueueFull


class Fake:
    """Features = the first pixel of each image, so every caller can check it got its own rows."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.delay, self.fail = delay, fail

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        self.calls.append(len(pixel_values))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("encoder exploded")
        return pixel_values[:, :1, 0, 0].copy()  # [B, 1]


def images(*ids: int) -> np.ndarray:
    x = np.zeros((len(ids), 3, 2, 2), np.float32)
    x[:, 0, 0, 0] = ids
    return x


async def encode_all(b: ImageBatcher, model: Fake, groups: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Requests that announce themselves first (as routes do while decoding), then submit."""

    async def one(g: tuple[int, ...]) -> np.ndarray:
        coming = b.admit()
        try:
            await asyncio.sleep(0)  # "decoding": every request announces before any submits
            items = b.submit(model, images(*g), 10.0, coming)
        finally:
            b.release(coming)
        return await b.wait(items)

    return list(await asyncio.gather(*(one(g) for g in groups)))


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    b = ImageBatcher(max_batch=8, max_wait_ms=200, max_queue=64)
    b.start()
    model = Fake()
    groups = [(1,), (2, 3), (4,), (5, 6, 7), (8,), (9,)]
    out = asyncio.run(encode_all(b, model, groups))
    b.close()
    for g, feats in zip(groups, out, strict=True):
        assert feats[:, 0].tolist() == list(g)
    assert sum(model.calls) == 9 and max(model.calls) > 1 and all(n <= 8 for n in model.calls)
    assert b.largest_batch == max(model.calls) and b.pending == 0


def test_a_lone_request_is_not_held_back_for_company() -> None:
    b = ImageBatcher(max_batch=8, max_wait_ms=5000, max_queue=64)
    b.start()
    t = time.monotonic()
    (feats,) = asyncio.run(encode_all(b, Fake(), [(7,)]))
    assert time.monotonic() - t < 2.5  # nobody else was announced: no 5 s wait
    b.close()
    assert feats[0, 0] == 7


def test_a_request_larger_than_max_batch_is_split() -> None:
    b = ImageBatcher(max_batch=4, max_wait_ms=0, max_queue=64)
    b.start()
    model = Fake()
    (feats,) = asyncio.run(encode_all(b, model, [tuple(range(10))]))
    b.close()
    assert feats[:, 0].tolist() == list(range(10)) and max(model.calls) <= 4


def test_batches_never_mix_models() -> None:
    b = ImageBatcher(max_batch=16, max_wait_ms=100, max_queue=64)
    b.start()
    old, new = Fake(), Fake()

    async def run() -> list[np.ndarray]:
        return list(
            await asyncio.gather(
                *(b.wait(b.submit(m, images(i), 10.0)) for i, m in enumerate([old, new, old, new]))
            )
        )

    out = asyncio.run(run())
    b.close()
    assert [f[0, 0] for f in out] == [0, 1, 2, 3]
    assert sum(old.calls) == 2 and sum(new.calls) == 2


def test_a_full_queue_refuses_at_once_and_recovers() -> None:
    b = ImageBatcher(max_batch=4, max_wait_ms=0, max_queue=3)
    b.start()
    gate = threading.Event()

    class Slow(Fake):
        def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
            gate.wait(5)
            return super().encode_images(pixel_values)

    model = Slow()
    first = b.submit(model, images(1, 2), 10.0)
    with pytest.raises(QueueFull):
        b.submit(model, images(3, 4), 10.0)  # 2 + 2 > 3: all or nothing
    second = b.submit(model, images(3), 10.0)
    assert b.rejected == 1 and b.pending == 3
    gate.set()
    assert first[0].future.result(5)[:, 0].tolist() == [1, 2]
    assert second[0].future.result(5)[:, 0].tolist() == [3]
    b.close()
    assert b.pending == 0


def test_an_expired_request_is_dropped_before_the_model() -> None:
    b = ImageBatcher(max_batch=4, max_wait_ms=0, max_queue=8)
    gate = threading.Event()

    class Blocking(Fake):
        def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
            gate.wait(5)
            return super().encode_images(pixel_values)

    model = Blocking()
    b.start()
    busy = b.submit(model, images(1, 2, 3, 4), 10.0)  # occupies the worker
    time.sleep(0.05)
    late = b.submit(model, images(9), 0.01)  # its deadline passes while the worker is busy
    time.sleep(0.05)
    gate.set()
    busy[0].future.result(5)
    with pytest.raises(DeadlineExceeded):
        late[0].future.result(5)
    b.close()
    assert model.calls == [4] and b.expired == 1 and b.pending == 0


def test_an_encoder_failure_fails_its_batch_only() -> None:
    b = ImageBatcher(max_batch=4, max_wait_ms=0, max_queue=8)
    b.start()
    bad = b.submit(Fake(fail=True), images(1), 10.0)
    with pytest.raises(RuntimeError, match="exploded"):
        bad[0].future.result(5)
    good = b.submit(Fake(), images(2), 10.0)
    assert good[0].future.result(5)[0, 0] == 2
    b.close()
    assert b.pending == 0


def test_close_answers_what_is_queued() -> None:
    b = ImageBatcher(max_batch=2, max_wait_ms=0, max_queue=16)
    model = Fake(delay=0.01)
    items = [it for i in range(5) for it in b.submit(model, images(i), 10.0)]  # queued before start
    b.start()
    b.close()
    assert [it.future.result(0)[0, 0] for it in items] == [0, 1, 2, 3, 4]
