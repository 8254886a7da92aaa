"""A second renderer of the 36 colour-shape classes, written apart from the training generator
(model/data/synthetic.py), so that the robustness evaluation (model/robustness.py) measures what a
model learned about "a red star" and not the quirks of one drawing routine.

Only the class names come from the training generator; geometry, shades, backgrounds and
degradations are this file's own. Each sample varies within what a person would still call
"a <colour> <shape>": proportions, filled or thick outline, size, position, a small rotation, blur,
JPEG, noise, and neutral backgrounds (never a saturated hue, so a background cannot pass for an
object's colour). Sample i depends only on (seed, i). `FarOutOfSet` draws images that hold none of
the 36 classes, for open-set tests. Pillow and numpy only; torch-free.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model.data.synthetic import COLOURS, SHAPES, all_classes

SUPERSAMPLE = 4  # drawn at 4x and reduced: smooth edges without a rasteriser of our own
Point = tuple[float, float]

# (hue degrees lo, hi), (saturation lo, hi), (value lo, hi): our own reading of each colour name
SHADES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-6.0, 6.0), (0.82, 1.0), (0.75, 0.98)),  # crimson to tomato
    "green": ((100.0, 140.0), (0.65, 0.95), (0.5, 0.85)),  # leaf to emerald
    "blue": ((212.0, 232.0), (0.7, 1.0), (0.65, 1.0)),  # royal to azure
    "yellow": ((50.0, 57.0), (0.8, 1.0), (0.92, 1.0)),  # lemon to gold
    "purple": ((268.0, 288.0), (0.55, 0.85), (0.58, 0.85)),  # violet to plum
    "orange": ((22.0, 31.0), (0.88, 1.0), (0.92, 1.0)),  # tangerine to amber
}
# colours none of the 36 classes uses, as (hue lo, hi), (sat lo, hi), (value lo, hi)
UNUSED_SHADES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "pink": ((320.0, 340.0), (0.3, 0.45), (0.95, 1.0)),
    "cyan": ((182.0, 190.0), (0.75, 1.0), (0.85, 1.0)),
    "brown": ((20.0, 32.0), (0.6, 0.75), (0.3, 0.42)),
    "white": ((0.0, 360.0), (0.0, 0.03), (0.97, 1.0)),
    "black": ((0.0, 360.0), (0.0, 0.05), (0.0, 0.08)),
    "gray-teal": ((170.0, 185.0), (0.18, 0.28), (0.5, 0.6)),
}
BACKGROUNDS = ("light", "dark", "mid gray", "gradient", "texture")
FAR_KINDS = ("empty", "scribbles", "unused colour")


@dataclass(frozen=True)
class ProbeStyle:
    """The choices behind one sample, so a test can pick the plain ones (filled, sharp, clean)."""

    background: str
    filled: bool
    size: float  # the shape's extent as a fraction of the side
    rotation: float  # degrees
    blur: float  # Gaussian radius in output pixels; 0 = none
    jpeg_quality: int  # 0 = no JPEG round trip
    noise: float  # std of pixel noise; 0 = none


@dataclass(frozen=True)
class ProbeSample:
    image: Image.Image
    colour: str
    shape: str
    style: ProbeStyle


def _rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, i]))


def shade(rng: np.random.Generator, ranges: tuple[tuple[float, float], ...]) -> tuple[int, int, int]:
    """One RGB colour drawn from (hue, saturation, value) ranges."""
    (h0, h1), (s0, s1), (v0, v1) = ranges
    r, g, b = colorsys.hsv_to_rgb((rng.uniform(h0, h1) % 360) / 360, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return round(r * 255), round(g * 255), round(b * 255)


def background(rng: np.random.Generator, size: int, kind: str) -> Image.Image:
    """A neutral background: per-channel tint of at most a few levels, so it stays gray."""
    tint = rng.integers(-4, 5, size=3)
    if kind in ("light", "dark", "mid gray"):
        lo, hi = {"light": (200, 245), "dark": (5, 35), "mid gray": (105, 150)}[kind]
        level = np.full((size, size), rng.uniform(lo, hi))
    elif kind == "gradient":
        a, b = rng.uniform(20, 235, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle) + 0.5
        level = a + (b - a) * np.clip(t, 0, 1)
    else:  # faint texture: smoothed noise around one gray
        noise = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))
        noise = noise.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0)))
        base, amp = rng.uniform(40, 215), rng.uniform(12, 30)
        level = base + amp * (np.asarray(noise, np.float64) - 128) / 64
    rgb = level[..., None] + tint
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def _ring(radii: Sequence[float], start: float) -> list[Point]:
    n = len(radii)
    return [
        (r * math.cos(start + 2 * math.pi * k / n), r * math.sin(start + 2 * math.pi * k / n))
        for k, r in enumerate(radii)
    ]


def outline(shape: str, rng: np.random.Generator) -> list[Point]:
    """The shape as a polygon in a unit box (coordinates within [-1, 1], y down), proportions varied."""
    if shape == "circle":
        squash = rng.uniform(0.93, 1.0)  # still a circle to the eye
        return [(math.cos(t), squash * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 96, endpoint=False)]
    if shape == "square":
        return _rounded_square(rng.uniform(0.0, 0.35) if rng.random() < 0.5 else 0.0)
    if shape == "triangle":
        half_base = rng.uniform(0.75, 1.0)  # squat to tall, never a sliver
        height = rng.uniform(0.8, 1.0) * 2
        return [(0.0, -height / 2), (half_base, height / 2), (-half_base, height / 2)]
    if shape == "star":
        inner = rng.uniform(0.36, 0.52)
        return _ring([1.0, inner] * 5, -math.pi / 2)
    if shape == "cross":
        a = rng.uniform(0.26, 0.42)  # half-width of an arm
        return [
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
    if shape == "heart":
        return _heart(rng.uniform(0.9, 1.1))
    raise ValueError(f"unknown shape {shape!r}")


def _rounded_square(r: float) -> list[Point]:
    if r <= 0:
        return [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    pts: list[Point] = []
    for cx, cy, a0 in (
        (1 - r, 1 - r, 0.0),
        (r - 1, 1 - r, 90.0),
        (r - 1, r - 1, 180.0),
        (1 - r, r - 1, 270.0),
    ):
        for a in np.radians(np.linspace(a0, a0 + 90, 10)):
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _heart(width: float) -> list[Point]:
    t = np.linspace(0, 2 * math.pi, 120, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # y down: lobes on top
    x, y = x / 17 * width, (y + 2.5) / 15
    return list(zip(x.tolist(), y.tolist(), strict=True))


def place(pts: list[Point], rng: np.random.Generator, side: int, size: float, rotation: float) -> list[Point]:
    """Rotate, scale to `size` of the side and move to a random spot that keeps it inside."""
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    turned = [(x * c - y * s, x * s + y * c) for x, y in pts]
    xs, ys = [p[0] for p in turned], [p[1] for p in turned]
    scale = size * side / max(max(xs) - min(xs), max(ys) - min(ys))
    w, h = (max(xs) - min(xs)) * scale, (max(ys) - min(ys)) * scale
    margin = 0.02 * side
    ox = rng.uniform(margin, max(margin, side - margin - w)) - min(xs) * scale
    oy = rng.uniform(margin, max(margin, side - margin - h)) - min(ys) * scale
    return [(ox + x * scale, oy + y * scale) for x, y in turned]


def draw_shape(img: Image.Image, pts: list[Point], colour: tuple[int, int, int], line: float) -> None:
    """Paint the polygon (filled, or an outline `line` output pixels thick, inside the edge)."""
    k, side = SUPERSAMPLE, img.size[0]
    mask = Image.new("L", (side * k, side * k), 0)
    ImageDraw.Draw(mask).polygon([(x * k, y * k) for x, y in pts], fill=255)
    if line > 0:
        erode = 2 * max(1, round(line * k)) + 1
        mask = Image.fromarray(np.asarray(mask) & ~np.asarray(mask.filter(ImageFilter.MinFilter(erode))))
    small = mask.resize((side, side), Image.Resampling.BOX)
    img.paste(Image.new("RGB", img.size, colour), (0, 0), small)


def degrade(img: Image.Image, rng: np.random.Generator, style: ProbeStyle) -> Image.Image:
    if style.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(style.blur))
    if style.noise > 0:
        arr = np.asarray(img, np.float64) + rng.normal(0, style.noise, (*img.size[::-1], 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if style.jpeg_quality:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=style.jpeg_quality)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def _style(rng: np.random.Generator) -> ProbeStyle:
    size = float(rng.uniform(0.15, 0.92))
    return ProbeStyle(
        background=str(rng.choice(BACKGROUNDS)),
        filled=bool(size < 0.35 or rng.random() < 0.65),  # an outline needs room to read as a shape
        size=size,
        rotation=float(rng.uniform(-15, 15)),
        blur=float(rng.uniform(0.4, 1.1)) if rng.random() < 0.25 else 0.0,
        jpeg_quality=int(rng.integers(35, 85)) if rng.random() < 0.25 else 0,
        noise=float(rng.uniform(3, 10)) if rng.random() < 0.25 else 0.0,
    )


class ProbeShapes:
    """Indexable like a dataset: item i is class i % len(classes), so every prefix of a whole number
    of rounds is class-balanced; the rest of item i is drawn from (seed, i) alone."""

    def __init__(
        self,
        image_size: int = 64,
        seed: int = 0,
        length: int = 3600,
        classes: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.image_size, self.seed, self.length = image_size, seed, length
        self.classes = list(classes) if classes is not None else all_classes()
        unknown = [c for c in self.classes if c[0] not in COLOURS or c[1] not in SHAPES]
        if unknown or not self.classes:
            raise ValueError(f"classes must be non-empty colour-shape pairs of the 36; got {unknown}")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> ProbeSample:
        if not 0 <= i < self.length:
            raise IndexError(i)
        colour, shape = self.classes[i % len(self.classes)]
        rng = _rng(self.seed, i)
        style = _style(rng)
        img = background(rng, self.image_size, style.background)
        pts = place(outline(shape, rng), rng, self.image_size, style.size, style.rotation)
        line = 0.0 if style.filled else max(1.5, style.size * self.image_size * rng.uniform(0.1, 0.16))
        draw_shape(img, pts, shade(rng, SHADES[colour]), line)
        return ProbeSample(degrade(img, rng, style), colour, shape, style)


class FarOutOfSet:
    """Images that hold no shape of the 36 classes, in turn (i % 3): an empty background; scribbles
    (open thin strokes in random colours); one of the six shapes in a colour no class uses."""

    def __init__(self, image_size: int = 64, seed: int = 0, length: int = 300) -> None:
        self.image_size, self.seed, self.length = image_size, seed, length

    def __len__(self) -> int:
        return self.length

    def kind(self, i: int) -> str:
        return FAR_KINDS[i % len(FAR_KINDS)]

    def __getitem__(self, i: int) -> Image.Image:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng, kind, side = _rng(self.seed, i), self.kind(i), self.image_size
        if kind == "unused colour":
            return self._unused_colour(rng)
        img = background(rng, side, str(rng.choice(BACKGROUNDS)))
        if kind == "scribbles":
            _scribble(img, rng)
        return img

    def _unused_colour(self, rng: np.random.Generator) -> Image.Image:
        name = str(rng.choice(list(UNUSED_SHADES)))
        rgb = shade(rng, UNUSED_SHADES[name])
        # a background the colour stands out on: dark objects on light ground, light ones on dark
        img = background(rng, self.image_size, "light" if sum(rgb) < 300 else "dark")
        size = float(rng.uniform(0.3, 0.85))
        pts = place(outline(str(rng.choice(SHAPES)), rng), rng, self.image_size, size, rng.uniform(-15, 15))
        draw_shape(img, pts, rgb, 0.0)
        return img


def _scribble(img: Image.Image, rng: np.random.Generator) -> None:
    """2-4 open curves (quadratic Béziers), 1-2 px wide: ink, but no closed shape."""
    side, draw = img.size[0], ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):
        p0, p1, p2 = rng.uniform(0.05, 0.95, (3, 2)) * side
        t = np.linspace(0, 1, 24)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line([tuple(p) for p in curve.tolist()], fill=colour, width=int(rng.integers(1, 3)))
