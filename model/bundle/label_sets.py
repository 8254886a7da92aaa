"""A label set as stored: `<label_sets_dir>/<name>.json` (labels, templates). Torch-free.

The server's store (app/runtime/label_sets.py) owns the folder; the file format lives here so that
`zeroshot calibrate` reads a set the way the server does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    template_set: str | None  # the set name the templates came from, if any
    created_at: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.labels, self.templates]).encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": len(self.labels),
            "templates": self.template_set or len(self.templates),
            "created_at": self.created_at,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": list(self.labels),
            "templates": list(self.templates),
            "template_set": self.template_set,
            "created_at": self.created_at,
        }


def parse_label_set(d: Any) -> LabelSet:
    """A stored definition, its types checked: a hand-edited or damaged file must fail here (and be
    reported), not later inside the tokenizer as a 500."""
    labels, templates = d["labels"], d["templates"]
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        raise ValueError("'labels' is not a non-empty list of strings")
    if not (
        isinstance(templates, list) and templates and all(isinstance(t, str) and "{}" in t for t in templates)
    ):
        raise ValueError("'templates' is not a non-empty list of strings with '{}'")
    if not isinstance(d["name"], str) or not isinstance(d["created_at"], str):
        raise ValueError("'name' and 'created_at' must be strings")
    return LabelSet(d["name"], tuple(labels), tuple(templates), d.get("template_set"), d["created_at"])


def read_label_set(root: Path, name: str) -> LabelSet:
    """`<root>/<name>.json`, parsed; OSError or ValueError (with what is wrong) otherwise."""
    try:
        return parse_label_set(json.loads((root / f"{name}.json").read_text()))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{root / (name + '.json')} is not a label set file ({e})") from None
