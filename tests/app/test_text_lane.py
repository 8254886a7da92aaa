"""The text lane (app/runtime/text_lane.py): slices give the same features as one call, one slice runs
at a time, and a new job goes ahead of a job that has had more encoder time."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.runtime.text_lane import FIRST_SLICE, MAX_SLICE, MIN_SLICE, TextLane
from tests.fakes import FakeEncoders, fake_app


class Recording(FakeEncoders):
    """Records which job's slice ran when; slices of the job named `hold` wait for `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, int]] = []
        self.running = self.most_running = 0
        self.entered, self.release = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, pad_to: int | None = None
    ) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            who = texts[0].split()[0] if texts else ""
            self.log.append((who, len(texts)))
            if who == "hold":
                self.entered.set()
                assert self.release.wait(10)
            time.sleep(0.002)  # long enough for another thread to try to overlap
            return super().encode_texts(texts, batch_size, pad_to)
        finally:
            with self._lock:
                self.running -= 1


def test_slices_give_the_features_of_one_call_in_order() -> None:
    enc = FakeEncoders()
    texts = [f"a photo of thing {i}" for i in range(3 * FIRST_SLICE + 5)]
    lane = TextLane(slice_ms=25)
    job = lane.job(enc)
    got = job.encode_texts(texts)
    np.testing.assert_array_equal(got, enc.encode_texts(texts))
    assert lane.stats()["slices"] >= 2  # it was cut, and the pieces were put back in order
    assert lane.stats()["prompts"] == len(texts)
    assert job.attained_s > 0
    assert job.encode_texts([]).shape == (0, enc.embed_dim)


def test_slice_size_follows_the_measured_speed() -> None:
    enc, lane = FakeEncoders(), TextLane(slice_ms=25)
    assert lane.slice_size(enc) == FIRST_SLICE
    lane.observe(enc, 1000, 1.0)  # 1,000 prompts/s: 25 ms is 25 prompts
    assert lane.slice_size(enc) == 25
    lane.observe(enc, 10, 1.0)  # a slow model: never below MIN_SLICE
    lane.observe(enc, 10, 1.0)
    assert lane.slice_size(enc) >= MIN_SLICE
    fast = FakeEncoders()
    lane.observe(fast, 10**6, 0.01)  # each encoder has its own speed; a fast one is capped
    assert lane.slice_size(fast) == MAX_SLICE
    assert lane.slice_size(enc) < MAX_SLICE


def test_one_slice_at_a_time_across_threads() -> None:
    enc, lane = Recording(), TextLane(slice_ms=1)
    outs: dict[int, np.ndarray] = {}

    def run(k: int) -> None:
        outs[k] = lane.job(enc).encode_texts([f"job{k} label {i}" for i in range(40)])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert enc.most_running == 1
    for k in range(4):
        np.testing.assert_array_equal(
            outs[k], FakeEncoders().encode_texts([f"job{k} label {i}" for i in range(40)])
        )


def test_a_new_job_goes_ahead_of_a_job_with_more_encoder_time() -> None:
    enc, lane = Recording(), TextLane(slice_ms=25, starve_ms=60_000)  # no starvation turn here
    lane.observe(enc, 8, 1.0)  # slow: slices of MIN_SLICE prompts
    big = lane.job(enc)
    big.attained_s = 5.0  # it has been encoding for a while
    holder = threading.Thread(target=lambda: lane.job(enc).encode_texts(["hold me"]))
    holder.start()
    assert enc.entered.wait(10)  # the lane is busy with a slice of another job
    t_big = threading.Thread(target=big.encode_texts, args=([f"big {i}" for i in range(3 * MIN_SLICE)],))
    t_big.start()
    while lane.stats()["waiting"] < 1:
        time.sleep(0.001)
    t_small = threading.Thread(target=lambda: lane.job(enc).encode_texts(["small one", "small two"]))
    t_small.start()
    while lane.stats()["waiting"] < 2:
        time.sleep(0.001)
    enc.release.set()
    for th in (holder, t_big, t_small):
        th.join()
    order = [who for who, _ in enc.log]
    # the small job arrived last but had no encoder time: it ran before any of the big job's slices
    assert order[:2] == ["hold", "small"], order
    assert set(order[2:]) == {"big"} and sum(n for who, n in enc.log if who == "big") == 3 * MIN_SLICE
    assert lane.stats()["waited"] >= 2


def test_requests_encode_through_the_lane_and_models_shows_it(tmp_path: Path) -> None:
    with TestClient(fake_app(tmp_path, text_slice_ms=5)) as c:
        before = c.get("/v1/models").json()["text_encoder"]
        r = c.post("/v1/embeddings/texts", json={"texts": ["a cat", "a dog"], "templates": "imagenet7"})
        assert r.status_code == 200
        after = c.get("/v1/models").json()["text_encoder"]
    assert after["prompts"] - before["prompts"] == 14  # 2 labels x 7 templates, all through the lane
    assert after["slices"] > before["slices"]
    assert after["slice_ms"] == 5.0


def test_a_build_still_advances_under_a_stream_of_new_small_jobs() -> None:
    """Least attained service alone would starve a build behind ever-new small jobs (each has had
    no encoder time); a slice kept waiting past starve_ms goes next."""
    enc, lane = Recording(), TextLane(slice_ms=1, starve_ms=30)
    small = 0
    stop = threading.Event()

    def smalls() -> None:  # two threads: a new small job is always waiting when a slice ends
        nonlocal small
        end = time.monotonic() + 4  # a lane without the guard fails the test, it does not hang it
        while not stop.is_set() and time.monotonic() < end:
            lane.job(enc).encode_texts(["small one"])
            small += 1

    hammer = [threading.Thread(target=smalls) for _ in range(2)]
    for th in hammer:
        th.start()
    while small < 5:
        time.sleep(0.001)
    big = lane.job(enc)
    big.attained_s = 5.0
    t = time.monotonic()
    big.encode_texts([f"big {i}" for i in range(3 * MIN_SLICE)])
    waited = time.monotonic() - t
    stop.set()
    for th in hammer:
        th.join()
    assert small > 10  # the small jobs kept coming all along
    assert waited < 2.0, waited  # each of its slices waited ~30 ms, not until the stream stopped
    assert sum(n for who, n in enc.log if who == "big") == 3 * MIN_SLICE
