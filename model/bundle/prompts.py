"""Named prompt-template sets and the helpers that validate and fill them.

A template is a string with exactly one ``{}`` where the label goes. The server fills every
template of a set for each label, encodes the prompts and averages the normalized text features
(CLIP's prompt ensembling, docs/architecture.md). Training and serving import the same sets from here,
so the prompts a model is evaluated with are the prompts it is served with.

Torch-free and stdlib-only: ``app`` imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

__all__ = [
    "DEFAULT_SET",
    "TEMPLATE_SETS",
    "TemplateError",
    "fill",
    "get_templates",
    "load_templates",
    "resolve_templates",
    "validate_templates",
]

PLACEHOLDER = "{}"
DEFAULT_SET = "default"

# The 80 templates OpenAI published for ImageNet zero-shot, in the order of
# openai/CLIP notebooks/Prompt_Engineering_for_ImageNet.ipynb. Published data: keep verbatim,
# including the ungrammatical "a origami {}." and "a embroidered {}.".
_IMAGENET80 = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# The 7-template subset the same notebook recommends (found by sequential forward selection).
_IMAGENET7 = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# Phrasings that match the caption styles of model.data.synthetic, for the shapes domain.
_SYNTHETIC = (
    "a {}.",
    "a photo of a {}.",
    "there is a {}.",
    "a picture of a {}.",
    "an image of a {}.",
)

TEMPLATE_SETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        DEFAULT_SET: ("a photo of a {}.",),
        "imagenet80": _IMAGENET80,
        "imagenet7": _IMAGENET7,
        "none": (PLACEHOLDER,),
        "synthetic": _SYNTHETIC,
    }
)


class TemplateError(ValueError):
    """A template set name or a template list is not usable. Mapped to HTTP 4xx by the app."""

    code = "invalid_templates"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def get_templates(name: str) -> tuple[str, ...]:
    """The named template set; raises TemplateError (not KeyError) for an unknown name."""
    try:
        return TEMPLATE_SETS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(TEMPLATE_SETS))
        raise TemplateError(f"unknown template set {name!r}; known sets: {known}") from None


def validate_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Check a template list: non-empty, strings, exactly one "{}" each, no duplicates."""
    if isinstance(templates, str):
        raise TemplateError("templates must be a list of strings, not a single string")
    items = tuple(templates)
    if not items:
        raise TemplateError("template list is empty")
    seen: set[str] = set()
    for i, template in enumerate(items):
        if not isinstance(template, str):
            raise TemplateError(f"template {i} is not a string: {template!r}")
        count = template.count(PLACEHOLDER)
        if count != 1:
            raise TemplateError(f'template {i} {template!r} must contain exactly one "{{}}", found {count}')
        if template in seen:
            raise TemplateError(f"template {i} {template!r} is a duplicate")
        seen.add(template)
    return items


def resolve_templates(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Turn a user's template spec into a validated tuple.

    None -> the default set; a known set name -> that set; a string holding a JSON array
    (e.g. '["a {}.", "the {}."]') -> parsed and validated; a list -> validated.
    """
    if spec is None:
        return TEMPLATE_SETS[DEFAULT_SET]
    if isinstance(spec, str):
        text = spec.strip()
        return _json_templates(text) if text.startswith("[") else get_templates(text)
    return validate_templates(spec)


def _json_templates(text: str) -> tuple[str, ...]:
    """A JSON array of templates, validated."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TemplateError(
            f"templates look like a JSON array, but the JSON does not parse: {exc.msg}"
        ) from None
    except RecursionError:  # the C decoder stops at the interpreter's recursion limit, cleanly
        raise TemplateError("templates look like a JSON array, but it is nested too deeply") from None
    if not isinstance(parsed, list):
        raise TemplateError("templates JSON must be an array of strings")
    return validate_templates(parsed)


def load_templates(spec: str | Sequence[str]) -> tuple[str, ...]:
    """A template set for training and evaluation: a set name, a file, or a list of templates.

    A file holds a JSON array of strings, or one template per line (blank lines and lines starting
    with "#" are skipped). Only the command line and the trainer call this: the server's
    resolve_templates never reads files, so an API client cannot make it open a path.
    """
    if not isinstance(spec, str):
        return validate_templates(spec)
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        known = ", ".join(sorted(TEMPLATE_SETS))
        raise TemplateError(f"{spec!r} is neither a template set ({known}) nor a template file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read template file {path}: {exc}") from None
    try:
        if text.lstrip().startswith("["):
            return _json_templates(text)
        lines = [ln.strip() for ln in text.splitlines()]
        return validate_templates([ln for ln in lines if ln and not ln.startswith("#")])
    except TemplateError as exc:
        raise TemplateError(f"template file {path}: {exc.message}") from None


def fill(templates: Sequence[str], label: str) -> list[str]:
    """Every template with the label put in place of "{}".

    str.replace, not str.format: a label may contain braces ("{x}"), which format would choke on.
    """
    return [template.replace(PLACEHOLDER, label) for template in templates]
