"""What a call raises: ZeroshotError, with the server's error code and message, and a few subclasses
by kind, so a caller can catch "not found" or "try again later" without comparing status numbers.

The server answers every error with `{"error": {"code", "message", "detail"}}` (app/api/errors.py);
an answer without that body (a proxy's HTML page, say) gets the code `http_<status>`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zeroshot_client.types import BuildProgress


class ZeroshotError(Exception):
    """A call that failed: `code` and `message` as the server sent them, the HTTP `status` (None when
    no answer came: see ConnectionFailed) and `retry_after` in seconds when the server named a wait."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.code, self.message, self.status = code, message, status
        self.retry_after, self.detail = retry_after, detail


class ClientError(ZeroshotError):
    """4xx: the request itself was refused; sending it again unchanged will not help."""


class AuthenticationError(ClientError):
    """401 unauthorized: a missing or wrong API key or admin token."""


class ForbiddenError(ClientError):
    """403: a feature this server has off (admin_disabled, url_fetch_disabled) or an image URL it
    refuses to fetch from (url_refused)."""


class NotFoundError(ClientError):
    """404: no such label set (label_set_not_found) or route (not_found)."""


class LabelSetBuildFailed(ClientError):
    """The label set's build failed, so the set is not served (or its previous version still is):
    409 label_set_build_failed from a call naming it, or put_label_set seeing its build end failed
    while waiting (then `code` and `message` are the build's error, status 409 as the server answers
    for the set from then on, and `build` the build's last state). Register it again once fixed."""

    build: BuildProgress | None = None


class RateLimitedError(ClientError):
    """429 quota_exceeded: this key is over its quota; `retry_after` says when it may ask again."""


class ServerError(ZeroshotError):
    """5xx: the server could not answer."""


class UnavailableError(ServerError):
    """503: no model loaded, overloaded, draining; retried by the client within its budget."""


class ConnectionFailed(ZeroshotError):
    """No answer came: the server could not be reached (code connection_error, status None)."""


class RequestTimeout(ZeroshotError):
    """No answer within the timeout (code timeout, status None); not retried: the server may still
    be working on it."""


class LabelSetBuildTimeout(ZeroshotError, TimeoutError):
    """put_label_set waited its timeout_s and the set is still building (code label_set_build_timeout,
    status None). The build goes on in the server: `build` is its last progress seen; follow it with
    get_label_set. Also a TimeoutError."""

    build: BuildProgress | None = None


def error_class(status: int, code: str | None = None) -> type[ZeroshotError]:
    if code == "label_set_build_failed" and 400 <= status < 500:
        return LabelSetBuildFailed
    if status == 401:
        return AuthenticationError
    if status == 403:
        return ForbiddenError
    if status == 404:
        return NotFoundError
    if status == 429:
        return RateLimitedError
    if status == 503:
        return UnavailableError
    if 400 <= status < 500:
        return ClientError
    if status >= 500:
        return ServerError
    return ZeroshotError
