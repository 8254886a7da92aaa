"""The engine over the fake encoder, without HTTP: what a route gets back for what it passes in."""

from __future__ import annotations

import asyncio
import gc
import io
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image

from app.runtime import reload as reload_module
from app.runtime.engine import ClassifyRequest, Engine, LabelQuery
from app.runtime.errors import InvalidRequest, LabelSetError, ModelUnavailable
from app.runtime.reload import ModelHolder
from tests.fakes import fake_runtime, fake_settings

T = TypeVar("T")


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), colour).save(buf, format="PNG")
    return buf.getvalue()


def run(tmp: Path, body: Callable[[Engine], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        engine = Engine(fake_settings(tmp, **kw), fake_runtime)
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())


async def classify(engine: Engine, query: LabelQuery, top_k: int | None = None) -> Any:
    with engine.admit() as ticket:
        return await engine.classify(
            ClassifyRequest([png((200, 0, 0)), png((0, 0, 200))], query, top_k), ticket
        )


def test_classify_returns_ranked_labels_per_image(tmp_path: Path) -> None:
    async def body(engine: Engine) -> Any:
        return await classify(engine, LabelQuery(labels=["a", "b", "c"]), top_k=2)

    result = run(tmp_path, body)
    assert result.model == {"name": "default", "version": "fake-1"}
    assert len(result.results) == 2 and all(len(row.labels) == 2 for row in result.results)
    for row in result.results:
        assert row.labels[0].cosine >= row.labels[1].cosine
        assert row.decision is None and not row.abstained  # no thresholds, no calibration
    assert set(result.timing_ms) == {"decode_ms", "encode_ms", "total_ms"}


def test_a_label_set_request_looks_its_matrix_up_once(tmp_path: Path) -> None:
    lookups: list[tuple[str, ...]] = []

    async def body(engine: Engine) -> Any:
        await engine.put_label_set("shapes", ["red circle", "blue heart"], "synthetic")
        real = engine.cache.cached_set

        def counted(sha: str, labels: Any, templates: Any) -> np.ndarray | None:
            lookups.append(tuple(labels))
            return real(sha, labels, templates)

        engine.cache.cached_set = counted  # type: ignore[method-assign]
        return await classify(engine, LabelQuery(label_set="shapes"))

    result = run(tmp_path, body, admin_token="admin-token-123")
    assert {s.label for s in result.results[0].labels} == {"red circle", "blue heart"}
    assert lookups == [("red circle", "blue heart")]


def test_a_new_label_list_is_encoded_once_and_then_served_from_memory(tmp_path: Path) -> None:
    async def body(engine: Engine) -> list[int]:
        counts = []
        for _ in range(3):
            await classify(engine, LabelQuery(labels=["x", "y"], templates="synthetic"))
            counts.append(engine.cache.encoded_prompts)
        return counts

    assert run(tmp_path, body) == [10, 10, 10]  # 2 labels x 5 templates, then nothing


def test_queries_that_contradict_themselves_are_refused(tmp_path: Path) -> None:
    async def body(engine: Engine) -> list[str]:
        codes = []
        for q in (LabelQuery(), LabelQuery(labels=["a"], label_set="s"), LabelQuery(label_set="nope")):
            with pytest.raises((InvalidRequest, LabelSetError)) as info:
                await classify(engine, q)
            codes.append(info.value.code)
        return codes

    assert run(tmp_path, body) == ["invalid_labels", "invalid_request", "label_set_not_found"]


def test_without_a_model_nothing_is_admitted(tmp_path: Path) -> None:
    async def body(engine: Engine) -> tuple[int, int]:
        default = engine.models.default
        default.holder.runtime = None  # as after a start whose every load failed
        with pytest.raises(ModelUnavailable), engine.admit():
            pass
        return default.batcher.pending, default.batcher._incoming

    assert run(tmp_path, body) == (0, 0)  # refused before it took a place in the queue


def test_a_new_current_is_loaded_by_the_factory_and_swapped_in(tmp_path: Path) -> None:
    async def body(engine: Engine) -> tuple[str, str, bool]:
        before = engine.runtime().version
        (engine.settings.models_dir / "default" / "CURRENT").write_text("fake-2\n")
        result = await engine.reload()
        return before, engine.runtime().version, result["default"].changed

    assert run(tmp_path, body) == ("fake-1", "fake-2", True)


def test_a_replaced_model_is_given_back_to_the_system_once_no_request_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[str] = []
    monkeypatch.setattr(reload_module, "release_freed_memory", lambda: released.append("trim") or True)
    s = fake_settings(tmp_path)
    current = s.models_dir / "default" / "CURRENT"
    holder = ModelHolder("default", s, fake_runtime)
    holder.reload()
    assert released == []  # nothing was replaced
    in_flight = holder.runtime  # a request still answering on fake-1
    current.write_text("fake-2\n")
    assert holder.reload().changed and released == []  # fake-1 is still in use
    holder.reload()  # the watcher's next check: still in use
    assert released == []
    del in_flight
    gc.collect()
    holder.reload()
    assert released == ["trim"]  # released once, at the first check after its last request
    current.write_text("fake-3\n")
    holder.reload()  # nobody holds fake-2: released at the swap itself
    assert released == ["trim", "trim"]
    assert reload_module._malloc_trim() is not None  # glibc's, found (this project runs on Debian)


def test_a_replaced_model_is_freed_once_its_requests_are_answered_without_waiting_for_the_gc(
    tmp_path: Path,
) -> None:
    """No reference cycle and no idle worker keeps the last batch's model: with the cyclic GC off,
    the model a reload replaced is gone as soon as the reload returns."""

    async def body(engine: Engine) -> tuple[bool, bool]:
        for _ in range(3):
            await classify(engine, LabelQuery(labels=["a", "b"]))
        old = weakref.ref(engine.runtime())
        (engine.settings.models_dir / "default" / "CURRENT").write_text("fake-2\n")
        await engine.reload()
        return old() is None, engine.models.default.holder._retired == []

    gc.disable()
    try:
        assert run(tmp_path, body) == (True, True)  # freed, and its memory released at the swap
    finally:
        gc.enable()
