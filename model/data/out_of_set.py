"""Images that are none of the 36 colour-shape classes: the "far" out-of-set test of open-set answers.

Three kinds, in turn (i % 3): an empty background; scribbles (open strokes, no closed shape); one of
the six shapes in a colour the classes never use (pink, cyan, brown, white, black, teal). Drawn here,
not by the training generator, so the test does not share its quirks. Image i depends only on
(seed, i). Torch-free.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("empty", "scribbles", "unused colour")
UNUSED_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (250, 130, 200),
    "cyan": (40, 215, 225),
    "brown": (120, 75, 35),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
    "teal": (20, 120, 115),
}
SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross", "heart")


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Near-gray: plain, dark, a gradient or a faint texture (no hue an object colour could have)."""
    style = int(rng.integers(4))
    level = float(rng.uniform(25, 70) if style == 1 else rng.uniform(70, 225))
    gray = np.full((size, size), level, np.float32)
    if style == 2:
        ramp = np.linspace(-1, 1, size, dtype=np.float32)
        gray = gray + float(rng.uniform(20, 50)) * (ramp[None, :] if rng.integers(2) else ramp[:, None])
    elif style == 3:
        gray = gray + rng.normal(0, float(rng.uniform(4, 12)), (size, size)).astype(np.float32)
    rgb = np.clip(gray[:, :, None] + rng.uniform(-5, 5, 3).astype(np.float32), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _scribbles(img: Image.Image, rng: np.random.Generator) -> None:
    """Wandering open curves (a turning random walk), so no stroke closes into a shape."""
    draw, s = ImageDraw.Draw(img), img.size[0]
    for _ in range(int(rng.integers(2, 5))):
        x, y = (float(v) for v in rng.uniform(0.2 * s, 0.8 * s, 2))
        heading, pts = float(rng.uniform(0, 2 * math.pi)), []
        for _ in range(int(rng.integers(15, 35))):
            heading += float(rng.normal(0, 0.5))
            x = min(max(x + 0.04 * s * math.cos(heading), 1.0), s - 2.0)
            y = min(max(y + 0.04 * s * math.sin(heading), 1.0), s - 2.0)
            pts.append((x, y))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line(pts, fill=colour, width=max(1, round(s / 64)))


def _outline(shape: str, r: float) -> list[tuple[float, float]]:
    """Unit-ish polygon of a shape, radius r, centred on the origin (a circle is a 48-gon)."""

    def ring(n: int, radii: tuple[float, ...], start: float) -> list[tuple[float, float]]:
        angles = [start + 2 * math.pi * k / n for k in range(n)]
        return [(r * radii[k % len(radii)] * math.cos(a), r * radii[k % len(radii)] * math.sin(a))
                for k, a in enumerate(angles)]  # fmt: skip

    if shape == "circle":
        return ring(48, (1.0,), 0.0)
    if shape == "square":
        return ring(4, (1.0,), math.pi / 4)
    if shape == "triangle":
        return ring(3, (1.0,), -math.pi / 2)
    if shape == "star":
        return ring(10, (1.0, 0.42), -math.pi / 2)
    if shape == "cross":
        a = 0.3 * r
        return [
            (-a, -r),
            (a, -r),
            (a, -a),
            (r, -a),
            (r, a),
            (a, a),
            (a, r),
            (-a, r),
            (-a, a),
            (-r, a),
            (-r, -a),
            (-a, -a),
        ]
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)  # heart
    x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    scale = r / 17.0
    return [(float(a) * scale, float(b) * scale + 0.1 * r) for a, b in zip(x, y, strict=True)]


class FarOutOfSet:
    """Indexable: `far[i]` is a PIL RGB image of `image_size`, of kind `kind(i)`."""

    def __init__(self, image_size: int = 64, seed: int = 0, length: int = 300) -> None:
        self.image_size, self.seed, self.length = image_size, seed, length

    def __len__(self) -> int:
        return self.length

    @staticmethod
    def kind(i: int) -> str:
        return KINDS[i % len(KINDS)]

    def colour(self, i: int) -> str | None:
        """The unused colour of image i's shape (None for the other kinds)."""
        return (
            list(UNUSED_COLOURS)[(i // 3) % len(UNUSED_COLOURS)] if self.kind(i) == "unused colour" else None
        )

    def __getitem__(self, i: int) -> Image.Image:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for length {self.length}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 7_301, i]))
        s = self.image_size
        img = _background(rng, s)
        if self.kind(i) == "scribbles":
            _scribbles(img, rng)
        elif self.kind(i) == "unused colour":
            name = self.colour(i)
            assert name is not None
            shape = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
            r = float(rng.uniform(0.18, 0.38)) * s
            cx, cy = (float(v) for v in rng.uniform(r + 1, s - r - 1, 2))
            ImageDraw.Draw(img).polygon(
                [(cx + x, cy + y) for x, y in _outline(shape, r)], fill=UNUSED_COLOURS[name]
            )
        if rng.random() < 0.3:
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        return img
