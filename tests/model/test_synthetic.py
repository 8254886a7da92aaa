"""Tests for model.data.synthetic: determinism, the held-out split, and that images match captions."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from model.data.synthetic import (
    COLOUR_RGB,
    COLOURS,
    HELD_OUT,
    SHAPES,
    Sample,
    SyntheticShapes,
    all_classes,
    class_name,
    held_out_classes,
    seen_classes,
)

N_TRAIN_SCAN = 5_000


@pytest.fixture(scope="module")
def train_samples() -> list[Sample]:
    ds = SyntheticShapes(image_size=64, seed=0, split="train")
    return [ds[i] for i in range(N_TRAIN_SCAN)]


def _saturation(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(axis=-1).astype(int) - pixels.min(axis=-1).astype(int)


def _object_pixels(sample: Sample) -> np.ndarray:
    """[N, 3] interior pixels of the object: the most saturated ones (backgrounds are near-gray,
    anti-aliased edges are blends, the flat interior is the jittered object colour itself)."""
    pixels = np.asarray(sample.image)
    saturation = _saturation(pixels)  # [S, S]
    return pixels[(saturation > 50) & (saturation >= 0.9 * saturation.max())]


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda c: float(np.sum((rgb - np.array(COLOUR_RGB[c])) ** 2)))


# -- classes ------------------------------------------------------------------------------------


def test_class_lists() -> None:
    assert len(COLOURS) >= 6 and len(SHAPES) >= 6
    assert len(all_classes()) == len(COLOURS) * len(SHAPES) == len(set(all_classes()))
    assert all_classes() == all_classes()  # fixed order
    assert set(seen_classes()) | set(held_out_classes()) == set(all_classes())
    assert not set(seen_classes()) & set(held_out_classes())
    assert set(held_out_classes()) == HELD_OUT
    assert class_name("red", "circle") == "red circle"
    with pytest.raises(ValueError):
        class_name("pink", "circle")


def test_held_out_is_a_latin_transversal() -> None:
    """Each colour and each shape is held out once, so each is still seen with other partners."""
    assert len(HELD_OUT) == len(COLOURS)
    assert sorted(c for c, _ in HELD_OUT) == sorted(COLOURS)
    assert sorted(s for _, s in HELD_OUT) == sorted(SHAPES)
    seen = seen_classes()
    for colour in COLOURS:
        assert sum(c == colour for c, _ in seen) == len(SHAPES) - 1
    for shape in SHAPES:
        assert sum(s == shape for _, s in seen) == len(COLOURS) - 1


def test_object_colours_are_far_from_gray_and_from_each_other() -> None:
    for colour, rgb in COLOUR_RGB.items():
        assert max(rgb) - min(rgb) >= 100, colour
    for a in COLOURS:
        for b in COLOURS:
            if a < b:
                distance = np.linalg.norm(np.subtract(COLOUR_RGB[a], COLOUR_RGB[b]))
                assert distance > 80, (a, b)


# -- determinism ------------------------------------------------------------------------------


def test_same_index_same_bytes_across_instances_and_call_order() -> None:
    a = SyntheticShapes(seed=7, split="train")
    b = SyntheticShapes(seed=7, split="train")
    forward = [a[i] for i in range(20)]
    backward = [b[i] for i in reversed(range(20))][::-1]
    for x, y in zip(forward, backward, strict=True):
        assert x.image.tobytes() == y.image.tobytes()
        assert (x.caption, x.colour, x.shape) == (y.caption, y.colour, y.shape)
    assert a[5].image.tobytes() == a[5].image.tobytes()


# sha256 over samples 0, 1, 2, 3, 17, 999 and 12345 (image bytes, caption, facts), computed with the
# generator as it was before scenes and styles were added: the defaults must still draw exactly these.
_CLASSIC_SHA256 = {
    ("train", 0, 64): "1bd7375be20a770eeb483a7abf1c97880dc7f23977e55ed636571695cc1d9e7e",
    ("train", 7, 96): "87519b8797c9c9b9f48c33b77b569288ac988528ac7c84f5bd56f2d5839490e6",
    ("seen", 0, 64): "56900f4d494cfde1c63a9431a31b0b4ce3ae2e88735f6cba7d064035a75701d7",
    ("seen", 7, 96): "48d4583da756b29d741bf347aed0d6ce8bc477baff3ea1fe052f178eac1c09a1",
    ("heldout", 0, 64): "0fb8d37ba3e67917c1243348cf9fb95fb95279e4e0c6dcf046d6404051ef4b67",
    ("heldout", 7, 96): "3931ca979466d831bb2644b021e22248a4cf8a3a479690a2efb63c9f260ccba9",
    ("all", 0, 64): "eb3d35fda74d90250e6425f4914d59b84adba9691715733b022a13f33d0002e9",
    ("all", 7, 96): "729f27731258d5315645213c0000e24b745fd7630c6b6c3ac03bc5ca4db5e65f",
}


@pytest.mark.parametrize("key", sorted(_CLASSIC_SHA256))
def test_classic_output_is_byte_identical_to_before(key: tuple[str, int, int]) -> None:
    split, seed, size = key
    explicit = {"style": "classic", "scene_fraction": 0.0} if split == "train" else {"style": "classic"}
    for ds in (SyntheticShapes(size, seed, split), SyntheticShapes(size, seed, split, **explicit)):
        h = hashlib.sha256()
        for i in (0, 1, 2, 3, 17, 999, 12345):
            s = ds[i]
            h.update(s.image.tobytes())
            h.update(s.caption.encode())
            h.update(f"{s.colour}|{s.shape}|{s.size}|{s.position}|{s.background}".encode())
            assert s.objects == ((s.colour, s.shape),)
        assert h.hexdigest() == _CLASSIC_SHA256[key]


def test_different_seeds_and_splits_differ() -> None:
    base = SyntheticShapes(seed=0, split="train")
    other_seed = SyntheticShapes(seed=1, split="train")
    other_split = SyntheticShapes(seed=0, split="seen")
    for ds in (other_seed, other_split):
        same = sum(base[i].image.tobytes() == ds[i].image.tobytes() for i in range(20))
        assert same == 0


def test_sample_is_frozen() -> None:
    sample = SyntheticShapes()[0]
    with pytest.raises(FrozenInstanceError):
        sample.caption = "x"  # type: ignore[misc]
    assert sample.label == f"{sample.colour} {sample.shape}"


# -- splits -----------------------------------------------------------------------------------


def test_train_never_yields_a_held_out_pair(train_samples: list[Sample]) -> None:
    assert not [s for s in train_samples if (s.colour, s.shape) in HELD_OUT]


def test_train_captions_never_name_a_held_out_class(train_samples: list[Sample]) -> None:
    phrases = [class_name(c, s) for c, s in HELD_OUT]
    for sample in train_samples:
        text = sample.caption.lower()
        assert not [p for p in phrases if p in text], sample.caption


def test_every_colour_shape_and_seen_pair_appears_in_training(train_samples: list[Sample]) -> None:
    pairs = Counter((s.colour, s.shape) for s in train_samples)
    assert set(pairs) == set(seen_classes())
    assert min(pairs.values()) > N_TRAIN_SCAN / len(seen_classes()) / 2  # roughly uniform
    assert {s.colour for s in train_samples} == set(COLOURS)
    assert {s.shape for s in train_samples} == set(SHAPES)


def test_heldout_split_only_held_out_pairs() -> None:
    ds = SyntheticShapes(seed=0, split="heldout", length=300)
    pairs = Counter((ds[i].colour, ds[i].shape) for i in range(len(ds)))
    assert set(pairs) == HELD_OUT
    assert set(pairs.values()) == {300 // len(HELD_OUT)}  # class-balanced
    assert ds.class_names == [class_name(c, s) for c, s in held_out_classes()]


def test_seen_and_all_splits() -> None:
    seen = SyntheticShapes(split="seen", length=120)
    assert {(seen[i].colour, seen[i].shape) for i in range(120)} == set(seen_classes())
    everything = SyntheticShapes(split="all", length=72)
    assert {(everything[i].colour, everything[i].shape) for i in range(72)} == set(all_classes())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes(split="test")
    with pytest.raises(ValueError, match="style"):
        SyntheticShapes(style="fancy")
    for fraction in (-0.1, 1.5):
        with pytest.raises(ValueError, match="scene_fraction"):
            SyntheticShapes(scene_fraction=fraction)
    with pytest.raises(ValueError, match="train split"):
        SyntheticShapes(split="seen", scene_fraction=0.2)
    with pytest.raises(ValueError):
        SyntheticShapes(seed=-1)
    ds = SyntheticShapes(length=3)
    with pytest.raises(IndexError):
        ds[3]
    assert ds[-1].image.tobytes() == ds[2].image.tobytes()
    assert [s.caption for s in ds] == [ds[i].caption for i in range(3)]


# -- captions ---------------------------------------------------------------------------------


def test_captions_name_their_colour_and_shape_and_no_other(train_samples: list[Sample]) -> None:
    for sample in train_samples[:2000]:
        words = set(re.findall(r"[a-z]+", sample.caption))
        assert sample.colour in words and sample.shape in words, sample.caption
        assert words & set(COLOURS) == {sample.colour}, sample.caption
        assert words & set(SHAPES) == {sample.shape}, sample.caption
        assert not re.search(r"\ba [aeiou]", sample.caption), sample.caption


def test_captions_are_varied(train_samples: list[Sample]) -> None:
    captions = [s.caption for s in train_samples]
    assert len(set(captions)) > 500
    assert any("background" in c for c in captions)
    assert any("left" in c for c in captions)
    assert any(w in c for c in captions for w in ("small", "little"))


# -- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 96, 224])
def test_images_are_rgb_of_requested_size(size: int) -> None:
    ds = SyntheticShapes(image_size=size, split="all")
    for i in range(12):
        image = ds[i].image
        assert image.mode == "RGB"
        assert image.size == (size, size)


def test_object_colour_is_the_named_colour(train_samples: list[Sample]) -> None:
    for sample in train_samples[:600]:
        pixels = _object_pixels(sample)
        assert len(pixels) > 10, sample.caption
        mean = pixels.mean(axis=0)
        assert _nearest_colour(mean) == sample.colour, (sample.caption, mean)
        assert np.linalg.norm(mean - np.array(COLOUR_RGB[sample.colour])) < 40, (sample.caption, mean)


def test_backgrounds_are_near_gray_and_objects_stay_inside(train_samples: list[Sample]) -> None:
    for sample in train_samples[:600]:
        pixels = np.asarray(sample.image)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])  # [4S, 3]
        assert _saturation(border).max() <= 20, sample.caption


def test_sizes_and_positions_match_the_image(train_samples: list[Sample]) -> None:
    area: dict[str, list[int]] = {"small": [], "medium": [], "large": []}
    for sample in train_samples[:900]:
        saturated = _saturation(np.asarray(sample.image)) > 50  # [S, S]
        area[sample.size].append(int(saturated.sum()))
        ys, xs = np.nonzero(saturated)
        cx, cy = xs.mean() / 64, ys.mean() / 64
        if "left" in sample.position:
            assert cx < 0.45, sample
        if "right" in sample.position:
            assert cx > 0.55, sample
        if "top" in sample.position:
            assert cy < 0.45, sample
        if "bottom" in sample.position:
            assert cy > 0.55, sample
    means = {k: float(np.mean(v)) for k, v in area.items()}
    assert means["small"] < means["medium"] < means["large"], means
    assert max(area["small"]) < min(area["large"])


def test_generation_speed_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    ds = SyntheticShapes(image_size=64, seed=3)
    n = 2_000
    start = time.perf_counter()
    for i in range(n):
        ds[i]
    rate = n / (time.perf_counter() - start)
    with capsys.disabled():
        print(f"\nsynthetic shapes: {rate:,.0f} images/s at 64 px on one core")
