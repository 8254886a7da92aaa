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
class BuildFailure:
    """Why a label set's build failed: the server's error code and message."""

    code: str
    message: str


@dataclass(frozen=True)
class BuildProgress:
    """A label set's build, as PUT and GET show it: status building, ready, failed or superseded (a
    newer PUT, or a DELETE, took the name's place), for `model`; prompts_done of prompts_total
    (labels x templates) at prompts_per_s, eta_s seconds to go (None unless building, and until the
    first prompts are done), elapsed_s since started_at; source (memory, disk or encoded) once built;
    error when it failed."""

    status: str
    model: ModelRef
    labels: int
    templates: int
    prompts_done: int
    prompts_total: int
    prompts_per_s: float
    eta_s: float | None
    elapsed_s: float
    started_at: str | None = None
    source: str | None = None
    error: BuildFailure | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def fraction(self) -> float:
        """prompts_done / prompts_total, in [0, 1] (1 for a build with nothing to encode)."""
        return min(1.0, self.prompts_done / self.prompts_total) if self.prompts_total else 1.0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BuildProgress:
        err = d.get("error")
        return cls(
            status=str(d["status"]),
            model=ModelRef.from_json(d["model"]),
            labels=int(d.get("labels", 0)),
            templates=int(d.get("templates", 0)),
            prompts_done=int(d.get("prompts_done", 0)),
            prompts_total=int(d.get("prompts_total", 0)),
            prompts_per_s=float(d.get("prompts_per_s") or 0.0),
            eta_s=_opt_float(d.get("eta_s")),
            elapsed_s=float(d.get("elapsed_s") or 0.0),
            started_at=d.get("started_at"),
            source=d.get("source"),
            error=_failure(err) if err else None,
            raw=_extra(d, *_BUILD),
        )


_BUILD = (
    *("status", "model", "labels", "templates", "prompts_done", "prompts_total", "prompts_per_s"),
    *("eta_s", "elapsed_s", "started_at", "source", "error"),
)


def _failure(err: dict[str, Any]) -> BuildFailure:
    return BuildFailure(str(err.get("code") or "label_set_build_failed"), str(err.get("message", "")))


def _build(d: dict[str, Any]) -> BuildProgress | None:
    b = d.get("build")
    return BuildProgress.from_json(b) if b else None


@dataclass(frozen=True)
class LabelSetSummary:
    """A label set in the list (GET /v1/label-sets) or as stored (PUT): `label_count` labels;
    `templates` is the template set's name, or the number of templates when they were given as a
    list. status: ready (served), building, failed, or (PUT only) superseded by a newer PUT; "ready"
    where a server from before background builds does not say. `embeddings` once built, `build` and
    `status_url` only in the answer to PUT."""

    name: str
    label_count: int
    templates: str | int
    created_at: str | None
    embeddings: LabelSetEmbeddings | None = None
    status: str = "ready"
    build: BuildProgress | None = None
    status_url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelSetSummary:
        e = d.get("embeddings")
        emb = None
        if e:
            model = ModelRef.from_json(e["model"])
            extra = _extra(e, "model", "source", "build_ms")
            emb = LabelSetEmbeddings(model, str(e["source"]), float(e["build_ms"]), extra)
        t = d["templates"]
        templates = t if isinstance(t, str) else int(t)
        keys = ("name", "labels", "templates", "created_at", "embeddings", "status", "build", "status_url")
        return cls(
            name=str(d["name"]),
            label_count=int(d["labels"]),
            templates=templates,
            created_at=d.get("created_at"),
            embeddings=emb,
            status=str(d.get("status") or "ready"),
            build=_build(d),
            status_url=d.get("status_url"),
            raw=_extra(d, *keys),
        )


@dataclass(frozen=True)
class LabelSet:
    """One label set in full (GET /v1/label-sets/{name}): its labels in order, the templates they
    are put in, the template set's name when one was named, and its calibration for the model served.
    status: ready (served), building (not yet, or a newer definition builds while this one serves:
    then `staged` summarises that one) or failed (its newest build: `build.error` says why); `build`
    is the latest build of the name, running or finished (None when there was none since the start)."""

    name: str
    labels: list[str]
    templates: list[str]
    template_set: str | None
    created_at: str | None
    calibration: CalibrationState | None
    status: str = "ready"
    build: BuildProgress | None = None
    staged: LabelSetSummary | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelSet:
        cal, staged = d.get("calibration"), d.get("staged")
        keys = ("name", "labels", "templates", "template_set", "created_at", "calibration")
        return cls(
            name=str(d["name"]),
            labels=[str(x) for x in d["labels"]],
            templates=[str(x) for x in d["templates"]],
            template_set=d.get("template_set"),
            created_at=d.get("created_at"),
            calibration=CalibrationState.from_json(cal) if cal else None,
            status=str(d.get("status") or "ready"),
            build=_build(d),
            staged=LabelSetSummary.from_json({"status": "building", **staged}) if staged else None,
            raw=_extra(d, *keys, "status", "build", "staged"),
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
