"""The engine's DecodePool (app/runtime/images.py): the same pixels and errors as the plain functions,
decoded on several threads at once, a large request's images interleaved with a later one's, and a
pool that stops with the engine."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from app.runtime import images as images_module
from app.runtime.engine import Engine
from app.runtime.errors import ImageFailure
from app.runtime.images import DecodePool, decode_images, decode_some
from app.settings import Settings
from model.bundle.encoders import available_cpus
from model.bundle.preprocess import ImageError, InvalidImage, PreprocessConfig
from tests.fakes import fake_runtime, fake_settings

PRE = PreprocessConfig(image_size=32)
S = Settings()


def photo(seed: int, size: tuple[int, int], fmt: str = "JPEG", orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    if orientation is None:
        img.save(buf, format=fmt)
    else:  # the EXIF rotation is applied in the worker thread too
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, format=fmt, exif=exif)
    return buf.getvalue()


FILES = [
    photo(0, (64, 48)),
    photo(1, (40, 90), "PNG"),
    photo(2, (77, 77), orientation=6),
    photo(3, (120, 33), "WEBP"),
    photo(4, (50, 60)),
    photo(5, (33, 200), "PNG"),  # past the full-resize ratio: the windowed resize
]


@pytest.fixture
def pool() -> Iterator[DecodePool]:
    p = DecodePool(3)
    yield p
    p.close()


def test_the_pool_gives_the_pixels_of_decode_images(pool: DecodePool) -> None:
    want = decode_images(FILES, PRE, S)
    got = asyncio.run(pool.decode_images(FILES, PRE, S))
    assert got.shape == (len(FILES), 3, 32, 32) and got.dtype == np.float32
    assert got.tobytes() == want.tobytes()
    assert asyncio.run(pool.decode_images([], PRE, S)).shape == (0, 3, 32, 32)


def test_an_undecodable_image_is_named_by_its_index(pool: DecodePool) -> None:
    files = [FILES[0], FILES[1], b"not an image", FILES[2], b"\xff\xd8 truncated", FILES[3]]
    with pytest.raises(ImageError) as plain:
        decode_images(files, PRE, S)
    with pytest.raises(ImageError) as pooled:
        asyncio.run(pool.decode_images(files, PRE, S))
    assert pooled.value.message.startswith("image 2: ")  # the first bad one, as decode_images says
    assert (pooled.value.code, pooled.value.message) == (plain.value.code, plain.value.message)
    with pytest.raises(ImageError) as alone:  # one image: no index, as before
        asyncio.run(pool.decode_images([b"not an image"], PRE, S))
    assert not alone.value.message.startswith("image ")


def test_the_first_bad_image_is_named_even_when_a_later_one_fails_first(
    pool: DecodePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    later_failed = threading.Event()

    def fake(data: bytes, pre: PreprocessConfig, s: Settings) -> np.ndarray:
        if data == b"slow":
            assert later_failed.wait(5)
            raise InvalidImage("slow")
        later_failed.set()
        raise InvalidImage("fast")

    monkeypatch.setattr(images_module, "_decode", fake)
    with pytest.raises(ImageError) as e:
        asyncio.run(pool.decode_images([b"slow", b"fast"], PRE, S))
    assert e.value.message == "image 0: slow"  # what the API answers (str(e) keeps the bare one)


def test_skip_fails_only_the_bad_images(pool: DecodePool) -> None:
    earlier = ImageFailure("image_too_large", "image 3: too large while reading the body")
    items: list[bytes | ImageFailure] = [FILES[0], b"not an image", FILES[1], earlier, FILES[2], b""]
    want_pixels, want_failed = decode_some(items, PRE, S)
    pixels, failed = asyncio.run(pool.decode_some(items, PRE, S))
    assert sorted(failed) == [1, 3, 5]
    assert failed[3] is earlier
    assert failed[1].code == "invalid_image" and failed[1].message.startswith("image 1: ")
    assert failed == want_failed
    assert pixels.shape == (3, 3, 32, 32) and pixels.tobytes() == want_pixels.tobytes()
    assert pixels.tobytes() == decode_images(FILES[:3], PRE, S).tobytes()  # the good ones, in order
    none, all_failed = asyncio.run(pool.decode_some([b"x", earlier], PRE, S))
    assert none.shape == (0, 3, 32, 32) and sorted(all_failed) == [0, 1]


def test_images_decode_on_several_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each decode waits for the other at the barrier: they pass only if they run at the same time.
    barrier, names = threading.Barrier(2, timeout=10), set()

    def fake(data: bytes, pre: PreprocessConfig, s: Settings) -> np.ndarray:
        names.add(threading.current_thread().name)
        barrier.wait()
        return np.full((3, pre.image_size, pre.image_size), data[0], np.float32)

    monkeypatch.setattr(images_module, "_decode", fake)
    p = DecodePool(2)
    try:
        out = asyncio.run(p.decode_images([b"\x01", b"\x02"], PRE, S))
    finally:
        p.close()
    assert len(names) == 2 and all(n.startswith("decode") for n in names)
    assert out[0].min() == out[0].max() == 1 and out[1].min() == out[1].max() == 2  # each in its row


def test_a_later_request_gets_in_between_a_large_ones_images(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[bytes] = []

    def fake(data: bytes, pre: PreprocessConfig, s: Settings) -> np.ndarray:
        order.append(data)
        return np.zeros((3, pre.image_size, pre.image_size), np.float32)

    monkeypatch.setattr(images_module, "_decode", fake)
    p = DecodePool(1)  # a window of 2: the large request has at most 2 images queued at a time

    async def both() -> None:
        large = [b"L%d" % i for i in range(20)]
        await asyncio.gather(p.decode_images(large, PRE, S), p.decode_images([b"small"], PRE, S))

    try:
        asyncio.run(both())
    finally:
        p.close()
    assert len(order) == 21
    # behind only the 2 the large one had queued; a plain FIFO of every image would put it last
    assert order.index(b"small") <= 2


def test_a_cancelled_request_drops_its_images_not_started(monkeypatch: pytest.MonkeyPatch) -> None:
    started, release, order = threading.Event(), threading.Event(), []

    def fake(data: bytes, pre: PreprocessConfig, s: Settings) -> np.ndarray:
        order.append(data)
        if data == b"A0":
            started.set()
            assert release.wait(5)
        return np.zeros((3, pre.image_size, pre.image_size), np.float32)

    monkeypatch.setattr(images_module, "_decode", fake)
    p = DecodePool(1)

    async def main() -> None:
        task = asyncio.ensure_future(p.decode_images([b"A0", b"A1", b"A2"], PRE, S))
        assert await asyncio.to_thread(started.wait, 5)  # A0 runs, A1 is queued behind it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await p.decode_images([b"B0"], PRE, S)  # queued after A1: done once A1 would have been

    try:
        asyncio.run(main())
    finally:
        p.close()
    assert order == [b"A0", b"B0"]


def test_decode_workers_setting() -> None:
    with pytest.raises(ValidationError, match="decode_workers"):
        Settings(decode_workers=0)
    assert Settings(decode_workers=3).decode_workers == 3
    assert Settings().decode_workers is None


def test_decode_workers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROSHOT_DECODE_WORKERS", "5")
    assert Settings().decode_workers == 5
    monkeypatch.setenv("ZEROSHOT_DECODE_WORKERS", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_the_pool_size_defaults_to_the_cpus_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.runtime.images"):
        p, q = DecodePool(None), DecodePool(3)
    p.close()
    q.close()
    assert (p.workers, q.workers, q.window) == (available_cpus(), 3, 6)
    assert f"decoding images on {available_cpus()} threads" in caplog.text
    assert "decoding images on 3 threads" in caplog.text


def test_a_closed_pool_refuses_images_and_its_threads_end(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[threading.Thread] = set()
    real = images_module._decode

    def spy(data: bytes, pre: PreprocessConfig, s: Settings) -> np.ndarray:
        threads.add(threading.current_thread())
        return real(data, pre, s)

    monkeypatch.setattr(images_module, "_decode", spy)
    p = DecodePool(2)
    asyncio.run(p.decode_images(FILES, PRE, S))
    assert threads
    p.close()
    p.close()  # twice is harmless
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    with pytest.raises(RuntimeError):
        asyncio.run(p.decode_images(FILES[:1], PRE, S))


def test_the_engine_decodes_on_its_pool_and_closes_it_when_it_stops(tmp_path: Path) -> None:
    async def main() -> Engine:
        engine = Engine(fake_settings(tmp_path, decode_workers=2), fake_runtime)
        await engine.start()
        try:
            assert engine.decoder.workers == 2
            got = await engine.decoder.decode_images(FILES[:2], PRE, engine.settings)
            assert got.tobytes() == decode_images(FILES[:2], PRE, engine.settings).tobytes()
        finally:
            await engine.stop()
        return engine

    engine = asyncio.run(main())
    with pytest.raises(RuntimeError):
        asyncio.run(engine.decoder.decode_images(FILES[:1], PRE, engine.settings))
