"""Typed results: frozen dataclasses parsed from the server's JSON answers.

Each keeps the fields it does not know in `raw`, so a newer server that adds fields breaks no older
client, and what it adds can still be read. Field names are the server's, except where one name
means two things there: a label set's summary has `label_count` for the server's integer `labels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _extra(d: dict[str, Any], *known: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True)
class ModelRef:
    """The bundle that answered: its name and version."""

    name: str
    version: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelRef:
        return cls(str(d["name"]), str(d["version"]), _extra(d, "name", "version"))


@dataclass(frozen=True)
class LabelScore:
    """One label for one image: its probability (a softmax over the labels in mode single, the
    label's own in mode multi) and the cosine similarity of image and label, in [-1, 1]."""

    label: str
    probability: float
    cosine: float
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelScore:
        return cls(str(d["label"]), float(d["probability"]), float(d["cosine"]), _extra(d, *_LABEL_SCORE))


_LABEL_SCORE = ("label", "probability", "cosine")


@dataclass(frozen=True)
class Abstain:
    """The rule that decided whether an image matches none of the labels: abstained when
    value < threshold; score is mcm, multi, cosine or neglabel; source is request or calibration."""

    score: str
    value: float
    threshold: float
    source: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Abstain:
        keys = ("score", "value", "threshold", "source")
        return cls(
            str(d["score"]), float(d["value"]), float(d["threshold"]), str(d["source"]), _extra(d, *keys)
        )


@dataclass(frozen=True)
class CalibrationState:
    """A label set's calibration: status fitted (used), stale, unreadable or none, and why not."""

    status: str
    reason: str | None = None
    fitted_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CalibrationState:
        return cls(
            str(d["status"]), d.get("reason"), d.get("fitted_at"), _extra(d, "status", "reason", "fitted_at")
        )


@dataclass(frozen=True)
class ImageFailure:
    """With on_error="skip": why this image was not classified (it then has no labels)."""

    code: str
    message: str


@dataclass(frozen=True)
class Classification:
    """One image's answer. `labels` are the top_k, highest cosine first (empty when `error` is set).
    model, mode, calibration and timing_ms are the request's, the same for every image sent with it;
    `raw` holds the unknown fields of the image's result and of the response."""

    labels: list[LabelScore]
    abstained: bool
    abstain: Abstain | None
    mode: str
    model: ModelRef
    calibration: CalibrationState | None = None
    error: ImageFailure | None = None
    timing_ms: dict[str, float] = field(default_factory=dict, compare=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def top(self) -> LabelScore | None:
        """The best label, or None for a skipped image."""
        return self.labels[0] if self.labels else None


_RESULT = ("labels", "abstained", "abstain", "error")
_RESPONSE = ("model", "mode", "results", "calibration", "timing_ms")


def classifications(d: dict[str, Any]) -> list[Classification]:
    """A POST /v1/classify answer -> one Classification per image, in the order sent."""
    model = ModelRef.from_json(d["model"])
    cal = CalibrationState.from_json(d["calibration"]) if d.get("calibration") else None
    timing = {k: float(v) for k, v in (d.get("timing_ms") or {}).items()}
    top_extra = _extra(d, *_RESPONSE)
    out = []
    for row in d["results"]:
        err = row.get("error")
        out.append(
            Classification(
                labels=[LabelScore.from_json(x) for x in row.get("labels") or []],
                abstained=bool(row.get("abstained")),
                abstain=Abstain.from_json(row["abstain"]) if row.get("abstain") else None,
                mode=str(d.get("mode", "single")),
                model=model,
                calibration=cal,
                error=ImageFailure(str(err["code"]), str(err["message"])) if err else None,
                timing_ms=timing,
                raw={**top_extra, **_extra(row, *_RESULT)},
            )
        )
    return out


@dataclass(frozen=True)
class Embeddings:
    """L2-normalized features, one row of `dim` floats per input, in the order sent."""

    model: ModelRef
    dim: int
    embeddings: list[list[float]]
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Embeddings:
        rows = [[float(x) for x in row] for row in d["embeddings"]]
        extra = _extra(d, "model", "dim", "embeddings")
        return cls(ModelRef.from_json(d["model"]), int(d["dim"]), rows, extra)


@dataclass(frozen=True)
class LabelSetEmbeddings:
    """What PUT did for the set's embeddings: the model, source (encoded, or reused) and time taken."""

    model: ModelRef
    source: str
    build_ms: float
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LabelSetSummary:
    """A label set in the list (GET /v1/label-sets) or as stored (PUT): `label_count` labels;
    `templates` is the template set's name, or the number of templates when they were given as a
    list. `embeddings` only in the answer to PUT."""

    name: str
    label_count: int
    templates: str | int
    created_at: str | None
    embeddings: LabelSetEmbeddings | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelSetSummary:
        e = d.get("embeddings")
        emb = None
        if e:
            keys = ("model", "source", "build_ms")
            model = ModelRef.from_json(e["model"])
            emb = LabelSetEmbeddings(model, str(e["source"]), float(e["build_ms"]), _extra(e, *keys))
        t = d["templates"]
        templates = t if isinstance(t, str) else int(t)
        extra = _extra(d, "name", "labels", "templates", "created_at", "embeddings")
        return cls(str(d["name"]), int(d["labels"]), templates, d.get("created_at"), emb, extra)


@dataclass(frozen=True)
class LabelSet:
    """One label set in full (GET /v1/label-sets/{name}): its labels in order, the templates they
    are put in, the template set's name when one was named, and its calibration for the model served."""

    name: str
    labels: list[str]
    templates: list[str]
    template_set: str | None
    created_at: str | None
    calibration: CalibrationState | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelSet:
        cal = d.get("calibration")
        keys = ("name", "labels", "templates", "template_set", "created_at", "calibration")
        return cls(
            name=str(d["name"]),
            labels=[str(x) for x in d["labels"]],
            templates=[str(x) for x in d["templates"]],
            template_set=d.get("template_set"),
            created_at=d.get("created_at"),
            calibration=CalibrationState.from_json(cal) if cal else None,
            raw=_extra(d, *keys),
        )


@dataclass(frozen=True)
class ModelInfo:
    """GET /v1/models: the bundle served; the batcher, cache and encoder statistics are in `raw`."""

    name: str
    version: str
    sha256: str | None
    created_at: str | None
    architecture: dict[str, Any]
    provider: str | None
    logit_scale: float | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelInfo:
        keys = ("name", "version", "sha256", "created_at", "architecture", "provider", "logit_scale")
        return cls(
            name=str(d["name"]),
            version=str(d["version"]),
            sha256=d.get("sha256"),
            created_at=d.get("created_at"),
            architecture=dict(d.get("architecture") or {}),
            provider=d.get("provider"),
            logit_scale=_opt_float(d.get("logit_scale")),
            raw=_extra(d, *keys),
        )
