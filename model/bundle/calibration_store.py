"""A label set's calibrations, one per bundle: `<label_sets_dir>/<name>.calibration.json`. Torch-free.

A fit holds what `zeroshot calibrate` (or the admin route) learned from labelled images for one
bundle (by sha) and one definition of the set (by digest): the softmax temperature, the per-label
sigmoid of `multi` answers and the abstain rule, with the figures that justify them. A fit made on
another bundle or another definition is *stale*: reported as such, never used. The file is replaced
atomically, so a crash mid-write leaves the previous file whole.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from model.bundle.atomic import atomic_write_text
from model.bundle.openset import SCORES, Rule, Score

FORMAT = 1
KEEP_FITS = 4  # bundles remembered per set: a rollback finds its fit again


class CalibrationError(ValueError):
    """A calibration file that cannot be used: what is wrong with it."""


@dataclass(frozen=True)
class Fit:
    sha: str  # the bundle it was fitted on
    model: dict[str, str]  # its name and version, for people
    labels_digest: str  # the label set definition it was fitted for
    fitted_at: str
    temperature: float  # single: softmax(logit_scale x cosine / temperature)
    a: tuple[float, ...]  # multi: sigmoid(a_i z_i + b_i) per label; z: figures["multi_on"]
    # ("cosine - reference" on CLIP bundles; "cosine" on sigmoid-loss ones)
    b: tuple[float, ...]
    rule: Rule | None  # abstain when rule.score < rule.threshold
    figures: dict[str, Any] = field(default_factory=dict)  # images, ECE before/after, AUROC, ...

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["rule"] = (
            None if self.rule is None else {"score": self.rule.score, "threshold": self.rule.threshold}
        )
        return d


Status = Literal["fitted", "stale", "unreadable", "none"]


@dataclass(frozen=True)
class Calibration:
    """The state of a set's calibration for the bundle served: `fit` only when status is fitted."""

    status: Status
    fit: Fit | None = None
    reason: str = ""
    stale: tuple[Fit, ...] = ()

    def describe(self) -> dict[str, Any]:
        """What GET /v1/label-sets/{name} shows."""
        out: dict[str, Any] = {"status": self.status}
        if self.fit is not None:
            out.update(self.fit.to_json())
        if self.reason:
            out["reason"] = self.reason
        if self.stale:
            out["stale_fits"] = [{"model": f.model, "fitted_at": f.fitted_at} for f in self.stale]
        return out


def path_for(root: Path, name: str) -> Path:
    return root / f"{name}.calibration.json"


def _number(d: dict[str, Any], key: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise CalibrationError(f"{key!r} is not a finite number")
    return float(v)


def _parse_fit(d: Any) -> Fit:
    if not isinstance(d, dict):
        raise CalibrationError("a fit is not an object")
    try:
        a = tuple(float(x) for x in d["a"])
        b = tuple(float(x) for x in d["b"])
        if len(a) != len(b) or not all(math.isfinite(x) for x in a + b):
            raise CalibrationError("'a' and 'b' must be lists of finite numbers of one length")
        rule = None
        if d["rule"] is not None:
            score = d["rule"]["score"]
            if score not in SCORES:
                raise CalibrationError(f"unknown abstain score {score!r}")
            rule = Rule(cast(Score, score), _number(d["rule"], "threshold"), "calibration")
        temperature = _number(d, "temperature")
        if temperature <= 0:
            raise CalibrationError("'temperature' must be > 0")
        return Fit(
            str(d["sha"]), dict(d["model"]), str(d["labels_digest"]), str(d["fitted_at"]),
            temperature, a, b, rule, dict(d.get("figures") or {}),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CalibrationError):
            raise
        raise CalibrationError(f"a fit is malformed: {type(e).__name__}: {e}") from None


def read_fits(path: Path) -> list[Fit]:
    """Every fit in the file ([] when there is none); CalibrationError when it is damaged."""
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{path.name} cannot be read: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("fits"), list):
        raise CalibrationError(f"{path.name} is not a calibration file of format {FORMAT}")
    return [_parse_fit(f) for f in d["fits"]]


def write_fit(path: Path, fit: Fit) -> None:
    """Add (or replace) the fit for its bundle; keep the newest KEEP_FITS. Atomic."""
    try:
        others = [f for f in read_fits(path) if f.sha != fit.sha]
    except CalibrationError:
        others = []  # a damaged file is replaced by one holding the new fit
    fits = [fit, *others][:KEEP_FITS]
    text = json.dumps({"format": FORMAT, "fits": [f.to_json() for f in fits]}, indent=1)
    atomic_write_text(path, text)


def resolve(fits: list[Fit], sha: str, labels_digest: str, n_labels: int) -> Calibration:
    """The fit to use for the bundle `sha` and the set's current definition, or why there is none."""
    if not fits:
        return Calibration("none")
    for f in fits:
        if f.sha == sha and f.labels_digest == labels_digest and len(f.a) == n_labels:
            return Calibration("fitted", f)
    same_model = [f for f in fits if f.sha == sha]
    if same_model:
        reason = "the label set was changed after it was calibrated: calibrate it again"
    else:
        reason = "calibrated on another model (see stale_fits): calibrate it again for the one served"
    return Calibration("stale", reason=reason, stale=tuple(fits))
