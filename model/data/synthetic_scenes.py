"""Two-object scenes and the "varied" style of the synthetic shapes (model/data/synthetic.py).

The classic renderer there draws one filled shape of a narrow size range at nine nominal
positions on a mid-gray background, with nothing else in the way; a model trained on it alone
learns those habits and loses ground on any other renderer. The varied style draws the same
colour and shape (the same palette, the same meaning-preserving rotation limits) with everything
else spread wider: sizes and positions drawn continuously, stretched proportions, star points and
cross arms of other thicknesses, outlines as well as fills, backgrounds from black to white, and
the damage of real pipelines (blur, resampling from other image sizes, pixel noise, JPEG).

A scene holds two shapes of two different classes, apart (their bounding circles do not touch),
each at most medium-sized; the caption names both, in either order ("a red circle and a blue
square", "a blue square to the left of a red circle"). Everything is drawn from the generator the
caller passes, so a sample is still a pure function of (seed, split, index).
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model.data.synthetic import (
    _ARTICLE,
    _MAX_ROTATION_DEG,
    _POLYGONS,
    _SHAPE_SCALE,
    COLOUR_JITTER,
    COLOUR_RGB,
    SPLITS,
    STYLES,
    Sample,
    _cross,
    _regular,
    _tone_name,
    class_name,
)

if TYPE_CHECKING:
    from model.data.synthetic import SyntheticShapes

__all__ = ["check_options", "render_scene", "render_varied", "scene_rng", "varied_at"]

_CIRCLE = _regular(64, 0.0)  # a circle as a polygon, so that it can be stretched like the rest
# Largest stretch (width / height) that keeps each name true: a square stays nearly square.
_MAX_ASPECT = {"circle": 1.08, "square": 1.12, "triangle": 1.3, "star": 1.2, "cross": 1.25, "heart": 1.25}
_VARIED_DIAMETER = (0.16, 0.80)  # fraction of the side, before the shape scale (classic: 0.24-0.72)
_SCENE_DIAMETER = {False: (0.22, 0.42), True: (0.16, 0.46)}  # classic, varied: at most medium
# Outline band as a fraction of the shape's width: narrower for the thin arms of stars and crosses.
_OUTLINE_WIDTH = {s: (0.08, 0.15) for s in ("circle", "square", "triangle", "heart")} | {
    "star": (0.05, 0.08),
    "cross": (0.05, 0.08),
}
_SCENE_GAP = 0.03  # between the two objects' bounding circles, as a fraction of the side
_MARGIN_PX = 1.5
_P_OUTLINE, _P_BLUR, _P_NOISE, _P_JPEG, _P_RESAMPLE = 0.25, 0.3, 0.3, 0.3, 0.5

# Scene captions: {a} and {b} are the two objects' phrases ("red circle", "small blue square"),
# {r} a true spatial relation of a to b, {g} the background. Articles are fixed afterwards.
_SCENE_CAPTIONS: tuple[str, ...] = (
    "a {a} and a {b}",
    "{a} and {b}",
    "a {a} next to a {b}",
    "a {a} beside a {b}",
    "a {a} with a {b}",
    "a photo of a {a} and a {b}",
    "a picture of a {a} and a {b}",
    "there is a {a} and a {b}",
    "two shapes: a {a} and a {b}",
    "a {a} and a {b} on a {g} background",
)
_RELATION_CAPTIONS: tuple[str, ...] = ("a {a} {r} a {b}", "there is a {a} {r} a {b}")
_OUTLINE_CAPTIONS: tuple[str, ...] = ("a {c} {s} outline", "the outline of a {c} {s}", "a {c} outlined {s}")


def _size_name(diameter: float) -> str:
    """The size word of a nominal diameter (fraction of the side), bins around the classic ranges."""
    return "small" if diameter < 0.36 else "medium" if diameter < 0.56 else "large"


def _position_name(x: float, y: float) -> str:
    """The name (a key of synthetic._POSITIONS) of where a centre lies, in thirds-ish of the side."""
    vertical = "top" if y < 0.4 else "bottom" if y > 0.6 else ""
    horizontal = "left" if x < 0.4 else "right" if x > 0.6 else ""
    return f"{vertical} {horizontal}".strip() or "center"


def _varied_tone(level: float) -> str:
    if level < 40:
        return "black"
    return "white" if level >= 220 else _tone_name(level)


def _points(rng: np.random.Generator, shape: str, diameter: float, varied: bool) -> np.ndarray:
    """[n, 2] vertices around the origin, in fractions of the side: proportioned, rotated, sized."""
    if shape == "circle":
        unit = _CIRCLE
    elif varied and shape == "star":
        unit = _regular(10, -90.0, (1.0, float(rng.uniform(0.36, 0.55))))
    elif varied and shape == "cross":
        unit = _cross(float(rng.uniform(0.22, 0.42)))
    else:
        unit = _POLYGONS[shape]
    if varied:  # stretch in the shape's own frame, area kept
        aspect = math.exp(rng.uniform(-1.0, 1.0) * math.log(_MAX_ASPECT[shape]))
        unit = unit * np.array([math.sqrt(aspect), 1.0 / math.sqrt(aspect)])
    angle = math.radians(rng.uniform(-1.0, 1.0) * _MAX_ROTATION_DEG[shape])
    cos, sin = math.cos(angle), math.sin(angle)
    pts = unit @ np.array([[cos, sin], [-sin, cos]]) * (diameter / 2 * _SHAPE_SCALE[shape])
    span = float((pts.max(axis=0) - pts.min(axis=0)).max())
    return pts * min(1.0, 0.96 / span)  # never wider than the image (a big stretched shape)


def _object_rgb(rng: np.random.Generator, colour: str, varied: bool) -> tuple[int, int, int]:
    base = np.array(COLOUR_RGB[colour], dtype=float)
    if varied:
        # The classic hue jitter (wider lets yellow and orange meet near hue 40), then saturation
        # and brightness, which leave the hue alone: still nearest its own colour of the palette.
        rgb = base + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3)
        gray = rgb.mean()
        rgb = (gray + (rgb - gray) * rng.uniform(0.85, 1.0)) * rng.uniform(0.88, 1.06)
    else:
        rgb = base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    r, g, b = np.clip(np.round(rgb), 0, 255).astype(int)
    return int(r), int(g), int(b)


def _paint(image: Image.Image, pts: np.ndarray, rgb: tuple[int, int, int], outline_px: float | None) -> None:
    """Paste one shape: `pts` already placed (fractions of the side); a mask at 2x for anti-aliasing."""
    side = image.size[0]
    mask = Image.new("L", (2 * side, 2 * side), 0)
    ImageDraw.Draw(mask).polygon((pts * 2 * side).ravel().tolist(), fill=255)
    if outline_px:  # the filled shape less its erosion: an even band inside the outer contour
        filled = np.asarray(mask) > 0  # [2S, 2S]
        mask = Image.fromarray(
            np.where(filled & ~_erode(filled, round(2 * outline_px)), 255, 0).astype(np.uint8)
        )
    image.paste(rgb, (0, 0, side, side), mask.reduce(2))


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion by a (2k+1)-square: a running minimum along each axis (Pillow's polygon
    outline breaks at the inner corners of a cross or star, and its MinFilter is far slower)."""
    return _running_min(_running_min(mask, 2 * k + 1, axis=0), 2 * k + 1, axis=1)


def _running_min(a: np.ndarray, window: int, axis: int) -> np.ndarray:
    """Minimum over the centred `window` (odd) along `axis`, False beyond the edges. Minima over
    power-of-two spans double at each step, and two overlapping spans cover any window: log steps."""
    half = window // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    out = np.pad(a, pad, constant_values=False)
    span = 1
    while 2 * span <= window:  # out[i] = min(a[i : i + 2 span]) along the axis
        shifted = np.take(out, np.arange(span, out.shape[axis]), axis=axis)
        out = np.minimum(np.take(out, np.arange(shifted.shape[axis]), axis=axis), shifted)
        span *= 2
    n = a.shape[axis]
    first = np.take(out, np.arange(n), axis=axis)
    last = np.take(out, np.arange(window - span, window - span + n), axis=axis)
    return np.minimum(first, last)


def _varied_background(rng: np.random.Generator, side: int) -> tuple[Image.Image, float]:
    """Near-gray like the classic ones (so no background passes for an object colour), black to white."""
    level = float(rng.uniform(10.0, 245.0))
    tint = rng.uniform(-7.0, 7.0, size=3).astype(np.float32)
    kind = ("plain", "plain", "gradient", "noise")[int(rng.integers(4))]  # plain most often
    gray: np.ndarray  # [S, S] float
    if kind == "gradient":
        axis = (np.arange(side, dtype=np.float32) + 0.5) / side - 0.5
        theta = rng.uniform(0.0, 2.0 * np.pi)
        ramp = axis[None, :] * math.cos(theta) + axis[:, None] * math.sin(theta)  # [S, S]
        gray = level + float(rng.uniform(20.0, 60.0)) * ramp
    elif kind == "noise":
        gray = level + rng.normal(0.0, float(rng.uniform(3.0, 9.0)), size=(side, side)).astype(np.float32)
    else:
        gray = np.full((side, side), level, dtype=np.float32)
    pixels = np.clip(gray[:, :, None] + tint, 0, 255).astype(np.uint8)  # [S, S, 3]
    return Image.fromarray(pixels, "RGB"), level


def _canvas(src: SyntheticShapes, rng: np.random.Generator, varied: bool) -> tuple[Image.Image, str]:
    """The background to draw on and its tone; varied ones are often drawn at another size and
    resampled in _finish, as a photo of another size is by the server's preprocessing."""
    if not varied:
        pixels, level = src._background(rng)
        return Image.fromarray(pixels, "RGB"), _tone_name(level)
    side = src.image_size
    if rng.random() < _P_RESAMPLE:
        side = max(16, round(side * float(rng.uniform(0.75, 2.5))))
    image, level = _varied_background(rng, side)
    return image, _varied_tone(level)


def _finish(image: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """Blur (at the drawing size), bicubic resize to `size`, pixel noise, JPEG: each sometimes."""
    if rng.random() < _P_BLUR:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.2)) * image.size[0] / size))
    if image.size[0] != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < _P_NOISE:
        noise = rng.normal(0.0, float(rng.uniform(2.0, 8.0)), size=(size, size, 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < _P_JPEG:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(25, 91)))
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return image


def _outline_px(
    rng: np.random.Generator, shape: str, pts: np.ndarray, side: int, varied: bool
) -> float | None:
    """Outline width in pixels of the drawing, or None for a filled shape; thick enough to show colour."""
    if not varied or rng.random() >= _P_OUTLINE:
        return None
    diameter_px = float((pts.max(axis=0) - pts.min(axis=0)).max()) * side
    width = float(rng.uniform(*_OUTLINE_WIDTH[shape])) * diameter_px
    return width if width >= 2.0 * side / 64 else None  # thinner would not show; wider fills thin parts


def render_varied(src: SyntheticShapes, rng: np.random.Generator, colour: str, shape: str) -> Sample:
    """One object in the varied style, captioned like the classic samples (outlines sometimes say so)."""
    image, tone = _canvas(src, rng, varied=True)
    diameter = float(rng.uniform(*_VARIED_DIAMETER))
    pts = _points(rng, shape, diameter, varied=True)
    margin = _MARGIN_PX / image.size[0]
    low, high = pts.min(axis=0) - margin, pts.max(axis=0) + margin
    centre = rng.uniform(-low, np.maximum(-low, 1.0 - high))  # anywhere the whole shape fits
    outline = _outline_px(rng, shape, pts, image.size[0], varied=True)
    _paint(image, pts + centre, _object_rgb(rng, colour, varied=True), outline)
    image = _finish(image, rng, src.image_size)

    size_name, position = _size_name(diameter), _position_name(float(centre[0]), float(centre[1]))
    if outline and rng.random() < 0.4:
        template = _OUTLINE_CAPTIONS[int(rng.integers(len(_OUTLINE_CAPTIONS)))]
        caption = _ARTICLE.sub(r"\1n ", template.format(c=colour, s=shape))
    else:
        caption = src._caption(rng, colour, shape, size_name, position, tone)
    return Sample(image, caption, colour, shape, size_name, position, tone)


def _place_two(
    rng: np.random.Generator, shapes: list[np.ndarray], margin: float
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Centres for two shapes whose bounding circles stay _SCENE_GAP apart, every point inside the
    image; both shrink a little whenever 50 tries fail (rare). Returns (shapes, centres, shrink)."""
    shrink = 1.0
    while True:
        pts = [p * shrink for p in shapes]
        radii = [float(np.hypot(p[:, 0], p[:, 1]).max()) for p in pts]
        bounds = [(-p.min(axis=0) + margin, 1.0 - p.max(axis=0) - margin) for p in pts]
        for _ in range(50):
            centres = [rng.uniform(lo, np.maximum(lo, hi)) for lo, hi in bounds]
            if np.hypot(*(centres[0] - centres[1])) >= radii[0] + radii[1] + _SCENE_GAP:
                return pts, centres, shrink
        shrink *= 0.9


def _relation(a: np.ndarray, b: np.ndarray) -> str | None:
    """Where a is relative to b, along the axis they are further apart on (None: too close to say)."""
    dx, dy = float(b[0] - a[0]), float(b[1] - a[1])  # y points down
    if abs(dx) >= abs(dy):
        return None if abs(dx) < 0.15 else "to the left of" if dx > 0 else "to the right of"
    return None if abs(dy) < 0.15 else "above" if dy > 0 else "below"


def _scene_pairs(src: SyntheticShapes, rng: np.random.Generator, index: int) -> list[tuple[str, str]]:
    """Two different classes of src's split; in "scenes" the first cycles through all 36, so that
    any prefix is balanced (train: seen pairs only, both drawn at random)."""
    n = len(src.classes)
    first = index % n if src.split == "scenes" else int(rng.integers(n))
    second = (first + 1 + int(rng.integers(n - 1))) % n  # any class but the first
    return [src.classes[first], src.classes[second]]


def render_scene(src: SyntheticShapes, rng: np.random.Generator, index: int, varied: bool) -> Sample:
    """Two objects of two different classes, apart, classic or varied; the caption names both."""
    pairs = _scene_pairs(src, rng, index)
    image, tone = _canvas(src, rng, varied)
    side = image.size[0]
    diameters = [float(rng.uniform(*_SCENE_DIAMETER[varied])) for _ in pairs]
    shapes = [_points(rng, shape, d, varied) for (_, shape), d in zip(pairs, diameters, strict=True)]
    pts, centres, shrink = _place_two(rng, shapes, _MARGIN_PX / side)
    for (colour, shape), p, c in zip(pairs, pts, centres, strict=True):
        _paint(image, p + c, _object_rgb(rng, colour, varied), _outline_px(rng, shape, p, side, varied))
    if varied:
        image = _finish(image, rng, src.image_size)

    order = [0, 1] if rng.random() < 0.5 else [1, 0]  # both orders in captions
    sizes = [_size_name(d * shrink) for d in diameters]
    phrases = []
    for k in order:
        name = class_name(*pairs[k])
        phrases.append(f"{sizes[k]} {name}" if rng.random() < 0.2 else name)
    relation = _relation(centres[order[0]], centres[order[1]])
    if relation and rng.random() < 0.3:
        template = _RELATION_CAPTIONS[int(rng.integers(len(_RELATION_CAPTIONS)))]
    else:
        template = _SCENE_CAPTIONS[int(rng.integers(len(_SCENE_CAPTIONS)))]
    caption = _ARTICLE.sub(r"\1n ", template.format(a=phrases[0], b=phrases[1], r=relation, g=tone))

    first = order[0]
    colour, shape = pairs[first]
    position = _position_name(float(centres[first][0]), float(centres[first][1]))
    objects = (pairs[order[0]], pairs[order[1]])
    return Sample(image, caption, colour, shape, sizes[first], position, tone, objects)


def scene_rng(shapes: SyntheticShapes, index: int) -> np.random.Generator | None:
    """The generator of train index `index` if it is a scene, else None. A stream apart from the
    index's own (one more key word), so scene_fraction 0 leaves "train" as it always was."""
    if shapes.split != "train" or shapes.scene_fraction <= 0.0:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([shapes.seed, SPLITS[shapes.split], index, 1]))
    return rng if rng.random() < shapes.scene_fraction else None


def check_options(split: str, style: str, scene_fraction: float, varied_fraction: float) -> None:
    """Refuse an unknown split or style, and a scene or varied option that they cannot honour."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; known styles: {', '.join(STYLES)}")
    for name, share in (("scene_fraction", scene_fraction), ("varied_fraction", varied_fraction)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    if style == "classic" and varied_fraction != 1.0:
        raise ValueError("varied_fraction is for style 'varied'")
    if scene_fraction and split != "train":
        raise ValueError(f"scene_fraction is for the train split (the {split!r} split has none)")


def varied_at(shapes: SyntheticShapes, index: int) -> bool:
    """Whether index is drawn in the varied style: every index at varied_fraction 1, otherwise a
    share decided on a stream of its own, the rest drawn classic, exactly as without the style
    (measured: with every image varied, the tiny preset's 450 steps compose held-out pairs poorly)."""
    if shapes.style != "varied":
        return False
    if shapes.varied_fraction >= 1.0:
        return True
    rng = np.random.default_rng(np.random.SeedSequence([shapes.seed, SPLITS[shapes.split], index, 2]))
    return bool(rng.random() < shapes.varied_fraction)
