"""What the sync and the async client share: the request each method sends (a Call), the images
turned into JSON, the answer checked and turned into an error, and when to retry.

Nothing here does I/O on the network: Client and AsyncClient send the Call and sleep between tries.
Images always go as JSON (`images: [base64 | {"url": ...}]`): the one body kind where files and URLs
keep the order they were given in (a multipart form sends its `image` files before its `image_url`s).
"""

from __future__ import annotations

import base64
import email.utils
import io
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union

import httpx

from zeroshot_client.errors import (
    ConnectionFailed,
    LabelSetBuildFailed,
    LabelSetBuildTimeout,
    RequestTimeout,
    ZeroshotError,
    error_class,
)
from zeroshot_client.types import BuildProgress, LabelSetEmbeddings, LabelSetSummary

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

# A path (str or Path), the file's bytes, an open binary file, a PIL image (sent as PNG), or an
# http(s) URL the server fetches (where it has ZEROSHOT_URL_FETCH on) or a data: URL.
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], "PILImage"]
Templates = Union[str, Sequence[str]]  # noqa: UP007

USER_AGENT = "zeroshot-client/0.1"
DEFAULT_TIMEOUT_S = 60.0  # a label set of 1,000 labels x 80 templates takes a while to encode on a CPU


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a 503 (no model yet, overloaded, draining) and a connection that failed before an answer
    came, waiting what Retry-After says (else backoff_s, doubled each time), at most max_retries
    times and max_retry_s seconds of waiting in all. Nothing else is retried: not 4xx (429 included:
    its retry_after is on the error), not a timeout (the server may still be working on it)."""

    max_retries: int = 3
    max_retry_s: float = 30.0
    backoff_s: float = 0.5

    def wait(self, attempt: int, waited: float, error: ZeroshotError) -> float | None:
        """Seconds to wait before try number attempt + 2, after `waited` seconds so far; None: give up."""
        retryable = error.status == 503 or isinstance(error, ConnectionFailed)
        if not retryable or attempt >= self.max_retries:
            return None
        wait = error.retry_after if error.retry_after is not None else self.backoff_s * 2**attempt
        return wait if waited + wait <= self.max_retry_s else None


NO_RETRIES = RetryPolicy(max_retries=0)


def retry_policy(retries: RetryPolicy | int | None) -> RetryPolicy:
    if retries is None:
        return NO_RETRIES
    if isinstance(retries, RetryPolicy):
        return retries
    if isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be a RetryPolicy or a count >= 0, not {retries!r}")
    return RetryPolicy(max_retries=retries)


@dataclass(frozen=True)
class Call:
    """One request: admin=True sends the admin token (label-set changes), else the API key;
    params is its query string (None: none)."""

    method: str
    path: str
    json: Any = None
    admin: bool = False
    retry: bool = True
    params: dict[str, str] | None = None


@dataclass(frozen=True)
class Credentials:
    """The server reads one key per request (X-API-Key, else Authorization: Bearer), and accepts the
    admin token wherever an API key is: so each request carries exactly one, as a Bearer token."""

    api_key: str | None = None
    admin_token: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def headers(self, admin: bool) -> dict[str, str]:
        key = (self.admin_token or self.api_key) if admin else (self.api_key or self.admin_token)
        return {**self.extra, **({"Authorization": f"Bearer {key}"} if key else {})}


def client_options(base_url: str, timeout: float | httpx.Timeout | None) -> dict[str, Any]:
    """Keyword arguments for httpx.Client / AsyncClient."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, not {base_url!r}")
    return {
        "base_url": base_url.rstrip("/"),
        "timeout": DEFAULT_TIMEOUT_S if timeout is None else timeout,
        "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"},
    }


# --- images ---


def _is_pil_image(image: object) -> bool:
    pil = sys.modules.get("PIL.Image")  # not imported: then `image` cannot be a PIL image
    return pil is not None and isinstance(image, pil.Image)


def _png(image: PILImage) -> bytes:
    buf = io.BytesIO()
    img = image if image.mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16") else image.convert("RGB")
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_item(image: ImageInput) -> str | dict[str, str]:
    """One entry of the JSON `images` list: {"url": ...} for an http(s) URL, else base64."""
    if isinstance(image, str):
        head = image[:8].lower()
        if head.startswith(("http://", "https://")):
            return {"url": image}
        if head.startswith("data:"):
            return image  # the server decodes a base64 data: URL itself
    if isinstance(image, str | os.PathLike):
        data = Path(image).read_bytes()
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    elif _is_pil_image(image):
        data = _png(image)  # type: ignore[arg-type]
    elif hasattr(image, "read"):
        data = image.read()
    else:
        raise TypeError(
            "an image is a path, bytes, an open binary file, a PIL image or an http(s) URL, "
            f"not {type(image).__name__}"
        )
    if not isinstance(data, bytes):
        raise TypeError(f"an image file must be read in binary mode, not as {type(data).__name__}")
    return base64.b64encode(data).decode("ascii")


def image_items(images: Iterable[ImageInput]) -> list[str | dict[str, str]]:
    if isinstance(images, str | bytes | os.PathLike) or _is_pil_image(images):
        raise TypeError("images is a list of images: for one image, call the single-image method")
    return [image_item(i) for i in images]


def _strings(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} is a list of strings, not one string: [{values!r}]")
    return list(values)


def _templates(templates: Templates | None) -> str | list[str] | None:
    return templates if templates is None or isinstance(templates, str) else list(templates)


# --- the calls ---


def classify_call(images: Iterable[ImageInput], labels: Sequence[str] | None, **options: Any) -> Call:
    """POST /v1/classify; options are the body's other fields (label_set, templates, top_k,
    mode, min_probability, min_cosine, min_neglabel, on_error, model): those left None are not sent."""
    body: dict[str, Any] = {"images": image_items(images)}
    if labels is not None:
        body["labels"] = _strings(labels, "labels")
    for name, value in options.items():
        if value is None:
            continue
        if name == "templates":
            value = _templates(value)
        elif name.startswith("min_"):
            value = float(value)  # the server's thresholds are strict floats
        body[name] = value
    return Call("POST", "/v1/classify", body)


def _with_model(body: dict[str, Any], model: str | None) -> dict[str, Any]:
    """The body, with the model to run on when one is named (else the server's default: its first)."""
    if model is not None:
        body["model"] = model
    return body


def embed_images_call(images: Iterable[ImageInput], model: str | None = None) -> Call:
    return Call("POST", "/v1/embeddings/images", _with_model({"images": image_items(images)}, model))


def embed_texts_call(texts: Sequence[str], templates: Templates | None, model: str | None = None) -> Call:
    body: dict[str, Any] = {"texts": _strings(texts, "texts")}
    if templates is not None:
        body["templates"] = _templates(templates)
    return Call("POST", "/v1/embeddings/texts", _with_model(body, model))


def label_set_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a label set name: {name!r}")
    return f"/v1/label-sets/{name}"


def get_label_set_call(name: str, model: str | None = None) -> Call:
    """GET /v1/label-sets/{name}; `?model=`: whose calibration it shows (default: the first model)."""
    return Call("GET", label_set_path(name), params=None if model is None else {"model": model})


def put_label_set_call(name: str, labels: Sequence[str], templates: Templates | None) -> Call:
    body: dict[str, Any] = {"labels": _strings(labels, "labels")}
    if templates is not None:
        body["templates"] = _templates(templates)
    return Call("PUT", label_set_path(name), body, admin=True)


# --- waiting for a label set's build ---

POLL_MIN_S, POLL_MAX_S = 0.2, 5.0  # between GETs: about the build's ETA, within these
POLL_UNKNOWN_S = 1.0  # before the build has an ETA (no prompt done yet)


class BuildWait:
    """put_label_set's wait for a build the server answered 202 for: how long to sleep before the
    next GET /v1/label-sets/{name}, and what its status means. Time waited is the longer of the seconds
    slept (through the client's own sleep, which a test may fake) and the clock's. Not `?wait=true`:
    a request held open for minutes is what proxies and balancers cut."""

    def __init__(self, name: str, timeout_s: float, poll_s: float | None) -> None:
        if not (timeout_s >= 0 and math.isfinite(timeout_s)):
            raise ValueError(f"timeout_s is a number of seconds >= 0, not {timeout_s!r}")
        if poll_s is not None and not (poll_s > 0 and math.isfinite(poll_s)):
            raise ValueError(f"poll_s is a number of seconds > 0 or None, not {poll_s!r}")
        self.name, self.timeout_s, self.poll_s = name, timeout_s, poll_s
        self.started, self.slept = time.monotonic(), 0.0

    def pause(self, status: str, build: BuildProgress | None) -> float | None:
        """Seconds to sleep before the next GET; None once the build ended (ready, superseded).
        Raises LabelSetBuildFailed when it failed, LabelSetBuildTimeout past timeout_s."""
        if status == "failed":
            raise self.failed(build)
        if status != "building":
            return None
        left = self.timeout_s - max(self.slept, time.monotonic() - self.started)
        if left <= 0:
            raise self.timed_out(build)
        wait = min(self.interval(build), left)
        self.slept += wait
        return wait

    def interval(self, build: BuildProgress | None) -> float:
        if self.poll_s is not None:
            return self.poll_s
        eta = None if build is None else build.eta_s
        return POLL_UNKNOWN_S if eta is None else min(max(eta, POLL_MIN_S), POLL_MAX_S)

    def failed(self, build: BuildProgress | None) -> LabelSetBuildFailed:
        why = None if build is None else build.error
        code = why.code if why else "label_set_build_failed"
        message = why.message if why else f"the build of label set {self.name!r} failed"
        e = LabelSetBuildFailed(code, message, 409)
        e.build = build
        return e

    def timed_out(self, build: BuildProgress | None) -> LabelSetBuildTimeout:
        done = "" if build is None else f" ({build.prompts_done} of {build.prompts_total} prompts done)"
        message = (
            f"label set {self.name!r} is still building after {self.timeout_s:g} s{done}; "
            "it builds on in the server: get_label_set shows its progress"
        )
        e = LabelSetBuildTimeout("label_set_build_timeout", message)
        e.build = build
        return e


def built(stored: LabelSetSummary, status: str, build: BuildProgress | None) -> LabelSetSummary:
    """The answer to PUT, updated with how the build it started ended (as GET last showed it)."""
    if stored.status != "building":
        return stored  # answered 200: nothing was waited for
    emb = stored.embeddings
    if status == "ready" and build is not None and build.source is not None:
        emb = LabelSetEmbeddings(build.model, build.source, round(1000 * build.elapsed_s, 1))
    return replace(stored, status=status, build=build, embeddings=emb)


def calibrate_call(
    name: str,
    images: Iterable[tuple[ImageInput, str | None]],
    target_precision: float | None,
    target_fpr: float | None,
    model: str | None = None,
) -> Call:
    rows = []
    for image, label in images:
        item = image_item(image)
        if isinstance(item, dict):
            raise ValueError("calibration images are sent to the server, not fetched by it: no URLs")
        rows.append({"image": item, "label": label})
    body: dict[str, Any] = {"images": rows}
    for key, value in (("target_precision", target_precision), ("target_fpr", target_fpr)):
        if value is not None:
            body[key] = float(value)
    return Call("POST", label_set_path(name) + "/calibration", _with_model(body, model), admin=True)


# --- answers ---


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        s = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return max(0.0, s) if math.isfinite(s) else None


def error_for(response: httpx.Response) -> ZeroshotError:
    """The error a non-2xx answer raises: the server's code and message from its error body."""
    status = response.status_code
    code, message, detail = f"http_{status}", response.text[:500] or response.reason_phrase, None
    try:
        body = response.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and "code" in err:
        code, message, detail = str(err["code"]), str(err.get("message", "")), err.get("detail")
    wait = retry_after(response.headers.get("retry-after"))
    return error_class(status, code)(code, message, status, wait, detail)


def result(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer; the ZeroshotError of any other."""
    if not response.is_success:
        raise error_for(response)
    try:
        return response.json()
    except ValueError:
        status = response.status_code
        raise ZeroshotError("invalid_response", f"a {status} answer without JSON", status) from None


def transport_error(e: httpx.TransportError) -> ZeroshotError:
    """httpx's failure -> ConnectionFailed (no answer came: safe to send again) or RequestTimeout."""
    if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout | httpx.RemoteProtocolError):
        return ConnectionFailed("connection_error", str(e) or type(e).__name__)
    if isinstance(e, httpx.TimeoutException):
        return RequestTimeout("timeout", str(e) or type(e).__name__)
    return ZeroshotError("transport_error", str(e) or type(e).__name__)
