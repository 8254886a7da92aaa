"""Image bytes -> normalized float32 CHW arrays, exactly as OpenAI CLIP's torchvision pipeline on PIL
images does it (Resize(S, bicubic), CenterCrop(S), RGB, ToTensor, Normalize), or, for SigLIP, as its
Hugging Face image processor does (resize straight to S x S, no crop, mean = std = 0.5). Torch-free: the
server imports it, and so does the trainer, so both sides share one implementation."""

from __future__ import annotations

import functools
import io
import logging
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
# 50 MP covers 8K frames (33 MP) and 48 MP phone photos, bounds a decode to ~200 MB (RGBA), and is
# below Pillow's DecompressionBombWarning threshold (~89.5 MP), which so never fires for an image we accept.
DEFAULT_MAX_PIXELS = 50_000_000

_RESAMPLE = {name: Image.Resampling[name.upper()] for name in ("bicubic", "bilinear", "nearest", "lanczos")}
# Camera JPEGs with an embedded preview or depth map open as "MPO"; their first frame is a plain JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# Beyond this aspect ratio we resample only the kept window: the full resize of a 2000x1 strip is 448000x224.
_MAX_FULL_RESIZE_RATIO = 16
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")
# How the image reaches S x S: CLIP's short side to S then a centre crop, or SigLIP's squash to S x S.
_CROP_OF = {"shortest_side": "center", "square": "none"}


class ImageError(ValueError):
    """A client-side problem with an uploaded image. `code` names it; `status` is the HTTP status it
    stands for, for callers outside this project. The service answers from its own table
    (app/api/errors.py STATUS, by code), which a test holds equal to these."""

    code: str = "invalid_image"
    status: int = 422

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedImageFormat(ImageError):
    code = "unsupported_format"
    status = 415


class ImageTooLarge(ImageError):
    code = "image_too_large"
    status = 413


class InvalidImage(ImageError):
    code = "invalid_image"
    status = 422


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize: str = "shortest_side"

    def __post_init__(self) -> None:
        # JSON manifests give lists; tuples keep the config hashable (the lookup table is cached on them).
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")
        if self.resize not in _CROP_OF:
            raise ValueError(f"resize must be one of {sorted(_CROP_OF)}, got {self.resize!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values with std > 0, got {self.mean}, {self.std}")

    def to_dict(self) -> dict[str, Any]:
        # Fixed steps are written out so a manifest states the whole recipe and from_dict can refuse others.
        s = self.image_size
        return {"image_size": s, "resize": self.resize, "resize_size": s, "crop": _CROP_OF[self.resize],
                "crop_size": s, "interpolation": self.interpolation, "color_mode": "RGB",
                "rescale_factor": 1 / 255, "mean": list(self.mean), "std": list(self.std)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        size = int(d.get("image_size", d.get("crop_size", 224)))
        resize = str(d.get("resize", "shortest_side"))
        if resize not in _CROP_OF:
            raise ValueError(
                f"unsupported preprocessing resize={resize!r}; this code implements {sorted(_CROP_OF)}"
            )
        fixed = {"crop": _CROP_OF[resize], "color_mode": "RGB", "resize_size": size, "crop_size": size}
        for key, want in fixed.items():
            if key in d and d[key] != want:
                raise ValueError(f"unsupported preprocessing {key}={d[key]!r}; this code implements {want!r}")
        mean, std = d.get("mean", CLIP_MEAN), d.get("std", CLIP_STD)
        return cls(size, str(d.get("interpolation", "bicubic")), tuple(mean), tuple(std), resize)


def decode_image(
    data: bytes,
    *,
    allowed_formats: Collection[str] = DEFAULT_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Untrusted bytes -> upright RGB image (first frame, alpha flattened onto white).

    ``draft_size``: let a JPEG decode at 1/2, 1/4 or 1/8 scale (in the DCT, much cheaper than a full
    decode) as long as both sides stay >= draft_size; the CLIP resize that follows then starts from a
    smaller image. Off by default: it is close to, not the same as, a full decode (bench/README.md)."""
    if not data:
        raise InvalidImage("the upload is empty")
    try:
        # Image.open only parses the header; nothing is decoded until load().
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own (global) guard fired first; the Warning arrives only if warnings are errors.
        found = _BOMB_SIZE.search(str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        limit = (Image.MAX_IMAGE_PIXELS or 0) * (2 if isinstance(exc, Image.DecompressionBombError) else 1)
        cap = min(max_pixels, limit) if limit else max_pixels
        raise ImageTooLarge(f"image has {pixels}; the cap is {cap:,} pixels") from None
    except UnidentifiedImageError:
        sniffed = _sniff_unreadable(data)
        if sniffed:
            raise UnsupportedImageFormat(_format_message(sniffed, allowed_formats)) from None
        raise InvalidImage("the upload is not a recognised image") from None
    except Exception as exc:  # plugins raise a grab-bag of types on hostile headers
        raise InvalidImage(f"cannot read the image header: {exc}") from None

    fmt = img.format or "unknown"
    if _FORMAT_ALIASES.get(fmt, fmt) not in allowed_formats:
        raise UnsupportedImageFormat(_format_message(fmt, allowed_formats))
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height:,} pixels; the cap is {max_pixels:,} pixels"
        )
    try:
        if draft_size and fmt == "JPEG":
            img.draft(None, (draft_size, draft_size))
        img.load()  # first frame only: Image.open leaves animated files positioned at frame 0
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # a damaged EXIF block should not cost us an otherwise good photo
            log.warning("ignoring unreadable EXIF orientation", exc_info=True)
        rgb = _to_rgb(img)
    except MemoryError:
        raise
    except Exception as exc:  # truncated/corrupt data surfaces as OSError, SyntaxError, ValueError...
        log.debug("rejecting undecodable %s image", fmt, exc_info=True)
        raise InvalidImage(f"cannot decode the {fmt} image: {exc}") from None
    if rgb is not img:
        img.close()  # multi-frame files keep their buffer open (never close the image we return)
    return rgb


def preprocess_image(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """PIL image -> float32 [3, S, S], C-contiguous."""
    out = np.empty((3, cfg.image_size, cfg.image_size), dtype=np.float32)
    _preprocess_into(image, cfg, out)
    return out


def preprocess_bytes(
    data: bytes,
    cfg: PreprocessConfig,
    *,
    allowed_formats: Collection[str] = DEFAULT_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_draft: bool = False,
) -> np.ndarray:
    draft = cfg.image_size if jpeg_draft else None
    return preprocess_image(
        decode_image(data, allowed_formats=allowed_formats, max_pixels=max_pixels, draft_size=draft), cfg
    )


def preprocess_batch(images: Sequence[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """Images -> float32 [B, 3, S, S]; each image is written straight into the batch buffer."""
    out = np.empty((len(images), 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    for i, image in enumerate(images):
        _preprocess_into(image, cfg, out[i])
    return out


def _preprocess_into(image: Image.Image, cfg: PreprocessConfig, out: np.ndarray) -> None:
    if image.mode != "RGB":  # callers may pass any PIL image, not only decode_image's output
        image = _to_rgb(image)
    size = cfg.image_size
    resample = _RESAMPLE[cfg.interpolation]
    if cfg.resize == "square":
        # SigLIP's processor: PIL resize straight to S x S (aspect ratio not kept), nothing cropped.
        image = image.resize((size, size), resample)
        _normalise_into(np.asarray(image), cfg, out)
        return
    width, height = image.size
    # torchvision's Resize(int): short side S, long side int(S * long / short), truncated (HF: same).
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    # torchvision's CenterCrop offset is int(round(d / 2.0)): Python rounds half to even, so an odd
    # margin d with d % 4 == 3 shifts the window one pixel further than HF's floor(d / 2) does.
    left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)
    if max(new_w, new_h) <= _MAX_FULL_RESIZE_RATIO * size:
        # The reference path: resize everything, then crop. (Pillow copies when the size is unchanged.)
        image = image.resize((new_w, new_h), resample).crop((left, top, left + size, top + size))
    else:
        image = _resize_window(image, (new_w, new_h), (left, top), size, resample)
    _normalise_into(np.asarray(image), cfg, out)


def _normalise_into(pixels: np.ndarray, cfg: PreprocessConfig, out: np.ndarray) -> None:
    """[S, S, 3] uint8 -> `out` [3, S, S] float32."""
    # uint8 has 256 values, so normalising is a lookup: one gather per channel straight into `out`, no
    # float temporaries, ~2.5x faster than x * scale - bias (and bit-identical to torchvision).
    lut = _normalisation_table(cfg.mean, cfg.std)
    for c in range(3):
        np.take(lut[c], pixels[:, :, c], out=out[c])


def _resize_window(
    image: Image.Image, new: tuple[int, int], offset: tuple[int, int], size: int, resample: Image.Resampling
) -> Image.Image:
    """The size x size window at `offset` of image.resize(new), without building the whole resize.

    Pillow resizes in two passes with uint8 rounding between them; we run the same single-axis passes
    in the order Pillow 13 picks for the full resize (vertical first when the height shrinks over twice
    as much as the width), each boxed to the window and fed only the rows/columns it reads. The box
    reaches Pillow as float32, which can nudge a tap: rare pixels differ by 1-2 uint8 levels."""
    (w, h), (new_w, new_h), (left, top) = image.size, new, offset
    sx, sy = w / new_w, h / new_h
    x0, x1, y0, y1 = left * sx, (left + size) * sx, top * sy, (top + size) * sy
    # 3 = widest filter support we offer (lanczos), widened when downsampling, plus rounding slack.
    mx, my = math.ceil(3 * max(sx, 1.0)) + 2, math.ceil(3 * max(sy, 1.0)) + 2
    if h - new_h > 0 and h - new_h > 2 * (w - new_w):
        c0, c1 = max(0, math.floor(x0) - mx), min(w, math.ceil(x1) + mx)
        cols = image.crop((c0, 0, c1, h)).resize((c1 - c0, size), resample, box=(0, y0, c1 - c0, y1))
        return cols.resize((size, size), resample, box=(x0 - c0, 0, x1 - c0, size))
    r0, r1 = max(0, math.floor(y0) - my), min(h, math.ceil(y1) + my)
    rows = image.crop((0, r0, w, r1)).resize((size, r1 - r0), resample, box=(x0, 0, x1, r1 - r0))
    return rows.resize((size, size), resample, box=(0, y0 - r0, size, y1 - r0))


@functools.lru_cache(maxsize=8)
def _normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    # torchvision's float32 operations in its order: ToTensor x / 255, then Normalize (x - mean) / std.
    values = np.arange(256, dtype=np.float32) / np.float32(255)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    table = (values[None, :] - m) / s
    table.flags.writeable = False  # shared between calls and threads
    return table


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _HIGH_DEPTH_MODES:
        img = _high_depth_to_l(img)
    bands = img.getbands()
    if "A" in bands or "a" in bands or "transparency" in img.info:
        # Onto white, like HF; convert("RGB") would show the colour hidden under alpha 0 (often black).
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    # Pillow's convert() clips 16/32-bit values at 255 (a 16-bit PNG turns almost white), so scale:
    # I;16 by its declared range, F as 0..1 (or 0..255), I (32-bit, range unknown) by its content.
    arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(arr.max()) if arr.size else 0.0
    if img.mode.startswith("I;16"):
        scale = 255 / 65535
    elif img.mode == "F":
        scale = 255.0 if top <= 1.0 else 1.0
    else:
        scale = 1.0 if top <= 255 else 255 / 65535 if top <= 65535 else 255 / top
    return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))


def _sniff_unreadable(data: bytes) -> str | None:
    """Name formats that Pillow cannot open but that people upload, so they get a 415, not a 422."""
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<") and b"<svg" in head:
        return "SVG"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
        return "HEIF"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    if data.startswith(b"%PDF-"):
        return "PDF"
    return None


def _format_message(found: str, allowed: Collection[str]) -> str:
    return f"image format {found} is not accepted; allowed formats: {', '.join(sorted(allowed))}"
