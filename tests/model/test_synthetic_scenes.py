"""Tests for two-object scenes and the varied style (model/data/synthetic_scenes.py), and for the
TrainConfig fields that bring them to training."""

from __future__ import annotations

import colorsys
import re
from collections import Counter
from typing import Any

import numpy as np
import pytest

import model.data.synthetic_scenes as scenes
from model.checkpoint_inputs import ModelInputs
from model.checkpoints import TrainError
from model.data import DataError, SyntheticPairs
from model.data.synthetic import (
    COLOUR_RGB,
    COLOURS,
    HELD_OUT,
    SHAPES,
    Sample,
    SyntheticShapes,
    all_classes,
    class_name,
)
from model.distributed import Dist
from model.train_config import TrainConfig
from model.train_data import make_loader

PALETTE_HUE = {c: colorsys.rgb_to_hsv(*(np.array(rgb) / 255))[0] * 360 for c, rgb in COLOUR_RGB.items()}


def _hue_colour(rgb: np.ndarray) -> str:
    """The palette colour whose hue is nearest (on the circle) to that of `rgb`."""
    hue = colorsys.rgb_to_hsv(*(rgb / 255))[0] * 360
    return min(COLOURS, key=lambda c: min(abs(hue - PALETTE_HUE[c]), 360 - abs(hue - PALETTE_HUE[c])))


def _saturated(sample: Sample, floor: int = 50) -> np.ndarray:
    """[N, 3] the most saturated pixels: the object's interior (backgrounds are near-gray)."""
    pixels = np.asarray(sample.image).astype(int)
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)  # [S, S]
    return pixels[(saturation > floor) & (saturation >= 0.85 * saturation.max())]


def _named(caption: str) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a caption names, in order ("a red circle and a small blue star")."""
    pattern = rf"\b({'|'.join(COLOURS)}) (?:outlined )?({'|'.join(SHAPES)})\b"
    return [(m.group(1), m.group(2)) for m in re.finditer(pattern, caption)]


# -- scenes -------------------------------------------------------------------------------------


def test_scenes_hold_two_distinct_classes_both_named_in_order() -> None:
    ds = SyntheticShapes(64, seed=0, split="scenes", length=216)
    first_named = 0
    for i in range(len(ds)):
        s = ds[i]
        assert len(s.objects) == 2 and s.objects[0] != s.objects[1], s
        assert (s.colour, s.shape) == s.objects[0]
        assert _named(s.caption) == list(s.objects), s.caption  # both, in the caption's order
        assert all_classes()[i % 36] in s.objects  # any prefix is class-balanced
        first_named += all_classes()[i % 36] == s.objects[0]
        assert not re.search(r"\ba [aeiou]", s.caption), s.caption
    assert 0.3 < first_named / len(ds) < 0.7  # both orders
    assert {o for i in range(len(ds)) for o in ds[i].objects} & HELD_OUT  # eval may hold zero-shot pairs


@pytest.mark.parametrize("style", ["classic", "varied"])
def test_scene_images_show_both_colours_apart(style: str) -> None:
    ds = SyntheticShapes(64, seed=1, split="scenes", style=style)
    for i in range(60):
        s = ds[i]
        pixels = np.asarray(s.image).astype(int)
        saturated = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 60  # [S, S]
        nearest = [_hue_colour(p) for p in pixels[saturated]]
        counts = Counter(nearest)
        for colour, _ in s.objects:
            assert counts[colour] >= 6, (s.caption, counts)
        if s.objects[0][0] != s.objects[1][0]:  # two colours: their pixel clouds do not mix
            ys, xs = np.nonzero(saturated)
            a = np.array([c == s.objects[0][0] for c in nearest])
            b = np.array([c == s.objects[1][0] for c in nearest])
            ca = np.array([xs[a].mean(), ys[a].mean()])
            cb = np.array([xs[b].mean(), ys[b].mean()])
            assert np.hypot(*(ca - cb)) > 8, s.caption


def test_relations_in_captions_are_true() -> None:
    ds = SyntheticShapes(64, seed=2, split="scenes")
    checked = 0
    for i in range(400):
        s = ds[i]
        m = re.search(r"(to the left of|to the right of|above|below)", s.caption)
        if not m or s.objects[0][0] == s.objects[1][0]:
            continue
        pixels = np.asarray(s.image).astype(int)
        saturated = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 60
        ys, xs = np.nonzero(saturated)
        names = np.array([_hue_colour(p) for p in pixels[saturated]])
        (ax, ay), (bx, by) = ((xs[names == c].mean(), ys[names == c].mean()) for c, _ in s.objects)
        expected = {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by, "below": ay > by}
        assert expected[m.group(1)], s.caption
        checked += 1
    assert checked > 10


def test_determinism_of_scenes_and_varied() -> None:
    options: list[dict[str, Any]] = [
        {"split": "scenes"},
        {"style": "varied"},
        {"style": "varied", "scene_fraction": 0.5},
    ]
    for kwargs in options:
        a, b = SyntheticShapes(64, 5, **kwargs), SyntheticShapes(64, 5, **kwargs)
        forward = [a[i] for i in range(12)]
        backward = [b[i] for i in reversed(range(12))][::-1]
        for x, y in zip(forward, backward, strict=True):
            assert x.image.tobytes() == y.image.tobytes() and x.caption == y.caption, kwargs
            assert x.objects == y.objects


def test_scene_fraction_adds_scenes_and_leaves_the_other_indices_alone() -> None:
    plain = SyntheticShapes(64, seed=3)
    mixed = SyntheticShapes(64, seed=3, scene_fraction=0.3)
    n_scenes = 0
    for i in range(300):
        m = mixed[i]
        if len(m.objects) == 2:
            n_scenes += 1
        else:
            p = plain[i]
            assert (m.image.tobytes(), m.caption) == (p.image.tobytes(), p.caption)
    assert 60 < n_scenes < 120  # about 90


def test_varied_fraction_mixes_styles_and_leaves_the_classic_indices_alone() -> None:
    classic = SyntheticShapes(64, seed=3)
    mixed = SyntheticShapes(64, seed=3, style="varied", varied_fraction=0.3)
    all_varied = SyntheticShapes(64, seed=3, style="varied")
    same = [mixed[i].image.tobytes() == classic[i].image.tobytes() for i in range(200)]
    assert 0.55 < np.mean(same) < 0.85  # about 70% classic
    for i in range(200):
        if not same[i]:  # the others are the all-varied images themselves
            assert mixed[i].image.tobytes() == all_varied[i].image.tobytes()
    with pytest.raises(ValueError, match="varied_fraction is for style 'varied'"):
        SyntheticShapes(varied_fraction=0.5)
    with pytest.raises(ValueError, match="varied_fraction must be in"):
        SyntheticShapes(style="varied", varied_fraction=1.5)


def test_train_with_scenes_and_varied_never_shows_a_held_out_pair() -> None:
    """Neither as an object nor in a caption: the zero-shot pairs stay unseen with the new options."""
    phrases = [class_name(c, s) for c, s in HELD_OUT]
    ds = SyntheticShapes(16, seed=11, style="varied", scene_fraction=0.5)  # small: quick
    objects: Counter[tuple[str, str]] = Counter()
    for i in range(2500):
        s = ds[i]
        objects.update(s.objects)
        assert not set(s.objects) & HELD_OUT, s
        text = s.caption.lower()
        assert not [p for p in phrases if p in text], s.caption
        if len(s.objects) == 2:
            assert _named(s.caption) == list(s.objects), s.caption
        else:  # single objects have templates like "the square is red" too
            words = set(re.findall(r"[a-z]+", s.caption))
            assert words & set(COLOURS) == {s.colour} and words & set(SHAPES) == {s.shape}, s.caption
    assert len(objects) == 30  # every seen pair


# -- varied style -------------------------------------------------------------------------------


def test_varied_object_has_the_named_hue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without outline, blur, noise and JPEG the interior is the jittered colour itself."""
    for name in ("_P_OUTLINE", "_P_BLUR", "_P_NOISE", "_P_JPEG"):
        monkeypatch.setattr(scenes, name, 0.0)
    ds = SyntheticShapes(64, seed=4, split="all", style="varied")
    for i in range(216):
        s = ds[i]
        pixels = _saturated(s)
        assert len(pixels) >= 3, s.caption
        assert _hue_colour(pixels.mean(axis=0)) == s.colour, (s.caption, pixels.mean(axis=0))


def test_varied_with_every_effect_still_shows_the_named_colour() -> None:
    ds = SyntheticShapes(64, seed=6, split="all", style="varied")
    wrong = [ds[i].caption for i in range(216) if _hue_colour(_saturated(ds[i]).mean(axis=0)) != ds[i].colour]
    assert len(wrong) <= 2, wrong


def test_varied_is_wider_than_classic() -> None:
    classic = SyntheticShapes(64, seed=8, style="classic")
    varied = SyntheticShapes(64, seed=8, style="varied")

    def facts(ds: SyntheticShapes) -> tuple[set[str], float, float]:
        tones, areas, levels = set(), [], []
        for i in range(200):
            s = ds[i]
            pixels = np.asarray(s.image).astype(int)
            saturated = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 50
            tones.add(s.background)
            areas.append(saturated.mean())
            levels.append(np.median(pixels[~saturated]))
        return tones, float(np.ptp(np.percentile(areas, [2, 98]))), float(np.ptp(levels))

    tones_c, area_c, level_c = facts(classic)
    tones_v, area_v, level_v = facts(varied)
    assert {"black", "white"} <= tones_v and not {"black", "white"} & tones_c
    assert area_v > area_c and level_v > level_c + 40


@pytest.mark.parametrize("size", [32, 96, 224])
def test_varied_images_are_rgb_of_requested_size(size: int) -> None:
    for split in ("train", "scenes"):
        ds = SyntheticShapes(size, seed=9, split=split, style="varied")
        for i in range(8):
            assert ds[i].image.mode == "RGB" and ds[i].image.size == (size, size)


# -- into training ------------------------------------------------------------------------------


def test_train_config_fields_are_checked() -> None:
    cfg = TrainConfig()
    assert (cfg.synthetic_style, cfg.varied_fraction, cfg.scene_fraction) == ("classic", 1.0, 0.0)
    ok = TrainConfig.from_dict({"synthetic_style": "varied", "scene_fraction": 0.2})
    assert (ok.synthetic_style, ok.scene_fraction) == ("varied", 0.2)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"synthetic_style": "fancy"}, "synthetic_style must be one of 'classic', 'varied'"),
        ({"scene_fraction": 1.5}, "scene_fraction must be a number in"),
        ({"scene_fraction": -0.1}, "scene_fraction must be a number in"),
        ({"scene_fraction": "0.2"}, "scene_fraction must be a number in"),
        ({"scene_fraction": True}, "scene_fraction must be a number in"),
        ({"synthetic_style": "varied", "varied_fraction": 2}, "varied_fraction must be a number in"),
        ({"varied_fraction": 0.5}, "varied_fraction is for synthetic_style 'varied'"),
    ]
    for bad, words in cases:
        with pytest.raises(TrainError, match=re.escape(words)):
            TrainConfig.from_dict(bad)
    others: list[dict[str, Any]] = [{"synthetic_style": "varied"}, {"scene_fraction": 0.1}]
    for other in others:
        with pytest.raises(TrainError, match="options of synthetic data"):
            TrainConfig.from_dict({"data": "csv", "data_path": "x.csv", **other})


def test_options_reach_the_training_source() -> None:
    cfg = TrainConfig.from_dict(
        {"synthetic_style": "varied", "varied_fraction": 0.5, "scene_fraction": 0.25}
        | {"batch_size": 8, "steps": 2, "num_workers": 0}
    )
    loader = make_loader(cfg, Dist(), ModelInputs.clip(32), 0)
    source = loader.dataset
    assert isinstance(source, SyntheticPairs)
    shapes = source.shapes
    assert (shapes.style, shapes.varied_fraction, shapes.scene_fraction) == ("varied", 0.5, 0.25)
    pixels, _, skipped, class_ids = next(iter(loader))
    assert tuple(pixels.shape) == (8, 3, 32, 32) and skipped == 0 and class_ids.shape == (8,)
    with pytest.raises(DataError, match="style"):
        SyntheticPairs(32, 0, style="fancy")
