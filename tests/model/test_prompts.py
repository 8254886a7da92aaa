"""Tests for model.prompts: the published template sets and the helpers around them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.bundle.prompts import (
    TEMPLATE_SETS,
    TemplateError,
    fill,
    get_templates,
    resolve_templates,
    validate_templates,
)


@pytest.mark.parametrize(
    ("name", "count"),
    [("default", 1), ("imagenet80", 80), ("imagenet7", 7), ("none", 1)],
)
def test_set_sizes(name: str, count: int) -> None:
    assert len(get_templates(name)) == count


@pytest.mark.parametrize("name", sorted(TEMPLATE_SETS))
def test_every_set_is_valid(name: str) -> None:
    templates = TEMPLATE_SETS[name]
    assert isinstance(templates, tuple)
    assert len(set(templates)) == len(templates)
    assert all(t.count("{}") == 1 for t in templates)
    assert validate_templates(templates) == templates


def test_imagenet80_published_order() -> None:
    templates = get_templates("imagenet80")
    assert templates[:3] == ("a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.")
    assert templates[-1] == "a tattoo of the {}."
    assert "a photo of a {}." in templates


def test_imagenet7_is_subset_of_imagenet80() -> None:
    assert set(get_templates("imagenet7")) <= set(get_templates("imagenet80"))
    assert get_templates("imagenet7")[0] == "itap of a {}."


def test_default_and_none() -> None:
    assert get_templates("default") == ("a photo of a {}.",)
    assert fill(get_templates("none"), "red circle") == ["red circle"]


def test_synthetic_set_mentions_the_label_once() -> None:
    prompts = fill(get_templates("synthetic"), "red circle")
    assert len(prompts) >= 3
    assert all(p.count("red circle") == 1 for p in prompts)


def test_template_sets_are_read_only() -> None:
    with pytest.raises(TypeError):
        TEMPLATE_SETS["mine"] = ("{}",)  # type: ignore[index]


def test_fill_keeps_braces_in_labels() -> None:
    assert fill(["a photo of a {}.", "the {}"], "{x}") == ["a photo of a {x}.", "the {x}"]
    assert fill(["a {}."], "{}") == ["a {}."]
    assert fill(["a {}."], "{0} and {name}") == ["a {0} and {name}."]


@given(st.text(max_size=40))
def test_fill_inserts_any_label_verbatim(label: str) -> None:
    (prompt,) = fill(["x {} y"], label)
    assert prompt == f"x {label} y"


def test_unknown_set_names_the_set_and_lists_known_ones() -> None:
    with pytest.raises(TemplateError) as info:
        get_templates("imagenet81")
    err = info.value
    assert err.code == "invalid_templates"
    assert "imagenet81" in err.message
    for known in TEMPLATE_SETS:
        assert known in err.message
    assert isinstance(err, ValueError)
    assert not isinstance(err, KeyError)


@pytest.mark.parametrize(
    ("templates", "fragment"),
    [
        ([], "empty"),
        (["a photo of a cat."], "a photo of a cat."),
        (["a {} and a {}."], "a {} and a {}."),
        (["a {}.", "a {}."], "duplicate"),
        (["ok {}", "missing"], "missing"),
        (["a {}.", 3], "not a string"),
    ],
)
def test_validate_rejects_bad_templates(templates: list[str], fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        validate_templates(templates)
    assert fragment in info.value.message
    assert info.value.code == "invalid_templates"


def test_validate_rejects_a_bare_string() -> None:
    with pytest.raises(TemplateError):
        validate_templates("a {}.")


def test_validate_returns_tuple() -> None:
    assert validate_templates(["a {}.", "the {}."]) == ("a {}.", "the {}.")


def test_resolve_none_name_list_and_json() -> None:
    assert resolve_templates(None) == get_templates("default")
    assert resolve_templates("imagenet7") == get_templates("imagenet7")
    assert resolve_templates(["a {}.", "the {}."]) == ("a {}.", "the {}.")
    assert resolve_templates(("a {}.",)) == ("a {}.",)
    assert resolve_templates('["a {}.", "the {}."]') == ("a {}.", "the {}.")
    assert resolve_templates('  ["x {}"] ') == ("x {}",)


@pytest.mark.parametrize(
    "spec",
    ["nope", "", '["a {}.", ', '["no placeholder"]', "[]", '["a {}.", 1]', '[{"a": 1}]'],
)
def test_resolve_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(TemplateError):
        resolve_templates(spec)


def test_resolve_rejects_bad_list() -> None:
    with pytest.raises(TemplateError, match="exactly one"):
        resolve_templates(["{} {}"])
