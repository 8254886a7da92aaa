"""Tests for model/preprocess.py: CLIP parity, decoding edge cases, limits, robustness."""

from __future__ import annotations

import functools
import io
import json
import struct
import time
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from model.bundle.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_FORMATS,
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageTooLarge,
    InvalidImage,
    PreprocessConfig,
    UnsupportedImageFormat,
    decode_image,
    preprocess_batch,
    preprocess_bytes,
    preprocess_image,
)

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
SIZES = (64, 224, 336)
# (height, width) crops of real photos with awkward aspect ratios, all below the 16:1 limit of the
# exact full-resize path: odd sizes, portrait and landscape, margins that are odd and even.
ODD_CROPS = ((512, 100), (100, 512), (333, 517), (511, 97), (97, 511), (301, 451), (299, 300))
# One uint8 level after normalisation, in the channel with the smallest std (the largest step).
ONE_LEVEL = 1 / 255 / min(CLIP_STD)
# Both pipelines resize with the same Pillow call to the same uint8 pixels, and normalise in float32
# with the same operations (HF goes through float64 for x / 255 and casts back, which rounds to the
# same float32 for all 256 values, see test_rescale_through_float64_is_identical). So the expected
# difference is exactly 0 (measured: 0.0 for every case below); 1e-6 (~4 float32 ulps at |x| ~ 2)
# leaves room only for a future reordering of the float arithmetic, never for a pixel that differs
# (a one-level difference is ONE_LEVEL ~ 0.0150).
PARITY_TOL = 1e-6


@functools.cache
def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)())


def odd_crop(shape: tuple[int, int], source: str = "astronaut") -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.asarray(photo(source))[: shape[0], : shape[1]]))


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def hf_processor(size: int, **kw: Any) -> Any:
    """The slow, PIL-based CLIP processor (the default CLIPImageProcessor in 5.x needs torchvision)."""
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor  # 4.x
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **kw)


def hf_pixels(img: Image.Image, size: int, **kw: Any) -> np.ndarray:
    return np.asarray(hf_processor(size, **kw)(images=img, return_tensors="np")["pixel_values"][0])


def torchvision_crop(chw: np.ndarray, size: int) -> np.ndarray:
    """torchvision.transforms.functional.center_crop's offsets: int(round(d / 2.0)), half to even."""
    top, left = (round((d - size) / 2.0) for d in chw.shape[1:])
    return chw[:, top : top + size, left : left + size]


# ---------------------------------------------------------------- parity with transformers


def test_rescale_through_float64_is_identical() -> None:
    values = np.arange(256)
    hf = (values.astype(np.float64) * (1 / 255)).astype(np.float32)
    torchvision = values.astype(np.float32) / np.float32(255)
    assert np.array_equal(hf, torchvision)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", PHOTOS)
def test_resize_and_normalize_match_transformers(name: str, size: int) -> None:
    # HF without its crop, then torchvision's crop: everything but the crop offset comes from HF.
    img = photo(name)
    reference = torchvision_crop(hf_pixels(img, size, do_center_crop=False), size)
    ours = preprocess_image(img, PreprocessConfig(image_size=size))
    assert np.abs(ours - reference).max() <= PARITY_TOL


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("shape", ODD_CROPS)
def test_odd_aspect_ratios_match_transformers(shape: tuple[int, int], size: int) -> None:
    img = odd_crop(shape)
    reference = torchvision_crop(hf_pixels(img, size, do_center_crop=False), size)
    ours = preprocess_image(img, PreprocessConfig(image_size=size))
    assert np.abs(ours - reference).max() <= PARITY_TOL


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("source", [*PHOTOS, *ODD_CROPS])
def test_end_to_end_against_transformers_and_its_crop_offset(source: Any, size: int) -> None:
    """HF crops at floor(d / 2); torchvision (hence OpenAI CLIP, hence us) at round-half-even(d / 2).

    They agree unless the margin d is odd with d % 4 == 3 (e.g. 55.5 -> 56 vs 55); then HF's window
    sits one pixel left of / above OpenAI's. rocket (427x640 -> 335x224, d = 111) is such a case at
    every size.
    """
    img = photo(source) if isinstance(source, str) else odd_crop(source)
    ours = preprocess_image(img, PreprocessConfig(image_size=size))
    hf = hf_pixels(img, size)
    uncropped = hf_pixels(img, size, do_center_crop=False)
    margins = [d - size for d in uncropped.shape[1:]]
    if any(d % 4 == 3 for d in margins):
        top, left = (d // 2 for d in margins)
        assert np.abs(hf - uncropped[:, top : top + size, left : left + size]).max() <= PARITY_TOL
        assert np.abs(ours - hf).max() > 10 * ONE_LEVEL  # a shifted window, not rounding noise
    else:
        assert np.abs(ours - hf).max() <= PARITY_TOL


def test_rocket_is_a_crop_offset_case() -> None:
    # Guards the test above against silently never exercising its first branch.
    width, height = photo("rocket").size
    assert (int(224 * width / height) - 224) % 4 == 3


STRIPS = [(7, 300), (300, 7), (20, 511), (511, 20), (1, 512), (512, 1), (80, 1411), (1411, 80)]


@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("shape", STRIPS)
def test_extreme_aspect_ratio_window_path_stays_close(shape: tuple[int, int], size: int) -> None:
    # Beyond 16:1 only the kept window is resampled (memory stays at S*S). Pillow receives the window
    # box as 32-bit floats, which can move a filter tap: we allow 2 uint8 levels (the worst seen over
    # 315 strips, filters and sizes; most cases are exact, the rest differ by 1 level in <1% pixels).
    # The retina strips (wider than 64) at S=64 downscale, and 1411x80 takes Pillow's vertical-first order.
    img = odd_crop(shape, "retina" if max(shape) > 512 else "astronaut")
    reference = torchvision_crop(hf_pixels(img, size, do_center_crop=False), size)
    ours = preprocess_image(img, PreprocessConfig(image_size=size))
    diff = np.abs(ours - reference)
    assert diff.max() <= 2 * ONE_LEVEL + PARITY_TOL
    assert diff.mean() <= 0.01 * ONE_LEVEL


def test_window_path_never_builds_the_full_resize(monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *args: Any, **kw: Any) -> Image.Image:
        requested.append(tuple(size))
        return resize(self, size, *args, **kw)

    monkeypatch.setattr(Image.Image, "resize", spy)
    strip = Image.new("RGB", (1, 50_000), "gray")  # full resize: 224 x 11.2M pixels, ~10 GB
    assert preprocess_image(strip, PreprocessConfig()).shape == (3, 224, 224)
    assert requested and max(w * h for w, h in requested) <= 224 * 224 * 2


def test_normalisation_constants() -> None:
    white = preprocess_image(Image.new("RGB", (1, 1), (255, 255, 255)), PreprocessConfig(image_size=4))
    expected = (np.float32(1) - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)
    assert np.array_equal(white[:, 0, 0], expected.astype(np.float32))
    assert np.all(white == white[:, :1, :1])


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize(("orientation", "to_stored"), [(3, Image.Transpose.ROTATE_180),
                                                         (6, Image.Transpose.ROTATE_90),
                                                         (8, Image.Transpose.ROTATE_270)])  # fmt: skip
def test_exif_orientation_is_applied(orientation: int, to_stored: Image.Transpose) -> None:
    upright = photo("chelsea").crop((0, 0, 240, 160))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: how to turn the stored pixels to display them
    data = encode(upright.transpose(to_stored), "JPEG", quality=95, exif=exif)
    decoded = decode_image(data)
    assert decoded.size == upright.size
    diff = np.abs(np.asarray(decoded, dtype=np.int16) - np.asarray(upright, dtype=np.int16))
    assert diff.mean() < 3  # JPEG noise only; a wrong rotation is off by tens of levels


def test_rgba_is_flattened_onto_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)  # transparent black
    rgba[0, 1] = (255, 0, 0, 128)  # half-transparent red
    rgba[1, 0] = (0, 0, 255, 255)  # opaque blue
    for fmt in ("PNG", "WEBP"):
        got = np.asarray(decode_image(encode(Image.fromarray(rgba), fmt, lossless=True)))
        assert got.tolist()[0][0] == [255, 255, 255]
        assert np.abs(got[0, 1].astype(int) - (255, 127, 127)).max() <= 1
        assert got.tolist()[1][0] == [0, 0, 255]


def test_palette_with_transparency_and_la() -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    for data in (encode(pal, "PNG", transparency=0), encode(pal, "GIF", transparency=0)):
        got = np.asarray(decode_image(data))
        assert got[0, 0].tolist() == [255, 255, 255] and got[1, 1].tolist() == [255, 0, 0]
    la = Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8))
    assert la.mode == "LA"
    got = np.asarray(decode_image(encode(la, "PNG")))
    assert got.tolist() == [[[255, 255, 255], [50, 50, 50]]]


def test_16bit_grayscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], np.uint16)  # 0, 1, 128, 255 in 8 bits
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert np.asarray(decode_image(data))[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0, 100, 255]], np.int32), [0, 100, 255]),  # 32-bit ints holding 8-bit data
        (np.array([[0, 257, 65535]], np.int32), [0, 1, 255]),  # ... holding 16-bit data
        (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),  # float in 0..1
        (np.array([[np.nan, 100.0, 300.0]], np.float32), [0, 100, 255]),  # float in 0..255, hostile
    ],
)
def test_32bit_tiff_modes(values: np.ndarray, expected: list[int]) -> None:
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode in ("I", "F")
    assert np.asarray(decode_image(data))[0, :, 0].tolist() == expected


@pytest.mark.parametrize(("cmyk", "rgb"), [((0, 0, 0, 0), (255, 255, 255)), ((0, 255, 255, 0), (255, 0, 0)),
                                           ((0, 0, 0, 255), (0, 0, 0))])  # fmt: skip
def test_cmyk_jpeg(cmyk: tuple[int, ...], rgb: tuple[int, ...]) -> None:
    data = encode(Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=95)
    got = np.asarray(decode_image(data)).reshape(-1, 3).mean(axis=0)
    assert np.abs(got - rgb).max() < 6


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "TIFF"])
def test_grayscale_and_bilevel(fmt: str) -> None:
    gray = Image.fromarray(skimage.data.camera()[:64, :80])
    got = decode_image(encode(gray, fmt))
    assert got.mode == "RGB" and got.size == (80, 64)
    arr = np.asarray(got)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    bilevel = decode_image(encode(gray.convert("1"), "PNG"))
    assert set(np.unique(np.asarray(bilevel))) <= {0, 255}


def test_animated_gif_gives_first_frame() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)] * 20
    frames = [Image.new("RGB", (8, 8), c) for c in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    assert Image.open(io.BytesIO(data)).n_frames == 60
    assert np.asarray(decode_image(data)).reshape(-1, 3).tolist() == [[255, 0, 0]] * 64


def test_mpo_camera_jpeg_counts_as_jpeg() -> None:
    first = photo("coffee").crop((0, 0, 64, 48))
    data = encode(
        first, "MPO", save_all=True, append_images=[first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    )
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert decode_image(data).size == (64, 48)


# ---------------------------------------------------------------- formats and rejections


def test_error_classes_carry_code_and_status() -> None:
    expected = [(UnsupportedImageFormat, "unsupported_format", 415), (ImageTooLarge, "image_too_large", 413)]
    for cls, code, status in [*expected, (InvalidImage, "invalid_image", 422)]:
        err = cls("boom")
        assert isinstance(err, ImageError) and isinstance(err, ValueError)
        assert (err.code, err.status, err.message, str(err)) == (code, status, "boom", "boom")


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "QOI"])
def test_readable_format_outside_allow_list_is_415(fmt: str) -> None:
    data = encode(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)
    with pytest.raises(UnsupportedImageFormat) as info:
        decode_image(data)
    assert info.value.status == 415 and fmt in info.value.message
    assert all(allowed in info.value.message for allowed in DEFAULT_FORMATS)


def test_custom_allow_list() -> None:
    data = encode(Image.new("RGB", (4, 4)), "JPEG")
    with pytest.raises(UnsupportedImageFormat, match="JPEG"):
        decode_image(data, allowed_formats={"PNG"})
    assert decode_image(encode(Image.new("RGB", (4, 4)), "PPM"), allowed_formats={"PPM"}).size == (4, 4)


def test_svg_is_415_and_text_is_422() -> None:
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    with pytest.raises(UnsupportedImageFormat, match="SVG"):
        decode_image(svg)
    with pytest.raises(InvalidImage):
        decode_image(b"just some text, definitely not an image\n" * 10)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), b"\xff\xd8\xff"],
    ids=["empty", "one-byte", "random", "jpeg-magic-only"],
)
def test_garbage_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage) as info:
        decode_image(data)
    assert info.value.status == 422


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_truncated_file_is_invalid(fmt: str) -> None:
    data = encode(photo("astronaut"), fmt)
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries a 1-byte-scanline body: never decodable."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body


@pytest.mark.parametrize(("side", "pixels"), [(30000, "900,000,000"), (8000, "64,000,000")])
def test_pixel_cap_is_checked_from_the_header(side: int, pixels: str) -> None:
    # 30000^2 trips Pillow's own DecompressionBombError inside Image.open; 8000^2 passes Pillow and
    # hits our cap. Either way: 413, quickly, and before any decode (decoding this body would fail
    # with InvalidImage instead, and allocating 2.7 GB would not take milliseconds).
    data = png_header_only(side, side)
    assert len(data) < 100
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data)
    assert time.perf_counter() - start < 0.5
    assert info.value.status == 413 and pixels in info.value.message
    assert f"{DEFAULT_MAX_PIXELS:,}" in info.value.message


def test_pillow_bomb_warning_as_error_is_still_413() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLarge, match="100,000,000") as info:
            decode_image(png_header_only(10000, 10000), max_pixels=150_000_000)
    assert f"the cap is {Image.MAX_IMAGE_PIXELS:,}" in info.value.message  # Pillow's, the lower one


def test_small_cap_boundary() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageTooLarge, match="10,000 pixels; the cap is 9,999"):
        decode_image(data, max_pixels=9_999)


# ---------------------------------------------------------------- outputs


def test_output_shape_dtype_contiguity_and_batch() -> None:
    cfg = PreprocessConfig()
    out = preprocess_bytes(encode(photo("chelsea"), "JPEG"), cfg)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32 and out.flags.c_contiguous
    images = [photo(name) for name in PHOTOS]
    batch = preprocess_batch(images, cfg)
    assert batch.shape == (len(images), 3, 224, 224) and batch.dtype == np.float32
    assert batch.flags.c_contiguous
    for row, img in zip(batch, images, strict=True):
        assert np.array_equal(row, preprocess_image(img, cfg))
    assert preprocess_batch([], cfg).shape == (0, 3, 224, 224)


@pytest.mark.parametrize("size", [(1, 1), (2000, 1), (1, 2000), (3, 5)])
def test_tiny_and_degenerate_images(size: tuple[int, int]) -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    start = time.perf_counter()
    out = preprocess_bytes(encode(img, "PNG"), PreprocessConfig())
    assert time.perf_counter() - start < 1.0  # no 448000x224 intermediate for a 2000x1 strip
    assert out.shape == (3, 224, 224) and np.isfinite(out).all()


def test_non_rgb_image_passed_directly() -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    white = preprocess_image(Image.new("RGB", (10, 10), "white"), PreprocessConfig(image_size=8))
    assert np.array_equal(preprocess_image(rgba, PreprocessConfig(image_size=8)), white)


def test_config_round_trip_and_validation() -> None:
    cfg = PreprocessConfig(image_size=336)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert PreprocessConfig.from_dict(d) == cfg and hash(PreprocessConfig.from_dict(d)) == hash(cfg)
    assert d["resize"] == "shortest_side" and d["crop"] == "center" and d["interpolation"] == "bicubic"
    assert d["mean"] == list(CLIP_MEAN) and d["std"] == list(CLIP_STD)
    assert PreprocessConfig.from_dict({"image_size": 224}) == PreprocessConfig()
    with pytest.raises(ValueError, match="crop"):
        PreprocessConfig.from_dict({**d, "crop": "none"})
    with pytest.raises(ValueError, match="resize_size"):
        PreprocessConfig.from_dict({**d, "resize_size": 256})
    for bad in ({"interpolation": "cubic"}, {"image_size": 0}, {"std": (1.0, 0.0, 1.0)}, {"mean": (0.5,)}):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)


# ---------------------------------------------------------------- property test

MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "I;16", "I", "F", "CMYK", "YCbCr")
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def random_image(rng: np.random.Generator, mode: str, width: int, height: int) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (height, width), dtype=np.int32))
    if mode == "F":
        arr = rng.normal(0, 100, (height, width)).astype(np.float32)
        arr.flat[0] = np.nan  # hostile floats must not leak into the output
        return Image.fromarray(arr)
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    return rgba.convert(mode)


def encode_somehow(img: Image.Image, fmt: str) -> bytes:
    # Not every format stores every mode; fall back to ones that store nearly all of them.
    for candidate in (fmt, "TIFF", "PNG"):
        try:
            return encode(img, candidate)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return encode(img.convert("RGB"), "PNG")


# Warnings become errors here: a Pillow warning about a damaged file must end as an ImageError too.
@pytest.mark.filterwarnings("error")
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 48),
    height=st.integers(1, 48),
    mode=st.sampled_from(MODES),
    fmt=st.sampled_from(FORMATS),
    seed=st.integers(0, 2**32 - 1),
    damage=st.sampled_from(["none", "truncate", "flip"]),
    image_size=st.sampled_from([1, 7, 32]),
)
def test_property_any_input_gives_array_or_image_error(
    width: int, height: int, mode: str, fmt: str, seed: int, damage: str, image_size: int
) -> None:
    rng = np.random.default_rng(seed)
    img = random_image(rng, mode, width, height)
    cfg = PreprocessConfig(image_size=image_size)
    outputs = [preprocess_image(img, cfg)]  # the direct path never raises for these modes
    data = bytearray(encode_somehow(img, fmt))
    if damage == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    elif damage == "flip":
        for pos in rng.integers(0, len(data), size=4):
            data[pos] ^= 0xFF
    try:
        outputs.append(preprocess_bytes(bytes(data), cfg))
    except ImageError as err:
        assert err.status in (413, 415, 422) and err.message
    for out in outputs:
        assert out.shape == (3, image_size, image_size) and out.dtype == np.float32
        assert out.flags.c_contiguous and np.isfinite(out).all()


def test_jpeg_draft_decodes_smaller_but_never_below_the_input_size() -> None:
    from model.bundle.preprocess import PreprocessConfig, decode_image, preprocess_bytes

    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((1000, 700))
    buf = io.BytesIO()
    smooth.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    assert decode_image(data).size == (1000, 700)
    # 1/2 scale: 500x350; 1/4 would be 250x175, below 224 on the short side, so it is not taken
    assert decode_image(data, draft_size=224).size == (500, 350)
    assert decode_image(data, draft_size=64).size == (125, 88)  # 1/8
    cfg = PreprocessConfig(image_size=224)
    full, fast = preprocess_bytes(data, cfg), preprocess_bytes(data, cfg, jpeg_draft=True)
    assert full.shape == fast.shape and np.abs(full - fast).mean() < 0.05
    png = io.BytesIO()
    smooth.save(png, format="PNG")
    assert np.array_equal(
        preprocess_bytes(png.getvalue(), cfg), preprocess_bytes(png.getvalue(), cfg, jpeg_draft=True)
    )


# ---------------------------------------------------------------- SigLIP's square resize

SIGLIP = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="square")


def siglip_pixels(img: Image.Image, size: int) -> np.ndarray:
    """transformers' SigLIP image processor, the PIL one (5.x names it SiglipImageProcessorPil)."""
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    proc = cls(size={"height": size, "width": size})
    return np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0])


@pytest.mark.parametrize("size", (64, 224))
@pytest.mark.parametrize("source", [*PHOTOS, (512, 100), (97, 511), (1, 300)])
def test_square_resize_matches_siglips_processor(source: Any, size: int) -> None:
    """The same Pillow bicubic resize to S x S and the same x / 255, (x - 0.5) / 0.5: expected identical,
    held to PARITY_TOL like CLIP's (a one-level pixel difference would be 1 / 255 / 0.5 ~ 0.0078)."""
    img = photo(source) if isinstance(source, str) else odd_crop(source)
    ours = preprocess_image(img, PreprocessConfig(image_size=size, **SIGLIP))  # type: ignore[arg-type]
    assert ours.shape == (3, size, size)
    assert np.abs(ours - siglip_pixels(img, size)).max() <= PARITY_TOL


def test_square_preprocessing_round_trips_and_refuses_a_mismatched_crop() -> None:
    cfg = PreprocessConfig(image_size=96, **SIGLIP)  # type: ignore[arg-type]
    d = cfg.to_dict()
    assert d["resize"] == "square" and d["crop"] == "none"
    assert PreprocessConfig.from_dict(d) == cfg
    assert PreprocessConfig.from_dict(PreprocessConfig(image_size=96).to_dict()).resize == "shortest_side"
    with pytest.raises(ValueError, match="crop"):
        PreprocessConfig.from_dict(d | {"crop": "center"})
    with pytest.raises(ValueError, match="resize"):
        PreprocessConfig.from_dict(d | {"resize": "longest_side"})
    with pytest.raises(ValueError, match="resize"):
        PreprocessConfig(resize="pad")
