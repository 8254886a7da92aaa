"""Out of memory in the image encoder: the batch is split in halves and retried, every request gets
its own rows when a smaller batch fits, the batch cap drops and may climb back, and it is counted
(stats, /metrics). Errors are onnxruntime's own classes with the messages its CUDA allocators give."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

from app.runtime.batcher import ImageBatcher
from app.runtime.oom_split import BatchCap, Encoded, EncoderOutOfMemory
from model.bundle.oom import is_out_of_memory
from tests.app.test_batcher import Fake, encode_all, images
from tests.fakes import fake_app

ORT_OOM = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
    "Name:'/visual/conv1/Conv' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 "
    "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, "
    "onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 1207959552"
)
OOM_MESSAGES = [
    ORT_OOM,
    "CUDA failure 2: out of memory ; GPU=0 ; hostname=x ; file=cuda_allocator.cc ; line=47",
    "CUDNN failure 4: CUDNN_STATUS_ALLOC_FAILED ; GPU=0",
    "BFCArena::AllocateRawInternal Available memory of 0 is smaller than requested bytes of 37748736",
    "CUDA error cudaErrorMemoryAllocation: out of memory",
    "TensorRT EP failed: OutOfMemory",
]
NOT_OOM = [
    "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: pixel_values for the "
    "following indices index: 2 Got: 16 Expected: 224",
    "[ONNXRuntimeError] : 1 : FAIL : Load model from x.onnx failed: Protobuf parsing failed.",
    "encoder exploded",
]


@pytest.mark.parametrize("cls", [RuntimeException, Fail, RuntimeError])
@pytest.mark.parametrize("message", OOM_MESSAGES)
def test_onnxruntime_out_of_memory_errors_are_recognised(cls: type[Exception], message: str) -> None:
    assert is_out_of_memory(cls(message))


@pytest.mark.parametrize("cls", [RuntimeException, Fail, RuntimeError, ValueError])
@pytest.mark.parametrize("message", NOT_OOM)
def test_other_errors_are_not_out_of_memory(cls: type[Exception], message: str) -> None:
    assert not is_out_of_memory(cls(message))


def test_memory_error_and_an_explicit_cause_count_but_an_implicit_context_does_not() -> None:
    assert is_out_of_memory(MemoryError())
    wrapped = RuntimeError("image encoder failed")
    wrapped.__cause__ = RuntimeException(ORT_OOM)
    assert is_out_of_memory(wrapped)
    unrelated = ValueError("bad shape")
    unrelated.__context__ = RuntimeException(ORT_OOM)  # raised while handling an OOM: not one itself
    assert not is_out_of_memory(unrelated)


class Oom(Fake):
    """The first-pixel fake, but raising onnxruntime's OOM for a batch above `fits` images, or for
    any batch holding an image id in `poison` (it runs out of memory even alone)."""

    def __init__(self, fits: int | None = None, poison: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.fits, self.poison = fits, poison
        self.gate = threading.Event()
        self.gate.set()

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        self.calls.append(len(pixel_values))
        assert self.gate.wait(5), "the test never opened the gate"
        ids = set(pixel_values[:, 0, 0, 0].astype(int).tolist())
        if (self.fits is not None and len(pixel_values) > self.fits) or ids & self.poison:
            raise RuntimeException(ORT_OOM)
        return pixel_values[:, :1, 0, 0].copy()


def test_a_batch_that_runs_out_of_memory_is_split_and_every_request_gets_its_rows() -> None:
    b = ImageBatcher(max_batch=8, max_wait_ms=0, max_queue=64)
    model = Oom(fits=3)
    groups = [(1,), (2, 3), (4,), (5, 6, 7), (8,), (9,)]
    items = [b.submit(model, images(*g), 10.0) for g in groups]  # queued before start: one batch of 8
    b.start()
    for g, its in zip(groups, items, strict=True):
        assert np.concatenate([it.future.result(5) for it in its])[:, 0].tolist() == list(g)
    # 8 -> 4 + 4 (both too large) -> 2 + 2 + 2 + 2; then (9,) alone, within the new cap
    assert model.calls == [8, 4, 2, 2, 4, 2, 2, 1]
    assert b.oom_errors == 3 and b.oom_failed == 0 and b.effective_max_batch == 2 <= model.fits
    stats = b.stats()
    assert stats["oom_errors"] == 3 and stats["effective_max_batch"] == 2 and stats["max_batch"] == 8
    assert b.images == 9 and b.largest_batch == 2 and b.pending == 0

    # later batches are formed within the cap: four singles queued behind a busy worker make 2 + 2
    model.gate.clear()
    busy = b.submit(model, images(10), 10.0)
    deadline = time.monotonic() + 5
    while len(model.calls) < 9 and time.monotonic() < deadline:
        time.sleep(0.005)
    queued = [b.submit(model, images(i), 10.0) for i in (11, 12, 13, 14)]
    model.gate.set()
    assert busy[0].future.result(5)[0, 0] == 10
    assert [q[0].future.result(5)[0, 0] for q in queued] == [11, 12, 13, 14]
    # and a request of more images than the cap is cut to it before the encoder sees it
    (big,) = asyncio.run(encode_all(b, model, [(20, 21, 22, 23, 24)]))
    b.close()
    assert model.calls[8:] == [1, 2, 2, 2, 2, 1] and b.oom_errors == 3
    assert big[:, 0].tolist() == [20, 21, 22, 23, 24]


def test_concurrent_requests_over_the_limit_all_succeed() -> None:
    b = ImageBatcher(max_batch=16, max_wait_ms=200, max_queue=64)
    b.start()
    model = Oom(fits=3)
    groups = [(1,), (2, 3), (4,), (5, 6, 7), (8,), (9,), (10, 11, 12, 13)]
    out = asyncio.run(encode_all(b, model, groups))
    b.close()
    for g, feats in zip(groups, out, strict=True):
        assert feats[:, 0].tolist() == list(g)
    assert b.oom_errors >= 1 and b.effective_max_batch <= 3 and b.oom_failed == 0
    assert b.stats()["oom_errors"] == b.oom_errors


def test_an_image_out_of_memory_alone_fails_its_request_only_and_the_worker_goes_on() -> None:
    b = ImageBatcher(max_batch=8, max_wait_ms=0, max_queue=64)
    model = Oom(poison=frozenset({666}))
    ok1, bad, ok2 = (b.submit(model, images(*g), 10.0) for g in [(1, 2), (666, 5), (3,)])
    b.start()
    assert ok1[0].future.result(5)[:, 0].tolist() == [1, 2]
    assert ok2[0].future.result(5)[:, 0].tolist() == [3]
    with pytest.raises(EncoderOutOfMemory, match=r"out of memory .* even alone") as err:
        bad[0].future.result(5)
    assert err.value.code == "encoder_out_of_memory" and isinstance(err.value.__cause__, RuntimeException)
    assert b.oom_failed == 1 and b.stats()["oom_failed"] == 1
    # 5 -> (1, 2) + (666, 5, 3) -> 666 alone (fails) + (5, 3): the largest piece that fit held 2
    assert model.calls == [5, 2, 3, 1, 2] and b.oom_errors == 3 and b.effective_max_batch == 2

    always = Oom(fits=0)  # nothing fits, not even one image
    with pytest.raises(EncoderOutOfMemory):
        b.submit(always, images(7), 10.0)[0].future.result(5)
    assert b.effective_max_batch == 1  # nothing fitted: one image at a time
    after = b.submit(Fake(), images(8, 9), 10.0)  # the worker keeps serving
    assert after[0].future.result(5)[:, 0].tolist() == [8, 9]
    b.close()
    assert b.pending == 0


def test_an_error_that_is_not_out_of_memory_fails_the_batch_unsplit() -> None:
    b = ImageBatcher(max_batch=8, max_wait_ms=0, max_queue=64)

    class Broken(Fake):
        def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
            self.calls.append(len(pixel_values))
            raise RuntimeException(NOT_OOM[0])

    model = Broken()
    items = [b.submit(model, images(*g), 10.0) for g in [(1,), (2, 3), (4,)]]
    b.start()
    for its in items:
        with pytest.raises(RuntimeException, match="INVALID_ARGUMENT"):
            its[0].future.result(5)
    b.close()
    assert model.calls == [4]  # once, whole: a shape error would fail every half too
    assert b.oom_errors == 0 and b.effective_max_batch == 8 and b.pending == 0


def test_the_cap_doubles_back_after_full_batches_never_above_max_batch() -> None:
    cap = BatchCap(max_batch=8, regrow_after=3)
    cap.update(Encoded(8, ooms=3, largest_ok=2))
    assert cap.value == 2
    cap.update(Encoded(1, largest_ok=1))  # a batch below the cap proves nothing about the cap
    for _ in range(2):
        cap.update(Encoded(2, largest_ok=2))
    assert cap.value == 2
    cap.update(Encoded(2, largest_ok=2))
    assert cap.value == 4
    for _ in range(3):
        cap.update(Encoded(4, largest_ok=4))
    assert cap.value == 8
    for _ in range(5):
        cap.update(Encoded(8, largest_ok=8))
    assert cap.value == 8  # max_batch is the ceiling
    cap.update(Encoded(8, ooms=1, largest_ok=4))
    assert cap.value == 4


def test_the_batcher_regrows_its_cap_once_memory_is_free_again() -> None:
    b = ImageBatcher(max_batch=8, max_wait_ms=0, max_queue=64, regrow_after=2)
    b.start()
    model = Oom(fits=2)
    assert b.submit(model, images(*range(8)), 10.0)[0].future.result(5)[:, 0].tolist() == list(range(8))
    assert b.effective_max_batch == 2
    model.fits = None  # the memory is free again
    for _ in range(2):
        b.submit(model, images(1, 2), 10.0)[0].future.result(5)
    assert b.effective_max_batch == 4
    b.submit(model, images(1, 2, 3, 4), 10.0)[0].future.result(5)
    b.submit(model, images(1, 2, 3, 4), 10.0)[0].future.result(5)
    b.close()
    assert b.effective_max_batch == 8 and model.calls[-2:] == [4, 4]


def test_the_metrics_and_the_model_list_show_the_splits_and_the_cap(tmp_path: Path) -> None:
    app = fake_app(tmp_path, max_batch=8)
    with TestClient(app) as c:
        batcher = app.state.engine.models.default.batcher
        assert 'zeroshot_batch_cap{model="default"} 8.0' in c.get("/metrics").text
        got = batcher.submit(Oom(fits=3), images(*range(8)), 10.0)[0].future.result(5)
        assert got[:, 0].tolist() == list(range(8))
        text = c.get("/metrics").text
        listed = c.get("/v1/models").json()["models"][0]["batcher"]
    assert 'zeroshot_encoder_oom_total{model="default"} 3.0' in text
    assert 'zeroshot_batch_cap{model="default"} 2.0' in text
    assert listed["effective_max_batch"] == 2 and listed["oom_errors"] == 3 and listed["oom_failed"] == 0


def test_a_request_whose_image_runs_out_of_memory_alone_gets_a_503_with_retry_after(tmp_path: Path) -> None:
    """Through HTTP: the answer says what happened and when to retry, never a bare 500."""
    from app.main import create_app
    from tests.fakes import FakeEncoders, fake_settings

    class AlwaysOom(FakeEncoders):
        armed = False  # the warm-up at start must pass

        def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
            if self.armed:
                raise RuntimeException("Failed to allocate memory for requested buffer of size 1048576")
            return super().encode_images(pixel_values)

    enc = AlwaysOom()
    app = create_app(fake_settings(tmp_path, max_batch=4), enc.runtime_factory())
    png = (Path(__file__).parents[2] / "docs" / "yellow-cross.png").read_bytes()
    with TestClient(app) as c:
        enc.armed = True
        r = c.post(
            "/v1/classify", files=[("image", ("y.png", png, "image/png"))], data={"labels": ["a", "b"]}
        )
        enc.armed = False
        ok = c.post(
            "/v1/classify", files=[("image", ("y.png", png, "image/png"))], data={"labels": ["a", "b"]}
        )
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert (
        r.json()["error"]["code"] == "encoder_out_of_memory" and "even alone" in r.json()["error"]["message"]
    )
    assert ok.status_code == 200  # the worker goes on
