"""Checking the fields of a request: labels (or texts), top_k, on_error, the mode and thresholds."""

from __future__ import annotations

from typing import Any, cast

from app.api.body import parse_json
from app.api.errors import ApiError
from app.runtime.engine import ON_ERROR, OnError
from model.bundle.answers import AnswerOptions
from model.bundle.openset import MODES, Mode

MAX_LABEL_CHARS = 1000  # 77 tokens are a few hundred characters at most; longer is refused unread


def parse_labels(raw: list[str], max_labels: int, what: str = "label") -> list[str]:
    """Repeated fields, or one field holding a JSON array of strings; non-empty, unique, printable."""
    labels: Any = raw
    if len(raw) == 1 and raw[0].lstrip().startswith("["):
        try:
            labels = parse_json(raw[0])
        except ValueError as e:
            raise ApiError(f"invalid_{what}s", f"{what}s is not a valid JSON array: {e}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ApiError(f"invalid_{what}s", f"{what}s must be a JSON array of strings")
    return check_labels(labels, max_labels, what)


def check_labels(labels: list[str], max_labels: int, what: str = "label") -> list[str]:
    """`what` is "label" or "text": the codes are invalid_labels, too_many_texts and so on."""
    if not labels:
        raise ApiError(f"invalid_{what}s", f"at least one {what} is required")
    if len(labels) > max_labels:
        raise ApiError(f"too_many_{what}s", f"{len(labels)} {what}s; at most {max_labels} per request")
    seen: set[str] = set()
    for i, lb in enumerate(labels):
        if len(lb) > MAX_LABEL_CHARS:  # far past any context length: refuse before tokenizing it
            raise ApiError(
                "label_too_long", f"{what} {i} is {len(lb):,} characters; at most {MAX_LABEL_CHARS:,}"
            )
        if not lb.strip():
            raise ApiError(f"invalid_{what}s", f"{what} {i} is empty or blank")
        if any(ord(c) < 32 or ord(c) == 127 for c in lb):
            raise ApiError(f"invalid_{what}s", f"{what} {lb[:40]!r} contains control characters")
        if lb in seen:
            raise ApiError(f"duplicate_{what}s", f"{what} {lb[:80]!r} is given more than once")
        seen.add(lb)
    return labels


def parse_top_k(raw: Any) -> int | None:
    """top_k >= 1, or None (the server's default); larger than the label count means all labels."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise ApiError("invalid_top_k", "top_k must be a whole number >= 1")
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise ApiError("invalid_top_k", f"top_k must be a whole number >= 1, not {str(raw)[:20]!r}") from None
    if k < 1:
        raise ApiError("invalid_top_k", f"top_k must be >= 1, not {k}")
    return k


def parse_on_error(raw: Any) -> OnError:
    """fail (the default: one bad image fails the request) or skip (it gets its own error)."""
    if raw is None or raw == "":
        return "fail"
    if raw not in ON_ERROR:
        raise ApiError(
            "invalid_request", f"on_error must be one of {', '.join(ON_ERROR)}, not {str(raw)[:20]!r}"
        )
    return cast(OnError, raw)


def parse_mode(raw: Any) -> Mode:
    """single (the default: a softmax over the labels) or multi (a probability per label)."""
    if raw is None or raw == "":
        return "single"
    if raw not in MODES:
        raise ApiError("invalid_mode", f"mode must be one of {', '.join(MODES)}, not {str(raw)[:20]!r}")
    return cast(Mode, raw)


def parse_threshold(raw: Any, name: str, lo: float, hi: float) -> float | None:
    """A number in [lo, hi], from JSON or a form field; None when not given."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise ApiError("invalid_threshold", f"{name} must be a number in [{lo:g}, {hi:g}]")
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise ApiError("invalid_threshold", f"{name} must be a number, not {str(raw)[:20]!r}") from None
    if not lo <= v <= hi:  # also refuses NaN
        raise ApiError("invalid_threshold", f"{name} must be in [{lo:g}, {hi:g}], not {v:g}")
    return v


def parse_answer(get: Any) -> AnswerOptions:
    """The mode and the abstain thresholds, from a form or a JSON body (`get(name)` reads a field)."""
    return AnswerOptions(
        mode=parse_mode(get("mode")),
        min_probability=parse_threshold(get("min_probability"), "min_probability", 0.0, 1.0),
        min_cosine=parse_threshold(get("min_cosine"), "min_cosine", -1.0, 1.0),
        min_neglabel=parse_threshold(get("min_neglabel"), "min_neglabel", 0.0, 1.0),
    )
