"""What can go wrong in the engine, as domain errors: each carries a stable `code` and a message that
says what was wrong. None of them knows HTTP: app/api/errors.py maps codes to statuses in one table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class EngineError(Exception):
    """A request the engine cannot serve as asked; `code` names the reason (app/api/errors.py STATUS)."""

    code = "invalid_request"

    def __init__(self, message: str, detail: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.detail = message, detail
        if code is not None:
            self.code = code


class InvalidRequest(EngineError):
    """The request contradicts itself or the model (labels and a label set, a label too long...)."""


class ModelUnavailable(EngineError):
    """No model is loaded (still loading, or every load failed); `detail` holds the reason."""

    code = "model_unavailable"


class ModelNotFound(EngineError):
    """A request names a model this server does not serve; `detail` lists those it does."""

    code = "model_not_found"


class Draining(EngineError):
    """The server is shutting down: readiness fails so that the balancer sends no more work."""

    code = "draining"


class Stalled(EngineError):
    """The image encoder has run one call far past any expected time (or its worker is gone): not
    ready (the balancer sends work elsewhere) and, past the liveness bound, not alive (restart)."""

    code = "encoder_stalled"


class QuotaExceeded(EngineError):
    """A key over one of its quotas (requests per second, at once, prompts per minute)."""

    code = "quota_exceeded"

    def __init__(self, message: str, detail: Any, retry_after_s: float) -> None:
        super().__init__(message, detail)
        self.retry_after_s = retry_after_s


class QueueFull(EngineError):
    """The queue holds max_queue images already."""

    code = "overloaded"


class DeadlineExceeded(EngineError):
    """The request waited in the queue past its deadline and was dropped unencoded."""

    code = "queue_timeout"


class ReloadFailed(EngineError):
    """A new version was refused; the old model keeps serving (`detail` names it)."""

    code = "reload_failed"


class UrlError(EngineError):
    """An image URL that is not fetched (off, refused, unreachable, too slow, too large); `code` says
    which (app/runtime/url_fetch.py)."""

    code = "url_unreachable"


class LabelSetError(EngineError):
    """A label set that is unknown, misnamed, unreadable or cannot be stored; `code` says which."""


class LabelSetBuilding(EngineError):
    """A request names a set whose first matrix is still being built; retry after about its ETA."""

    code = "label_set_building"

    def __init__(self, message: str, detail: Any, retry_after_s: float) -> None:
        super().__init__(message, detail)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ImageFailure:
    """One image of a request with on_error="skip" that could not be used: it gets this in place of
    its labels, and the other images are classified. `code` is the one the whole request would have
    failed with (a key of app/api/errors.py STATUS)."""

    code: str
    message: str
