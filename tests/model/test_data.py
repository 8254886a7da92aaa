"""Training data sources (model.data): synthetic, CSV/TSV, image folders and webdataset shards.

Every source is fed broken files (truncated JPEG, text renamed .jpg, empty file, missing path) that
must be skipped and counted, never crash; items must be a function of (seed, index) only."""

from __future__ import annotations

import io
import logging
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from model.bundle.preprocess import PreprocessConfig, preprocess_bytes, preprocess_image
from model.bundle.prompts import fill, get_templates
from model.bundle.tokenizer import ClipTokenizer
from model.data import DataError, WebDatasetPairs, collate_pairs, open_source
from model.data.synthetic import SyntheticShapes

SIZE = 32


def jpeg(seed: int, fmt: str = "JPEG") -> bytes:
    """A small noisy image: noise keeps the file large enough that cutting it is a real truncation."""
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


BROKEN = {
    "truncated": jpeg(99)[:700],
    "text": b"this is a caption, not a JPEG\n",
    "empty": b"",
}


def pixels_of(data: bytes) -> np.ndarray:
    return preprocess_bytes(data, PreprocessConfig(image_size=SIZE))


def items(source: Any, n: int | None = None) -> list[tuple[np.ndarray, str, int, int | None]]:
    if isinstance(source, IterableDataset):
        it = iter(source)
        return [next(it) for _ in range(n or 0)]
    return [source[i] for i in range(n if n is not None else len(source))]


def captions(triples: list[tuple[np.ndarray, str, int, int | None]]) -> list[str]:
    return [c for _, c, _, _ in triples]


# -- synthetic --------------------------------------------------------------------------------------


def test_synthetic_wraps_the_shapes_generator() -> None:
    src = open_source("synthetic", None, SIZE, seed=3)
    assert isinstance(src, Dataset) and not isinstance(src, IterableDataset)
    assert len(src) == 1 << 30
    shapes = SyntheticShapes(image_size=SIZE, seed=3, split="train", length=1 << 30)
    for i in (0, 7, 123_456):
        pixels, caption, skipped, class_id = src[i]
        assert caption == shapes[i].caption and skipped == 0 and class_id is not None
        np.testing.assert_array_equal(pixels, preprocess_image(shapes[i].image, PreprocessConfig(SIZE)))
        assert pixels.dtype == np.float32 and pixels.shape == (3, SIZE, SIZE)
    other = open_source("synthetic", None, SIZE, seed=4)
    assert [src[i][1] for i in range(5)] != [other[i][1] for i in range(5)]


# -- CSV / TSV --------------------------------------------------------------------------------------


def make_csv_dataset(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """data/train.csv with relative, absolute, missing and broken image paths."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    good = {f"g{i}": jpeg(i) for i in range(3)}
    for name, data in good.items():
        (root / "img" / f"{name}.jpg").write_bytes(data)
    for name, data in BROKEN.items():
        (root / "img" / f"{name}.jpg").write_bytes(data)
    absolute = (root / "img" / "g2.jpg").resolve()
    rows = [
        ("img/g0.jpg", "zero, with a comma"),
        ("img/missing.jpg", "missing"),
        ("img/g1.jpg", "one"),
        ("img/text.jpg", "text"),
        ("img/truncated.jpg", "truncated"),
        (str(absolute), "two"),
        ("img/empty.jpg", "empty"),
    ]
    lines = ["filepath,caption"] + [f'{p},"{c}"' for p, c in rows]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv", good


def test_csv_skips_and_counts_broken_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, good = make_csv_dataset(tmp_path)
    src = open_source("csv", str(path), SIZE, seed=0)
    assert len(src) == 7  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="model.data"):
        got = items(src)
    assert captions(got) == ["zero, with a comma", "one", "one", "two", "two", "two", "zero, with a comma"]
    # item i -> first readable at i, i+1, ... (wrapping), skipped = how many were passed over
    assert [s for _, _, s, _ in got] == [0, 1, 0, 2, 1, 0, 1]
    np.testing.assert_array_equal(got[1][0], pixels_of(good["g1"]))  # relative to the CSV's folder
    np.testing.assert_array_equal(got[5][0], pixels_of(good["g2"]))  # absolute path
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for name, reason in [
        ("missing.jpg", "No such file"),
        ("text.jpg", "not a recognised image"),
        ("truncated.jpg", "truncated"),
        ("empty.jpg", "empty"),
    ]:
        assert name in warned and reason in warned, (name, warned)
    # no call-order state: an item read alone equals the same item read in sequence
    fresh = open_source("csv", str(path), SIZE, seed=0)
    assert fresh[3][1:] == got[3][1:] and np.array_equal(fresh[3][0], got[3][0])


def test_tsv_custom_columns_and_separator(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(jpeg(1, "PNG"))
    (tmp_path / "b.jpg").write_bytes(jpeg(2))
    (tmp_path / "pairs.tsv").write_text(
        'text\timage\tx\na red, round thing\ta.png\t1\n"quoted" b\tb.jpg\t2\n'
    )
    src = open_source(
        "csv", str(tmp_path / "pairs.tsv"), SIZE, 0, {"image_key": "image", "caption_key": "text"}
    )
    assert captions(items(src)) == ["a red, round thing", "quoted b"]  # tab from the extension
    (tmp_path / "semi.csv").write_text("filepath;caption\na.png;one;\n")
    src = open_source("csv", str(tmp_path / "semi.csv"), SIZE, 0, {"separator": ";"})
    assert captions(items(src)) == ["one"]
    np.testing.assert_array_equal(src[0][0], pixels_of(jpeg(1, "PNG")))


def test_csv_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "cols.csv").write_text("path,text\nx.jpg,y\n")
    with pytest.raises(DataError, match=r"no column 'filepath', 'caption'; its columns are 'path', 'text'"):
        open_source("csv", str(tmp_path / "cols.csv"), SIZE, 0)
    with pytest.raises(DataError, match="no column 'caption'"):
        open_source("csv", str(tmp_path / "cols.csv"), SIZE, 0, {"image_key": "path"})
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty: no header row"):
        open_source("csv", str(tmp_path / "empty.csv"), SIZE, 0)
    (tmp_path / "header.csv").write_text("filepath,caption\n")
    with pytest.raises(DataError, match="no rows"):
        open_source("csv", str(tmp_path / "header.csv"), SIZE, 0)
    with pytest.raises(DataError, match="does not exist"):
        open_source("csv", str(tmp_path / "nope.csv"), SIZE, 0)
    (tmp_path / "bad.csv").write_text("filepath,caption\nimg.jpg,x\n")  # every row unreadable
    with pytest.raises(DataError, match="1 consecutive items from index 0 are unreadable"):
        open_source("csv", str(tmp_path / "bad.csv"), SIZE, 0)[0]


# -- image folder -----------------------------------------------------------------------------------


def make_folder(root: Path) -> None:
    for cls, seeds in (("red_circle", (1, 2, 3)), ("blue_square", (4, 5))):
        (root / cls).mkdir(parents=True)
        for s in seeds:
            (root / cls / f"{s}.jpg").write_bytes(jpeg(s))
    (root / "blue_square" / "notes.txt").write_text("not an image, ignored by extension")
    (root / "blue_square" / "zz_broken.jpg").write_bytes(BROKEN["text"])
    (root / ".cache").mkdir()  # hidden: not a class


def test_folder_classes_templates_and_broken_files(tmp_path: Path) -> None:
    make_folder(tmp_path / "f")
    src = open_source("folder", str(tmp_path / "f"), SIZE, seed=0, options={"templates": "imagenet7"})
    assert src.classes == ["blue square", "red circle"]  # type: ignore[union-attr]
    assert len(src) == 6 and src.targets == [0, 0, 0, 1, 1, 1]  # type: ignore[union-attr, arg-type]
    got = items(src)
    assert [s for _, _, s, _ in got] == [0, 0, 1, 0, 0, 0]  # zz_broken.jpg -> the next image, counted
    templates = get_templates("imagenet7")
    for (_, caption, _, class_id), cls in zip(got, ["blue square"] * 2 + ["red circle"] * 4, strict=True):
        assert caption in fill(templates, cls) and src.classes[class_id] == cls  # type: ignore[union-attr]
    assert len(set(captions(got))) > 2  # the template varies with the index
    np.testing.assert_array_equal(got[2][0], pixels_of(jpeg(1)))  # red_circle/1.jpg stands in
    assert captions(
        items(open_source("folder", str(tmp_path / "f"), SIZE, 0, {"templates": "imagenet7"}))
    ) == (captions(got))
    other = open_source("folder", str(tmp_path / "f"), SIZE, 1, {"templates": "imagenet7"})
    assert captions(items(other)) != captions(got)
    (tmp_path / "t.txt").write_text("# mine\na drawing of {}\n\nthe {}, in pixels\n")
    own = open_source("folder", str(tmp_path / "f"), SIZE, 0, {"templates": str(tmp_path / "t.txt")})
    assert set(captions(items(own))) <= {"a drawing of blue square", "the blue square, in pixels",
                                          "a drawing of red circle", "the red circle, in pixels"}  # fmt: skip


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_source("folder", str(tmp_path / "nope"), SIZE, 0)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(jpeg(1))
    with pytest.raises(DataError, match="no class sub-folders"):
        open_source("folder", str(tmp_path / "flat"), SIZE, 0)
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="1 class folders but no images"):
        open_source("folder", str(tmp_path / "hollow"), SIZE, 0)
    make_folder(tmp_path / "f")
    with pytest.raises(DataError, match=r"templates option: .*klingon"):
        open_source("folder", str(tmp_path / "f"), SIZE, 0, {"templates": "klingon"})
    with pytest.raises(DataError, match=re.escape('exactly one "{}"')):
        open_source("folder", str(tmp_path / "f"), SIZE, 0, {"templates": ["no placeholder"]})


# -- shared: workers, collate, factory errors -------------------------------------------------------


def test_worker_count_does_not_change_items(tmp_path: Path) -> None:
    path, _ = make_csv_dataset(tmp_path)
    src = open_source("csv", str(path), SIZE, seed=0)
    tok = ClipTokenizer.clip_bpe()
    runs = [list(DataLoader(src, batch_size=3, num_workers=w, collate_fn=collate_pairs(tok))) for w in (0, 2)]
    for (p0, i0, s0, _), (p1, i1, s1, _) in zip(*runs, strict=True):
        assert s0 == s1 and np.array_equal(p0.numpy(), p1.numpy()) and np.array_equal(i0.numpy(), i1.numpy())
    assert [s for _, _, s, _ in runs[0]] == [1, 3, 1]  # per-batch sums of [0, 1, 0 | 2, 1, 0 | 1]


def test_collate_pads_ids_to_a_multiple_of_8() -> None:
    tok = ClipTokenizer.clip_bpe()
    pix = np.zeros((3, SIZE, SIZE), np.float32)
    batch = [(pix, "a red circle", 0, None), (pix, "a small blue square on the left by a gray wall", 2, None)]
    pixels, ids, skipped, class_ids = collate_pairs(tok)(batch)
    plain = tok.encode_batch([b[1] for b in batch])
    assert pixels.shape == (2, 3, SIZE, SIZE) and skipped == 2 and class_ids is None
    assert ids.shape[1] % 8 == 0 and ids.shape[1] >= plain.shape[1] > ids.shape[1] - 8
    np.testing.assert_array_equal(ids.numpy()[:, : plain.shape[1]], plain)
    assert not ids.numpy()[:, plain.shape[1] :].any()
    long = [(pix, "word " * 200, 0, None)]  # truncated to 77: never padded past the context length
    assert collate_pairs(tok)(long)[1].shape == (1, 77)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("parquet", "x", SIZE, 0),
            "unknown data source 'parquet'; known sources: csv, folder, synthetic, webdataset",
        ),
        (("csv", None, SIZE, 0), "csv data needs a path"),
        (("webdataset", "", SIZE, 0), "webdataset data needs a path"),
        (("synthetic", "some/path", SIZE, 0), "takes no path"),
        (("synthetic", None, SIZE, -1), "seed must be an int >= 0"),
        (("synthetic", None, 8, 0), "image_size must be an int >= 16"),
        (("synthetic", None, SIZE, 0, {"templates": "x"}), "unknown option(s) for synthetic data: templates"),
        (("csv", "x.csv", SIZE, 0, {"sep": ","}), "allowed: caption_key, image_key, separator"),
        (("csv", "x.csv", SIZE, 0, {"image_key": 3}), "option image_key of csv data has the wrong type"),
        (("webdataset", "x.tar", SIZE, 0, {"shuffle_buffer": True}), "option shuffle_buffer"),
    ],
)
def test_factory_errors(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(DataError) as e:
        open_source(*args)
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


# -- webdataset -------------------------------------------------------------------------------------


def write_shard(path: Path, samples: list[dict[str, bytes]]) -> None:
    """A tar as img2dataset writes it: the files of a sample share a 9-digit key, one after another."""
    with tarfile.open(path, "w") as tf:
        for sample in samples:
            for name, data in sample.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def good_sample(key: str, caption: str, seed: int) -> dict[str, bytes]:
    return {f"{key}.jpg": jpeg(seed), f"{key}.txt": caption.encode(), f"{key}.json": b'{"status": "success"}'}


def make_shards(root: Path, shards: int, per_shard: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for s in range(shards):
        samples = [good_sample(f"{s:05d}{i:04d}", f"s{s} i{i}", 100 * s + i) for i in range(per_shard)]
        write_shard(root / f"{s:05d}.tar", samples)
        names.extend(f"s{s} i{i}" for i in range(per_shard))
    return names


def test_webdataset_skips_and_counts_broken_samples(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    samples = [
        good_sample("000000000", "g0", 0),
        {"000000001.jpg": BROKEN["truncated"], "000000001.txt": b"truncated"},
        good_sample("000000002", "g1", 1),
        {"000000003.jpg": BROKEN["text"], "000000003.txt": b"text as jpg"},
        good_sample("000000004", "g2", 2),
        {"000000005.jpg": b"", "000000005.txt": b"empty image"},
        good_sample("000000006", "g3", 3),
        {"000000007.jpg": jpeg(7)},  # no caption
        {"000000008.png": jpeg(8, "PNG"), "000000008.txt": b"g4 png"},
        {"000000009.txt": b"no image"},
    ]
    write_shard(tmp_path / "00000.tar", samples)
    src = open_source("webdataset", str(tmp_path / "00000.tar"), SIZE, 0, {"shuffle_buffer": 0})
    assert isinstance(src, IterableDataset) and src.epoch_size(0) == 10
    with caplog.at_level(logging.WARNING, logger="model.data"):
        got = items(src, 12)
    assert captions(got) == ["g0", "g1", "g1", "g2", "g2", "g3", "g3", "g4 png", "g4 png", "g0", "g0", "g1"]
    assert [s for _, _, s, _ in got] == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]  # the last wraps into epoch 1
    np.testing.assert_array_equal(got[7][0], pixels_of(jpeg(8, "PNG")))
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for key, reason in [("1", "truncated"), ("3", "not a recognised image"), ("5", "is empty"),
                        ("7", "no .txt caption"), ("9", "no image")]:  # fmt: skip
        assert f"sample 00000000{key} in {tmp_path / '00000.tar'}: " in warned and reason in warned, reason


def test_webdataset_damaged_and_empty_shards(tmp_path: Path) -> None:
    make_shards(tmp_path, 2, 4)
    whole = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(whole[: len(whole) // 2])  # cut in the middle of a sample
    (tmp_path / "00002.tar").write_bytes(b"")
    src = open_source("webdataset", str(tmp_path), SIZE, 0, {"shuffle_buffer": 0})
    n = src.epoch_size(0)  # type: ignore[union-attr]
    assert n == 7  # shard 1: two samples before the cut and the one cut short; shard 2: none
    got = items(src, n)
    assert set(captions(got)) == {f"s0 i{i}" for i in range(4)} | {"s1 i0", "s1 i1"}
    assert sum(s for _, _, s, _ in got) == 1  # the sample cut short (its .txt is gone) is passed over
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "00000.tar").write_bytes(b"")
    with pytest.raises(DataError, match="none of its 1 shard"):
        open_source("webdataset", str(tmp_path / "e"), SIZE, 0)


def test_webdataset_paths(tmp_path: Path) -> None:
    names = make_shards(tmp_path / "shards", 3, 2)
    brace = str(tmp_path / "shards" / "{00000..00002}.tar")
    for spec in (brace, str(tmp_path / "shards")):
        src = open_source("webdataset", spec, SIZE, 0)
        assert sorted(captions(items(src, 6))) == sorted(names)
    one = open_source("webdataset", str(tmp_path / "shards" / "00001.tar"), SIZE, 0)
    assert sorted(captions(items(one, 2))) == ["s1 i0", "s1 i1"]
    for spec, message in [
        (str(tmp_path / "nope" / "{00000..00003}.tar"), "none of its 4 shard(s) exists"),
        (str(tmp_path / "shards" / "x.tar.gz"), "compressed shards are not supported"),
        ("https://example.com/{00000..00001}.tar", "only local .tar files"),
        (str(tmp_path), "holds no .tar shards"),
    ]:
        with pytest.raises(DataError) as e:
            open_source("webdataset", spec, SIZE, 0)
        assert message in str(e.value)
    src = open_source("webdataset", str(tmp_path / "shards" / "{00000..00004}.tar"), SIZE, 0)
    assert len(src.shards) == 3  # type: ignore[union-attr]  # missing ones are dropped, with a warning


@pytest.mark.parametrize(("shards", "per_shard"), [(3, 4), (1, 7)])
def test_webdataset_ranks_are_disjoint_and_cover_the_epoch(
    tmp_path: Path, shards: int, per_shard: int
) -> None:
    names = make_shards(tmp_path, shards, per_shard)  # 1 shard < 2 ranks: split by sample instead
    seen: list[str] = []
    for rank in (0, 1):
        src = WebDatasetPairs(str(tmp_path), SIZE, seed=5, shuffle_buffer=4)
        src.configure(rank, 2)
        n = src.epoch_size(0)
        assert n > 0
        seen += captions(items(src, n))
    assert sorted(seen) == sorted(names)  # disjoint (no duplicates) and complete


def test_webdataset_deterministic_reshuffled_and_worker_independent(tmp_path: Path) -> None:
    names = make_shards(tmp_path, 3, 5)

    def stream(seed: int, n: int = 30) -> list[str]:
        return captions(items(WebDatasetPairs(str(tmp_path), SIZE, seed, shuffle_buffer=8), n))

    a = stream(1)
    assert a == stream(1) and a != stream(2)
    assert sorted(a[:15]) == sorted(a[15:]) == sorted(names) and a[:15] != a[15:]  # epoch 1 reshuffled
    src = WebDatasetPairs(str(tmp_path), SIZE, 1, shuffle_buffer=8)
    loader = DataLoader(src, batch_size=None, num_workers=2)  # workers take positions in turn
    it = iter(loader)
    assert [next(it)[1] for _ in range(30)] == a
    blocks = WebDatasetPairs(str(tmp_path), SIZE, 1, shuffle_buffer=8, block_size=4)
    tok = ClipTokenizer.clip_bpe()
    it = iter(DataLoader(blocks, batch_size=4, num_workers=2, collate_fn=collate_pairs(tok)))
    got = [next(it) for _ in range(6)]  # batch k = positions [4k, 4k + 4), whatever the workers
    for k, (_, ids, _, _) in enumerate(got):
        np.testing.assert_array_equal(ids.numpy(), collate_pairs(tok)(items_for(a, 4 * k, 4))[1].numpy())


def items_for(names: list[str], start: int, n: int) -> list[tuple[np.ndarray, str, int, int | None]]:
    pix = np.zeros((3, SIZE, SIZE), np.float32)
    return [(pix, c, 0, None) for c in names[start : start + n]]


def test_webdataset_resume_skips_exactly(tmp_path: Path) -> None:
    make_shards(tmp_path, 3, 5)
    (tmp_path / "00003.tar").write_bytes(b"")  # an unreadable shard changes nothing about positions
    src = WebDatasetPairs(str(tmp_path), SIZE, 9, shuffle_buffer=6)
    src.configure(1, 2)
    full = captions(items(src, 40))
    for skip in (3, src.epoch_size(0), src.epoch_size(0) + src.epoch_size(1) + 2):
        resumed = WebDatasetPairs(str(tmp_path), SIZE, 9, shuffle_buffer=6)
        resumed.configure(1, 2, skip=skip)
        assert captions(items(resumed, 40 - skip)) == full[skip:], skip
    with pytest.raises(DataError, match="0 <= rank < world_size"):
        src.configure(2, 2)
