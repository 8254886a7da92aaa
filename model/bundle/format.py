"""Model bundles: the one contract between training and serving (docs/architecture.md).

A bundle is a folder ``models/<name>/<version>/`` holding two ONNX encoders, the tokenizer and a
manifest; ``models/<name>/CURRENT`` names the version to serve. Bundles are written to a temporary
folder and renamed into place, and CURRENT is replaced atomically, so a crash never leaves half a
model where a server can see it. Torch-free: the server imports this module.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.bundle.atomic import atomic_write_text, fsync_dir, readable

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_ENCODER = "image_encoder.onnx"
TEXT_ENCODER = "text_encoder.onnx"
IMAGE_ENCODER_INT8 = "image_encoder.int8.onnx"  # optional: `zeroshot export --int8`
IMAGE_ENCODER_FP16 = "image_encoder.fp16.onnx"  # optional, with TEXT_ENCODER_FP16: `export --fp16`
TEXT_ENCODER_FP16 = "text_encoder.fp16.onnx"
TOKENIZER = "tokenizer.json"
EVAL = "eval.json"  # beside the hashed files: `zeroshot eval` may rewrite it
CURRENT = "CURRENT"
TMP_PREFIX = ".tmp-"  # bundles being written: never a version (versions start with a letter or digit)
REQUIRED_FILES = (IMAGE_ENCODER, TEXT_ENCODER, TOKENIZER)
REQUIRED_KEYS = (
    "format_version",
    "name",
    "version",
    "architecture",
    "preprocessing",
    "logit_scale",
    "tokenizer",
    "files",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BundleError(Exception):
    """A bundle that cannot be served; the message names the file and what is wrong with it."""


def check_name(kind: str, value: str) -> str:
    """Names and versions become folder names: refuse anything that could escape the models folder."""
    if not _NAME_RE.match(value) or value in (".", ".."):
        raise BundleError(f"invalid {kind} {value!r}: use letters, digits, '.', '_' and '-' (max 128)")
    return value


def new_version() -> str:
    """A sortable, unique-enough version string: UTC time to the second."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _finite_number(value: object) -> bool:
    """A JSON number that is finite (json reads NaN and Infinity; a bool is an int to Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def scoring_bias(manifest: Mapping[str, Any]) -> float | None:
    """The logit bias of a sigmoid-scored model (SigLIP), None for softmax (CLIP; manifests before the
    `scoring` entry). Refuses a kind this code does not score, rather than scoring it as softmax."""
    scoring = manifest.get("scoring") or {"kind": "softmax"}
    kind = scoring.get("kind")
    if kind == "softmax":
        return None
    if kind == "sigmoid":
        bias = scoring["logit_bias"]
        # float() would take NaN, "inf" or true: loaded fine, then mode=multi answers 500 (NaN is not
        # JSON) or a probability of 1.0 for every label.
        if not _finite_number(bias):
            raise BundleError(f"manifest scoring logit_bias {bias!r} is not a finite number")
        return float(bias)
    raise BundleError(f"manifest scoring kind {kind!r} is not one this server implements (softmax, sigmoid)")


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def sha(self) -> str:
        """One hash for the whole bundle: the hash of the manifest, which holds every file's hash."""
        return hashlib.sha256((self.path / MANIFEST).read_bytes()).hexdigest()

    @property
    def architecture(self) -> dict[str, Any]:
        return dict(self.manifest["architecture"])

    @property
    def logit_scale(self) -> float:
        return float(self.manifest["logit_scale"])

    @property
    def logit_bias(self) -> float | None:
        return scoring_bias(self.manifest)

    def file(self, name: str) -> Path:
        return self.path / name

    def eval_results(self) -> dict[str, Any] | None:
        p = self.path / EVAL
        if not p.exists():
            return None
        try:
            return dict(json.loads(p.read_text()))
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s: %s", p, e)
            return None


def read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"bundle folder {path} does not exist")
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise BundleError(f"{mpath} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{mpath} lacks {', '.join(missing)}")
    if manifest["version"] != path.name:
        raise BundleError(f"{mpath} says version {manifest['version']!r}, but the folder is {path.name!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(f"{mpath}: format_version {manifest['format_version']!r} is not {FORMAT_VERSION}")
    scale = manifest["logit_scale"]
    if not _finite_number(scale) or scale <= 0:  # else every classify answers 500 (NaN) or nonsense
        raise BundleError(f"{mpath}: logit_scale {scale!r} is not a finite positive number")
    try:
        scoring_bias(manifest)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise BundleError(
            f"{mpath}: scoring {manifest.get('scoring')!r} is not a valid scoring entry"
        ) from None
    return manifest


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle: manifest keys, every required file present, every hash matching."""
    path = Path(path)
    manifest = read_manifest(path)
    files = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"{path / MANIFEST} does not list {name}")
    for name, meta in files.items():
        fpath = path / name
        if not fpath.is_file():
            raise BundleError(f"{fpath} is listed in the manifest but missing")
        if fpath.stat().st_size != meta.get("bytes", fpath.stat().st_size):
            raise BundleError(f"{fpath} has {fpath.stat().st_size} bytes, manifest says {meta['bytes']}")
        if verify_hashes and sha256_file(fpath) != meta["sha256"]:
            raise BundleError(f"{fpath} does not match its sha256 in the manifest (corrupt or altered)")
    return Bundle(path, manifest)


def read_current(model_dir: str | Path) -> str:
    """The version named by models/<name>/CURRENT."""
    p = Path(model_dir) / CURRENT
    try:
        version = p.read_text().strip()
    except FileNotFoundError:
        raise BundleError(f"{p} is missing: no version of this model has been published") from None
    return check_name("version", version)


def current_bundle(model_dir: str | Path, verify_hashes: bool = True) -> Bundle:
    model_dir = Path(model_dir)
    return load_bundle(model_dir / read_current(model_dir), verify_hashes)


def set_current(model_dir: str | Path, version: str) -> None:
    """Point CURRENT at a version atomically (model/bundle/atomic.py)."""
    model_dir = Path(model_dir)
    check_name("version", version)
    if not (model_dir / version / MANIFEST).is_file():
        raise BundleError(f"cannot publish {model_dir / version}: it is not a bundle")
    atomic_write_text(model_dir / CURRENT, version + "\n")
    log.info("published %s as CURRENT of %s", version, model_dir)


def _locked_tmpdir(model_dir: Path, version: str) -> tuple[Path, int]:
    """A new temporary folder beside the target, with an exclusive flock held on it (the returned fd).

    The kernel drops the lock when the writer exits however it exits (SIGKILL included), so a folder
    whose lock can be taken was abandoned; remove_abandoned() relies on that."""
    while True:
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version}-", dir=model_dir))
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # removed as abandoned in the instant before we could lock it: make another
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return tmp, fd
        except FileNotFoundError:
            pass
        os.close(fd)  # same race, caught after the lock: make another


def remove_abandoned(model_dir: str | Path) -> list[Path]:
    """Remove temporary folders left by writers that died (killed exports), never a live writer's.

    A killed export cannot clean up after itself, and each leftover holds a whole bundle's worth of
    disk. Servers never see these folders (they read only CURRENT and the version it names)."""
    removed = []
    for p in sorted(Path(model_dir).glob(f"{TMP_PREFIX}*")):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # gone already, or not a folder
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a writer is still working in it
        try:
            shutil.rmtree(p, ignore_errors=True)
        finally:
            os.close(fd)
        log.warning("removed %s, left behind by a bundle export that did not finish", p)
        removed.append(p)
    return removed


def write_bundle(
    model_dir: str | Path,
    version: str,
    manifest: Mapping[str, Any],
    write_files: Callable[[Path], Mapping[str, Any] | None],
) -> Bundle:
    """Write a bundle atomically.

    ``write_files(tmpdir)`` writes the ONNX files and tokenizer (and any extras) into a temporary
    folder beside the target and may return more manifest entries (parity figures, say); this
    function hashes the files, adds the manifest and renames the folder into place. Nothing is
    visible at ``model_dir/version`` until it is complete, and an exception leaves nothing behind;
    what a killed writer leaves is removed by the next write_bundle in the same folder.
    """
    model_dir = Path(model_dir)
    check_name("model name", model_dir.name)
    check_name("version", version)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / version
    if target.exists():
        raise BundleError(f"{target} already exists; choose another version")
    remove_abandoned(model_dir)
    tmp, lock = _locked_tmpdir(model_dir, version)
    try:
        readable(tmp, folder=True)
        extra = write_files(tmp) or {}
        files = {}
        for f in sorted(tmp.iterdir()):
            if f.is_file() and f.name != MANIFEST:
                files[f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        full = {
            "format_version": FORMAT_VERSION,
            "name": model_dir.name,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **manifest,
            **extra,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            readable(f)
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        os.rename(tmp, target)
        fsync_dir(model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    log.info("wrote bundle %s", target)
    return load_bundle(target)


def update_eval(bundle: Bundle, results: Mapping[str, Any]) -> None:
    """Write eval.json beside a bundle (not part of the hashed files: it may be refreshed later)."""
    atomic_write_text(bundle.path / EVAL, json.dumps(results, indent=2, sort_keys=True) + "\n")
