"""The image micro-batcher: concurrent requests share image-encoder calls.

Requests put their preprocessed images on one bounded queue. A worker thread takes the first waiting
item, adds what else is queued, and - while other requests are announced as on their way - waits up
to `max_wait_ms` for more, until `max_batch` images; it runs the encoder once (off the event loop)
and answers every request with its own rows. A lone request is never held back. Items carry the
runtime they started on, so a hot reload never moves a request to another model: a batch holds
items of one runtime only.

Admission is decided at once, before a request's body is read: when the images queued plus the
requests on their way reach `max_queue`, the request is refused (QueueFull -> 503 + Retry-After),
never left to wait without bound; `submit` checks the image count again once it is known. An item
whose deadline passed while it waited is dropped before it reaches the model (DeadlineExceeded ->
503); so is one whose request was cancelled (its client went away).

Out of memory (app/runtime/oom_split.py): a batch the encoder cannot allocate for is split in halves
and retried, down to one image; only an image that runs out of memory alone fails its requests. The
batcher then forms batches no larger than `effective_max_batch`: the largest piece that succeeded
(1 if none did), doubling again - never above `max_batch` - after 64 full batches without an OOM.
Both, with the count of OOMs, are in `stats()` (GET /v1/models) and /metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from app.runtime.errors import DeadlineExceeded, QueueFull
from app.runtime.oom_split import REGROW_AFTER, BatchCap, Encoded, encode_within

log = logging.getLogger(__name__)


class ImageModel(Protocol):
    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray: ...


@dataclass
class Announcement:
    """A request admitted at the door and on its way to the queue (see `admit`)."""

    done: bool = False
    started: float = field(default_factory=time.perf_counter)  # when it was admitted


@dataclass
class _Place:
    """An item's images as counted in the queue. The item's future holds its done-callback, and
    that callback holds this, not the item: a callback holding the item would make a reference
    cycle, so every answered item (its pixels and its model) would wait for the cyclic GC, and a
    model a reload replaced would stay in memory until then."""

    images: int
    released: bool = False  # its images no longer count as pending


@dataclass
class _Item:
    model: ImageModel
    pixels: np.ndarray  # [n, 3, S, S]
    deadline: float  # time.monotonic()
    enqueued: float
    future: concurrent.futures.Future[np.ndarray] = field(default_factory=concurrent.futures.Future)
    place: _Place = field(init=False)

    def __post_init__(self) -> None:
        self.place = _Place(len(self.pixels))


BatchHook = Callable[[int, float, float], None]  # (images in batch, oldest wait s, encoder s)


class ImageBatcher:
    def __init__(
        self,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: BatchHook | None = None,
        regrow_after: int = REGROW_AFTER,
    ) -> None:
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self._cap = BatchCap(max_batch, regrow_after)
        self.on_batch = on_batch
        self._q: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # images admitted and not yet answered
        self._incoming = 0  # requests announced (being decoded) and not yet submitted
        self._carry: _Item | None = None
        self._thread: threading.Thread | None = None
        self.batches = self.images = self.largest_batch = 0
        self.rejected = self.expired = self.cancelled = 0
        self.oom_errors = self.oom_failed = 0  # encoder OOMs; images that ran out of memory alone
        self._running_since: float | None = None  # time.monotonic() when the encoder call began
        self._running_images = 0

    def running(self) -> tuple[float, int] | None:
        """(seconds, images) of the encoder call under way, if one is: what the watchdog reads."""
        since = self._running_since
        return None if since is None else (time.monotonic() - since, self._running_images)

    @property
    def alive(self) -> bool:
        """The worker thread runs (or was never started)."""
        return self._thread is None or self._thread.is_alive()

    @property
    def effective_max_batch(self) -> int:
        """The most images a batch holds now: max_batch, or less since an out-of-memory error."""
        return self._cap.value

    @property
    def pending(self) -> int:
        return self._pending

    def stats(self) -> dict[str, float]:
        """Its settings and counters, for GET /v1/models."""
        return {
            "max_batch": self.max_batch,
            "max_wait_ms": round(1000 * self.max_wait_s, 3),
            "max_queue": self.max_queue,
            "queued": self.pending,
            "batches": self.batches,
            "images": self.images,
            "largest_batch": self.largest_batch,
            "rejected": self.rejected,
            "expired": self.expired,
            "cancelled": self.cancelled,
            "effective_max_batch": self.effective_max_batch,
            "oom_errors": self.oom_errors,
            "oom_failed": self.oom_failed,
        }

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="image-batcher", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Answer what is queued, then stop the worker."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None

    def submit(
        self, model: ImageModel, pixels: np.ndarray, timeout_s: float, announced: Announcement | None = None
    ) -> list[_Item]:
        """Admit all of a request's images or none (QueueFull); chunks of at most max_batch."""
        n = len(pixels)
        with self._lock:
            if self._pending + n > self.max_queue:
                self.rejected += 1
                raise QueueFull(
                    f"the server is busy: {self._pending} images are queued; the queue holds "
                    f"{self.max_queue}; retry later"
                )
            self._pending += n
        now = time.monotonic()
        items = [
            _Item(model, pixels[i : i + self.max_batch], now + timeout_s, now)
            for i in range(0, n, self.max_batch)
        ]
        if announced is not None and not announced.done:  # before the put: the worker must not wait for it
            announced.done = True
            self._incoming -= 1
        for it in items:
            # A request cancelled while queued (its client went away) frees its place at once; the
            # worker skips the item when it comes to it.
            it.future.add_done_callback(functools.partial(self._forget, it.place))
            self._q.put(it)
        return items

    def admit(self) -> Announcement:
        """Admit a request at the door and mark it as on its way (reading and decoding its images)
        until it submits or is released. Refused with QueueFull, before its body is read, when the
        images queued plus the requests on their way fill the queue: so the work a server accepts is
        bounded end to end, not only at the encoder. A batch waits up to max_wait_ms for more only
        while requests are on their way, so a lone request never waits for company that is not
        coming. Call from the event loop only."""
        if self.room <= 0:  # each request counts one image at least
            self.rejected += 1
            raise QueueFull(
                f"the server is busy: {self._pending} images are queued and {self._incoming} requests "
                f"on their way; the queue holds {self.max_queue}; retry later"
            )
        self._incoming += 1
        return Announcement()

    def release(self, a: Announcement) -> None:
        """A request admitted and not submitted is no longer on its way (it failed, or moved to
        another model's batcher). Call from the event loop only."""
        if not a.done:
            a.done = True
            self._incoming -= 1

    @property
    def room(self) -> int:
        """Requests the door would still admit now."""
        return self.max_queue - self._pending - self._incoming

    async def wait(self, items: list[_Item]) -> np.ndarray:
        """The features of submitted items, in order: [n, E]."""
        parts = await asyncio.gather(*(asyncio.wrap_future(it.future) for it in items))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # --- the worker thread ---
    def _take(self, until: float) -> _Item | None:
        """The next item for the batch being formed: what is queued now, or - while requests are
        known to be on their way (`admit`) - what arrives before `until`. Raises queue.Empty."""
        try:
            return self._q.get_nowait()
        except queue.Empty:
            remaining = until - time.monotonic()
            if remaining <= 0 or self._incoming <= 0:
                raise
            return self._q.get(timeout=remaining)

    def _run(self) -> None:
        while self._batch_once():
            pass
        if self._carry is not None:  # answer what is left before stopping
            self._process([self._carry])
            self._carry = None
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._process([item])

    def _batch_once(self) -> bool:
        """Form one batch and run it; False once told to stop. A method of its own so that its
        locals go when it returns: the worker waiting for the next item must not keep the last
        batch alive, pixels and model with it (a model a reload replaced would never be freed)."""
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            got = self._q.get()
            if got is None:
                return False
            first = got
        batch, n, cap = [first], len(first.pixels), self.effective_max_batch
        until = time.monotonic() + self.max_wait_s
        stopping = False
        while n < cap:
            try:
                nxt = self._take(until)
            except queue.Empty:
                break
            if nxt is None:
                stopping = True
                break
            if nxt.model is not first.model or n + len(nxt.pixels) > cap:
                self._carry = nxt  # it starts the next batch
                break
            batch.append(nxt)
            n += len(nxt.pixels)
        self._process(batch)
        return not stopping

    def _process(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live = []
        for it in batch:
            if it.future.cancelled():
                pass  # released and counted when it was cancelled (_forget)
            elif now > it.deadline:
                self.expired += 1
                self._fail(
                    it,
                    DeadlineExceeded(
                        f"the request was dropped unprocessed: waited {now - it.enqueued:.1f} s in the queue"
                    ),
                )
            else:
                live.append(it)
        if not live:
            return
        pixels = live[0].pixels if len(live) == 1 else np.concatenate([it.pixels for it in live])
        t = time.perf_counter()
        enc = Encoded(len(pixels))
        try:
            # an item chunked at max_batch may hold more than a lowered cap: encode_within cuts it
            encode_within(functools.partial(self._call, live[0].model), pixels, self._cap.value, enc)
        except Exception as e:  # one bad batch must not stop the worker
            log.exception("image encoder failed on a batch of %d", len(pixels))
            for it in live:
                self._fail(it, e)
            return
        finally:
            self._after(enc)
        done = enc.n - len(enc.failed)
        self.batches += 1 if done else 0
        self.images += done
        if self.on_batch and done:
            self.on_batch(done, now - min(it.enqueued for it in live), time.perf_counter() - t)
        start = 0
        for it in live:
            k = len(it.pixels)
            got = enc.part(start, start + k)
            if isinstance(got, BaseException):
                self._fail(it, got)
            else:
                self._release(it.place)
                with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
                    it.future.set_result(got)
            start += k

    def _call(self, model: ImageModel, pixels: np.ndarray) -> np.ndarray:
        """One encoder call, timed for the watchdog (`running`): each piece of a split batch alone."""
        self._running_images, self._running_since = len(pixels), time.monotonic()
        try:
            return model.encode_images(pixels)
        finally:
            self._running_since = None

    def _after(self, enc: Encoded) -> None:
        """Count a batch's pieces and OOMs, and lower (or regrow) the cap by them."""
        self.largest_batch = max(self.largest_batch, enc.largest_ok)
        before = self._cap.value
        self._cap.update(enc)
        if enc.ooms:
            self.oom_errors += enc.ooms
            self.oom_failed += len(enc.failed)
            # one line per batch, not per piece: a split is a handful of calls
            (log.error if enc.failed else log.warning)(
                "image encoder out of memory %d times on a batch of %d, split in halves: the largest piece "
                "that fit held %d images; "
                "%d images failed alone; batch cap %d -> %d",
                enc.ooms,
                enc.n,
                enc.largest_ok,
                len(enc.failed),
                before,
                self._cap.value,
            )
        elif self._cap.value != before:
            log.info("image batch cap raised %d -> %d (max %d)", before, self._cap.value, self.max_batch)

    def _forget(self, place: _Place, future: concurrent.futures.Future[np.ndarray]) -> None:
        if future.cancelled():
            self.cancelled += 1
            self._release(place)

    def _release(self, place: _Place) -> None:
        with self._lock:
            if not place.released:
                place.released = True
                self._pending -= place.images

    def _fail(self, it: _Item, e: BaseException) -> None:
        self._release(it.place)
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            it.future.set_exception(e)
