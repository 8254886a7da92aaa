"""AsyncClient: the asyncio client, on httpx.AsyncClient; the same methods as Client (sync.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from zeroshot_client import _core
from zeroshot_client._core import Call, ImageInput, RetryPolicy, Templates
from zeroshot_client.errors import UnavailableError, ZeroshotError
from zeroshot_client.types import (
    CalibrationState,
    Classification,
    Embeddings,
    LabelSet,
    LabelSetSummary,
    ModelInfo,
    classifications,
)


class AsyncClient:
    """The zero-shot classification service at `base_url`.

    api_key goes with every /v1 request and admin_token with label-set changes (either is sent where
    the other is missing: the server accepts the admin token as an API key). retries: a RetryPolicy,
    a number of retries, or None for none; `sleep` is how the client waits between tries (tests pass
    one that records). transport: an httpx transport, e.g. httpx.MockTransport in tests.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        admin_token: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        retries: RetryPolicy | int | None = RetryPolicy(),  # noqa: B008 (frozen: one shared is fine)
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(transport=transport, **_core.client_options(base_url, timeout))
        self._credentials = _core.Credentials(api_key, admin_token, dict(headers or {}))
        self._retries = _core.retry_policy(retries)
        self._sleep = sleep

    # --- classification ---

    async def classify(
        self,
        image: ImageInput,
        labels: Sequence[str] | None = None,
        *,
        label_set: str | None = None,
        templates: Templates | None = None,
        top_k: int | None = None,
        mode: str | None = None,
        min_probability: float | None = None,
        min_cosine: float | None = None,
        min_neglabel: float | None = None,
        model: str | None = None,
    ) -> Classification:
        """Rank `labels` (or the registered `label_set`'s) for one image; `model`: the one to run on
        (None: the server's default, its first)."""
        options = dict(label_set=label_set, templates=templates, top_k=top_k, mode=mode, model=model)
        thresholds = dict(min_probability=min_probability, min_cosine=min_cosine, min_neglabel=min_neglabel)
        call = _core.classify_call([image], labels, **options, **thresholds)
        return classifications(await self._send(call))[0]

    async def classify_many(
        self,
        images: Iterable[ImageInput],
        labels: Sequence[str] | None = None,
        *,
        label_set: str | None = None,
        templates: Templates | None = None,
        top_k: int | None = None,
        mode: str | None = None,
        min_probability: float | None = None,
        min_cosine: float | None = None,
        min_neglabel: float | None = None,
        on_error: str | None = None,
        model: str | None = None,
    ) -> list[Classification]:
        """Several images in one request (the server's max_images_per_request at most): one
        Classification each, in order. on_error="skip": an image that cannot be used gets an
        `error` in place of labels instead of failing the request."""
        options = dict(
            label_set=label_set, templates=templates, top_k=top_k, mode=mode, on_error=on_error, model=model
        )
        thresholds = dict(min_probability=min_probability, min_cosine=min_cosine, min_neglabel=min_neglabel)
        return classifications(await self._send(_core.classify_call(images, labels, **options, **thresholds)))

    # --- embeddings ---

    async def embed_images(self, images: Iterable[ImageInput], *, model: str | None = None) -> Embeddings:
        """L2-normalized image features, one row per image, from `model` (None: the server's default)."""
        return Embeddings.from_json(await self._send(_core.embed_images_call(images, model)))

    async def embed_texts(
        self, texts: Sequence[str], templates: Templates | None = None, *, model: str | None = None
    ) -> Embeddings:
        """L2-normalized text features; with templates, each text is a label put into every template
        and the features averaged (prompt ensembling); from `model` (None: the server's default)."""
        return Embeddings.from_json(await self._send(_core.embed_texts_call(texts, templates, model)))

    # --- label sets ---

    async def label_sets(self) -> list[LabelSetSummary]:
        body = await self._send(Call("GET", "/v1/label-sets"))
        return [LabelSetSummary.from_json(d) for d in body["label_sets"]]

    async def get_label_set(self, name: str, *, model: str | None = None) -> LabelSet:
        """The set in full; its calibration is `model`'s (None: the server's default model's)."""
        return LabelSet.from_json(await self._send(_core.get_label_set_call(name, model)))

    async def put_label_set(
        self,
        name: str,
        labels: Sequence[str],
        templates: Templates | None = None,
        *,
        wait: bool = True,
        timeout_s: float = 600.0,
        poll_s: float | None = None,
    ) -> LabelSetSummary:
        """Register or replace a label set (needs the admin token). The server builds its embeddings
        in the background: a set built within ZEROSHOT_LABEL_SET_WAIT_S is answered at once (status
        ready), a larger one with 202 (status building). With `wait`, GET the set until its build ends,
        sleeping about its ETA (0.2 to 5 s) or `poll_s` between GETs: the result is then ready (a
        newer PUT of the name while polling: its build is the one followed; one before the answer:
        status superseded); LabelSetBuildFailed when the build failed, LabelSetBuildTimeout past
        `timeout_s` (the build goes on). wait=False: return the answer to PUT as it is;
        get_label_set(name).build shows the progress."""
        waiting = _core.BuildWait(name, timeout_s, poll_s) if wait else None
        call = _core.put_label_set_call(name, labels, templates)
        stored = LabelSetSummary.from_json(await self._send(call))
        if waiting is None:
            return stored
        status, build = stored.status, stored.build
        while (pause := waiting.pause(status, build)) is not None:
            await self._sleep(pause)
            now = await self.get_label_set(name)
            status, build = now.status, now.build
        return _core.built(stored, status, build)

    async def delete_label_set(self, name: str) -> None:
        await self._send(Call("DELETE", _core.label_set_path(name), admin=True))

    async def calibrate(
        self,
        name: str,
        images: Iterable[tuple[ImageInput, str | None]],
        *,
        target_precision: float | None = None,
        target_fpr: float | None = None,
        model: str | None = None,
    ) -> CalibrationState:
        """Calibrate a label set from (image, label) pairs, label None for an image that is none of
        them (needs the admin token), for `model` (None: the server's default model)."""
        call = _core.calibrate_call(name, images, target_precision, target_fpr, model)
        return CalibrationState.from_json((await self._send(call))["calibration"])

    # --- the service ---

    async def models(self) -> ModelInfo:
        return ModelInfo.from_json(await self._send(Call("GET", "/v1/models")))

    async def health(self) -> bool:
        """GET /healthz: True when alive, False on 503 (its image encoder is stuck); not retried."""
        return await self._probe("/healthz")

    async def ready(self) -> bool:
        """GET /readyz: True when a model is loaded and warm, False on 503; not retried."""
        return await self._probe("/readyz")

    async def _probe(self, path: str) -> bool:
        try:
            await self._send(Call("GET", path, retry=False))
        except UnavailableError:
            return False
        return True

    # --- sending ---

    async def _send(self, call: Call) -> Any:
        waited, attempt = 0.0, 0
        while True:
            try:
                return _core.result(await self._request(call))
            except ZeroshotError as e:
                wait = self._retries.wait(attempt, waited, e) if call.retry else None
                if wait is None:
                    raise
            await self._sleep(wait)
            waited, attempt = waited + wait, attempt + 1

    async def _request(self, call: Call) -> httpx.Response:
        headers = self._credentials.headers(call.admin)
        try:
            return await self._http.request(
                call.method, call.path, params=call.params, json=call.json, headers=headers
            )
        except httpx.TransportError as e:
            raise _core.transport_error(e) from e

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
