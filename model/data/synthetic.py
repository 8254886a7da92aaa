"""Synthetic captioned shapes: a small, deterministic world in which zero-shot is a real test.

Every image holds one flat-coloured shape on a muted background; its caption always names the
colour and the shape and sometimes the size, position and background. Two-object scenes ("scenes"
split, ``scene_fraction`` of "train") and ``style="varied"`` are drawn by model/data/synthetic_scenes.py;
the defaults draw exactly the images and captions they always have. Six (colour, shape) pairs,
``HELD_OUT``, never occur in the "train" split, neither in images nor in captions, while each colour
and each shape still occurs in training with five other partners. A model that names a "green
circle" it has never seen has composed "green" and "circle": that is zero-shot.

Torch-free (numpy + Pillow); the trainer wraps ``SyntheticShapes`` in its own Dataset. Sample
``i`` of a split depends only on (seed, split, i), never on call order, so workers, restarts and
the evaluation sets reproduce exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "COLOUR_RGB",
    "HELD_OUT",
    "SHAPES",
    "SPLITS",
    "STYLES",
    "Sample",
    "SyntheticShapes",
    "all_classes",
    "class_name",
    "held_out_classes",
    "seen_classes",
]

# Saturated object colours. Backgrounds are near-gray (max - min channel <= 14), objects are far
# from gray (max - min >= 79 even after jitter), so no background can pass for an object colour.
COLOUR_RGB: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (215, 35, 35),
        "green": (40, 165, 50),
        "blue": (35, 70, 215),
        "yellow": (235, 215, 30),
        "purple": (135, 45, 175),
        "orange": (245, 130, 15),
    }
)
COLOUR_JITTER = 18  # per channel, uniform in [-J, J]: still clearly the named colour

COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")

# A Latin-square transversal: colour i is held out with shape (5i + 1) mod 6, so every colour and
# every shape is held out exactly once and seen with its five other partners in training.
# -> red square, green circle, blue heart, yellow cross, purple star, orange triangle.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    (COLOURS[i], SHAPES[(5 * i + 1) % len(SHAPES)]) for i in range(len(COLOURS))
)

# name -> stream id; "scenes" (two objects, any of the 36 classes) is for multi-label evaluation
SPLITS: dict[str, int] = {"train": 0, "seen": 1, "heldout": 2, "all": 3, "scenes": 4}
STYLES: tuple[str, ...] = ("classic", "varied")


def class_name(colour: str, shape: str) -> str:
    """The label text of a pair: "red circle"."""
    if colour not in COLOUR_RGB or shape not in SHAPES:
        raise ValueError(f"unknown class ({colour!r}, {shape!r})")
    return f"{colour} {shape}"


def all_classes() -> list[tuple[str, str]]:
    """Every (colour, shape) pair, colour-major, in a fixed order."""
    return [(c, s) for c in COLOURS for s in SHAPES]


def seen_classes() -> list[tuple[str, str]]:
    """The pairs that training sees, in the order of all_classes()."""
    return [pair for pair in all_classes() if pair not in HELD_OUT]


def held_out_classes() -> list[tuple[str, str]]:
    """The zero-shot pairs, never in training, in the order of all_classes()."""
    return [pair for pair in all_classes() if pair in HELD_OUT]


@dataclass(frozen=True)
class Sample:
    image: Image.Image  # RGB, image_size x image_size
    caption: str
    colour: str
    shape: str
    size: str = ""  # small | medium | large
    position: str = ""  # e.g. "left", "top right", "center"
    background: str = ""  # e.g. "light gray"
    # every (colour, shape) in the image, in caption order (the fields above: the first); default: one
    objects: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.objects:
            object.__setattr__(self, "objects", ((self.colour, self.shape),))

    @property
    def label(self) -> str:
        return class_name(self.colour, self.shape)


# ---------------------------------------------------------------------------------------------
# Geometry: unit polygons with max vertex radius 1, centred on the origin, y pointing down.


def _regular(n: int, start_deg: float, radii: tuple[float, ...] = (1.0,)) -> np.ndarray:
    angles = np.deg2rad(start_deg + np.arange(n) * 360.0 / n)
    r = np.resize(np.array(radii), n)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)  # [n, 2]


def _cross(arm: float = 0.32) -> np.ndarray:
    a = arm
    pts = [
        (-a, -1),
        (a, -1),
        (a, -a),
        (1, -a),
        (1, a),
        (a, a),
        (a, 1),
        (-a, 1),
        (-a, a),
        (-1, a),
        (-1, -a),
        (-a, -a),
    ]
    out = np.array(pts, dtype=float)
    return out / np.hypot(out[:, 0], out[:, 1]).max()


def _heart(n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # y down
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(axis=0) + pts.min(axis=0)) / 2  # centre the bounding box
    return pts / np.hypot(pts[:, 0], pts[:, 1]).max()


_POLYGONS: dict[str, np.ndarray] = {
    "square": _regular(4, 45.0),
    "triangle": _regular(3, -90.0),
    "star": _regular(10, -90.0, (1.0, 0.45)),
    "cross": _cross(),
    "heart": _heart(),
}
# Scale per shape so areas are roughly comparable at one nominal size, and the largest rotation
# that keeps the shape what its name says (a square at 45 degrees is a diamond, a cross an "x").
_SHAPE_SCALE = {"circle": 0.85, "square": 1.0, "triangle": 1.12, "star": 1.12, "cross": 1.0, "heart": 1.0}
_MAX_ROTATION_DEG = {
    "circle": 0.0,
    "square": 15.0,
    "triangle": 15.0,
    "star": 36.0,
    "cross": 12.0,
    "heart": 15.0,
}

# Object diameter (before the shape scale) as a fraction of the image side.
_SIZES: dict[str, tuple[float, float]] = {
    "small": (0.24, 0.32),
    "medium": (0.40, 0.50),
    "large": (0.60, 0.72),
}
_SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium", "medium-sized"), "large": ("large", "big")}
# Nominal centre (x, y) as fractions of the side; jittered, then clamped to keep the object inside.
_POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
}
_POSITION_NAMES = tuple(_POSITIONS)
_POSITION_JITTER = 0.04
_BACKGROUND_KINDS = ("plain", "gradient", "noise")


def _position_phrase(position: str, rng: np.random.Generator) -> str:
    if position == "center":
        return ("in the center", "in the middle")[int(rng.integers(2))]
    if position in ("left", "right"):
        return f"on the {position}"
    if position in ("top", "bottom"):
        return f"at the {position}"
    return (f"in the {position} corner", f"at the {position}")[int(rng.integers(2))]


# Caption templates. {c} colour, {s} shape, {z} size word, {p} position phrase, {b} background.
# Colour and shape are always present; articles are fixed afterwards ("a orange" -> "an orange").
_CAPTIONS: tuple[str, ...] = (
    "{c} {s}",
    "a {c} {s}",
    "a {c} {s}.",
    "there is a {c} {s}",
    "a photo of a {c} {s}",
    "a picture of a {c} {s}",
    "an image of a {c} {s}",
    "a {c} {s} shape",
    "a {z} {c} {s}",
    "a photo of a {z} {c} {s}",
    "a {c} {s} {p}",
    "{c} {s} {p}",
    "a {z} {c} {s} {p}",
    "there is a {z} {c} {s} {p}",
    "a {c} {s} on a {b} background",
    "a picture of a {c} {s} on a {b} background",
    "a {z} {c} {s} {p} on a {b} background",
    "the {s} is {c}",
    "a {s} coloured {c}",
    "a {z} {s} in {c} {p}",
)
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiou])")


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1], [size, size] each (cached: shared by all samples)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(axis, axis)


def _tone_name(level: float) -> str:
    if level < 105:
        return "dark gray"
    return "gray" if level < 160 else "light gray"


class SyntheticShapes:
    """Indexable source of captioned shape images.

    Splits: "train" (seen pairs, random pair per index), "seen" (seen pairs, a different random
    stream from train), "heldout" (held-out pairs only), "all" (every pair), "scenes" (two objects of
    two of the 36 classes). The evaluation splits cycle through their classes (index % n_classes;
    "scenes": one of its two), so any prefix of them is class-balanced.

    style "varied" with varied_fraction: that share of indices drawn varied, the rest classic;
    scene_fraction (train only): that share of train indices are scenes of seen pairs. Each is
    decided per index from a stream of its own, so the other indices stay as they were.
    """

    def __init__(
        self,
        image_size: int = 64,
        seed: int = 0,
        split: str = "train",
        length: int = 100_000,
        style: str = "classic",
        scene_fraction: float = 0.0,
        varied_fraction: float = 1.0,
    ) -> None:
        from model.data.synthetic_scenes import check_options

        check_options(split, style, scene_fraction, varied_fraction)
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if seed < 0 or length < 0:
            raise ValueError(f"seed and length must be >= 0, got seed={seed}, length={length}")
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.length = length
        self.style = style
        self.scene_fraction = float(scene_fraction)
        self.varied_fraction = float(varied_fraction)
        if split in ("train", "seen"):
            self.classes = seen_classes()
        elif split == "heldout":
            self.classes = held_out_classes()
        else:
            self.classes = all_classes()

    @property
    def class_names(self) -> list[str]:
        return [class_name(c, s) for c, s in self.classes]

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(self.length))

    def __getitem__(self, index: int) -> Sample:
        if not isinstance(index, int | np.integer):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index out of range for length {self.length}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], index]))
        from model.data import synthetic_scenes as more  # it builds on this module's geometry

        varied = more.varied_at(self, index)
        scene_rng = rng if self.split == "scenes" else more.scene_rng(self, index)
        if scene_rng is not None:
            return more.render_scene(self, scene_rng, index, varied)
        if self.split == "train":
            colour, shape = self.classes[int(rng.integers(len(self.classes)))]
        else:
            colour, shape = self.classes[index % len(self.classes)]
        if varied:
            return more.render_varied(self, rng, colour, shape)
        return self._render(rng, colour, shape)

    # -- drawing --------------------------------------------------------------------------------

    def _render(self, rng: np.random.Generator, colour: str, shape: str) -> Sample:
        size = self.image_size
        background, level = self._background(rng)
        image = Image.fromarray(background, "RGB")

        size_name = ("small", "medium", "large")[int(rng.integers(3))]
        position = "center" if size_name == "large" else _POSITION_NAMES[int(rng.integers(len(_POSITIONS)))]
        lo, hi = _SIZES[size_name]
        radius = rng.uniform(lo, hi) / 2 * _SHAPE_SCALE[shape]  # fraction of the side
        angle = math.radians(rng.uniform(-1.0, 1.0) * _MAX_ROTATION_DEG[shape])
        x0, y0 = _POSITIONS[position]
        centre = np.array([x0, y0]) + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, size=2)

        # Mask at 2x, box-downsampled: mild anti-aliasing for little cost.
        scale = 2 * size
        mask = Image.new("L", (scale, scale), 0)
        draw = ImageDraw.Draw(mask)
        margin = 1.5 / size  # one and a half output pixels
        if shape == "circle":
            half = np.array([radius, radius])
            c = np.clip(centre, half + margin, 1 - half - margin) * scale
            r = radius * scale
            draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=255)
        else:
            cos, sin = math.cos(angle), math.sin(angle)
            pts = _POLYGONS[shape] @ np.array([[cos, sin], [-sin, cos]]) * radius  # [n, 2], rotated
            low, high = pts.min(axis=0), pts.max(axis=0)
            c = np.clip(centre, -low + margin, 1 - high - margin)
            draw.polygon(((pts + c) * scale).ravel().tolist(), fill=255)
        mask = mask.reduce(2)

        base = np.array(COLOUR_RGB[colour])
        rgb = np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3), 0, 255)
        image.paste((int(rgb[0]), int(rgb[1]), int(rgb[2])), (0, 0, size, size), mask)

        tone = _tone_name(level)
        caption = self._caption(rng, colour, shape, size_name, position, tone)
        return Sample(image, caption, colour, shape, size_name, position, tone)

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """A muted near-gray background, [S, S, 3] uint8, and its mean gray level."""
        size = self.image_size
        kind = _BACKGROUND_KINDS[int(rng.integers(len(_BACKGROUND_KINDS)))]
        level = float(rng.uniform(60.0, 215.0))
        tint = rng.uniform(-7.0, 7.0, size=3).astype(np.float32)  # a faint warm/cool cast
        gray: np.ndarray  # [S, S] float
        if kind == "gradient":
            xs, ys = _grid(size)
            theta = rng.uniform(0.0, 2.0 * np.pi)
            ramp = (xs - 0.5) * math.cos(theta) + (ys - 0.5) * math.sin(theta)  # [S, S], in [-0.71, 0.71]
            gray = level + float(rng.uniform(25.0, 60.0)) * ramp
        elif kind == "noise":
            gray = level + rng.normal(0.0, float(rng.uniform(3.0, 9.0)), size=(size, size)).astype(np.float32)
        else:
            gray = np.full((size, size), level, dtype=np.float32)
        pixels = gray[:, :, None] + tint  # [S, S, 3]; luminance-only noise keeps it gray
        return np.clip(pixels, 0, 255).astype(np.uint8), level

    @staticmethod
    def _caption(
        rng: np.random.Generator, colour: str, shape: str, size_name: str, position: str, tone: str
    ) -> str:
        template = _CAPTIONS[int(rng.integers(len(_CAPTIONS)))]
        words = _SIZE_WORDS[size_name]
        caption = template.format(
            c=colour,
            s=shape,
            z=words[int(rng.integers(len(words)))],
            p=_position_phrase(position, rng),
            b=tone,
        )
        return _ARTICLE.sub(r"\1n ", caption)
