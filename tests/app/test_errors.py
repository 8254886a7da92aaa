"""The one table of HTTP statuses (app/api/errors.py STATUS): every error code the code can raise has
a status there, and the core's own status hints agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.api.errors import STATUS, ApiError
from app.runtime import errors as runtime_errors
from model.bundle import preprocess
from model.bundle.prompts import TemplateError

ROOT = Path(__file__).resolve().parents[2]
# codes as the source writes them: ApiError("code", ...), code="code", and class attributes code = "code"
LITERAL = re.compile(r'ApiError\(\s*f?"([a-z_{}]+)"|\bcode\s*=\s*"([a-z_]+)"')


def codes_in_source() -> set[str]:
    found = set()
    for path in [*(ROOT / "app").rglob("*.py"), *(ROOT / "model" / "bundle").rglob("*.py")]:
        for m in LITERAL.finditer(path.read_text()):
            code = m.group(1) or m.group(2)
            # f"invalid_{what}s" and friends: `what` is "label" or "text" (app/api/fields.py)
            found |= {code.replace("{what}", w) for w in ("label", "text")} if "{what}" in code else {code}
    return found


def test_every_code_raised_has_a_status() -> None:
    found = codes_in_source()
    assert len(found) > 30, sorted(found)  # the pattern still finds them
    assert not found - set(STATUS), sorted(found - set(STATUS))


def test_every_domain_error_class_has_a_status() -> None:
    classes = [v for v in vars(runtime_errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    classes += [preprocess.UnsupportedImageFormat, preprocess.ImageTooLarge, preprocess.InvalidImage]
    assert all(c.code in STATUS for c in [*classes, TemplateError]), [c.code for c in classes]


@pytest.mark.parametrize(
    "cls", [preprocess.UnsupportedImageFormat, preprocess.ImageTooLarge, preprocess.InvalidImage]
)
def test_the_cores_status_hints_agree_with_the_table(cls: type[preprocess.ImageError]) -> None:
    assert STATUS[cls.code] == cls.status


def test_an_unknown_code_is_refused_where_it_is_raised() -> None:
    with pytest.raises(ValueError, match="no HTTP status"):
        ApiError("no_such_code", "x")
