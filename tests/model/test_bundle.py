from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.bundle.format import (
    CURRENT,
    BundleError,
    current_bundle,
    load_bundle,
    read_current,
    set_current,
    write_bundle,
)

MANIFEST = {
    "architecture": {"embed_dim": 4, "image_size": 8, "context_length": 77, "vocab_size": 10},
    "preprocessing": {},
    "logit_scale": 100.0,
    "tokenizer": {},
}


def _write(tmp: Path) -> None:
    for name in ("image_encoder.onnx", "text_encoder.onnx", "tokenizer.json"):
        (tmp / name).write_bytes(name.encode() * 10)


def test_write_load_publish(tmp_path: Path) -> None:
    b = write_bundle(tmp_path / "m", "v1", MANIFEST, _write)
    assert b.version == "v1" and b.name == "m"
    assert set(b.manifest["files"]) == {"image_encoder.onnx", "text_encoder.onnx", "tokenizer.json"}
    set_current(tmp_path / "m", "v1")
    assert read_current(tmp_path / "m") == "v1"
    assert current_bundle(tmp_path / "m").path == tmp_path / "m" / "v1"
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def boom(tmp: Path) -> None:
        _write(tmp)
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        write_bundle(tmp_path / "m", "v1", MANIFEST, boom)
    assert list((tmp_path / "m").iterdir()) == []


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    b = write_bundle(tmp_path / "m", "v1", MANIFEST, _write)
    (b.path / "text_encoder.onnx").write_bytes(b"X" * len((b.path / "text_encoder.onnx").read_bytes()))
    with pytest.raises(BundleError, match=r"text_encoder\.onnx does not match its sha256"):
        load_bundle(b.path)
    (b.path / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json is listed in the manifest but missing"):
        load_bundle(b.path, verify_hashes=False)


def test_bad_manifest_and_names(tmp_path: Path) -> None:
    b = write_bundle(tmp_path / "m", "v1", MANIFEST, _write)
    m = json.loads((b.path / "manifest.json").read_text())
    del m["logit_scale"]
    (b.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="lacks logit_scale"):
        load_bundle(b.path)
    (b.path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(b.path)
    with pytest.raises(BundleError, match="invalid version"):
        write_bundle(tmp_path / "m", "../escape", MANIFEST, _write)
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(tmp_path / "m", "v1", MANIFEST, _write)
    with pytest.raises(BundleError, match="not a bundle"):
        set_current(tmp_path / "m", "v2")
    with pytest.raises(BundleError, match="CURRENT is missing"):
        read_current(tmp_path / "other")


def test_current_is_replaced_not_rewritten(tmp_path: Path) -> None:
    write_bundle(tmp_path / "m", "v1", MANIFEST, _write)
    write_bundle(tmp_path / "m", "v2", MANIFEST, _write)
    set_current(tmp_path / "m", "v1")
    inode = (tmp_path / "m" / CURRENT).stat().st_ino
    set_current(tmp_path / "m", "v2")
    assert read_current(tmp_path / "m") == "v2"
    assert (tmp_path / "m" / CURRENT).stat().st_ino != inode  # a new file renamed over: atomic


def test_manifest_version_must_match_its_folder(tmp_path: Path) -> None:
    b = write_bundle(tmp_path / "m", "v1", MANIFEST, _write)
    b.path.rename(tmp_path / "m" / "v2")  # a copy renamed by hand is not the version it claims
    with pytest.raises(BundleError, match="says version 'v1', but the folder is 'v2'"):
        load_bundle(tmp_path / "m" / "v2")


def test_a_bundle_is_readable_by_other_users(tmp_path: Path) -> None:
    """A server in a container runs as another uid than the trainer: nothing may be owner-only."""
    from model.bundle.atomic import _UMASK
    from model.bundle.format import update_eval

    b = write_bundle(tmp_path / "m", "v1", MANIFEST, _write)
    set_current(tmp_path / "m", "v1")
    update_eval(b, {"summary": {}})
    for p in [b.path, tmp_path / "m" / CURRENT, *b.path.iterdir()]:
        want = (0o777 if p.is_dir() else 0o666) & ~_UMASK
        assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode))


def test_scoring_bias_reads_the_manifest_and_refuses_an_unknown_kind() -> None:
    from model.bundle.format import BundleError, scoring_bias

    assert scoring_bias({}) is None  # manifests from before `scoring` are CLIP's softmax
    assert scoring_bias({"scoring": {"kind": "softmax"}}) is None
    assert scoring_bias({"scoring": {"kind": "sigmoid", "logit_bias": -12.5}}) == -12.5
    with pytest.raises(BundleError, match="'hinge'"):
        scoring_bias({"scoring": {"kind": "hinge"}})
    for bad in (float("nan"), float("inf"), "-4", True):  # json reads NaN and Infinity; float() takes "-4"
        with pytest.raises(BundleError, match="not a finite number"):
            scoring_bias({"scoring": {"kind": "sigmoid", "logit_bias": bad}})


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0, -1.0, "100", True])
def test_a_logit_scale_that_is_not_a_finite_positive_number_is_refused(tmp_path: Path, scale: object) -> None:
    b = write_bundle(tmp_path / "m", "v1", MANIFEST, _write)
    m = json.loads((b.path / "manifest.json").read_text())
    (b.path / "manifest.json").write_text(json.dumps(m | {"logit_scale": scale}))
    with pytest.raises(BundleError, match=r"logit_scale .* is not a finite positive number"):
        load_bundle(b.path, verify_hashes=False)
