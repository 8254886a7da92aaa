"""Registered label sets: labels + templates stored as JSON, embeddings persisted beside them.

<label_sets_dir>/<name>.json                    the definition (labels, templates)
<label_sets_dir>/<name>.<sha16>.<digest16>.npy  its label matrix for one bundle (sha) and definition
<label_sets_dir>/.pending/<name>.json           a definition whose matrix is still being built
A restart, or another replica sharing the folder, loads the matrix instead of encoding it again. A
new definition is staged in .pending/ and takes the name's place only once its matrix is built
(`promote`), so nothing half-built is ever served and the previous definition serves meanwhile.
Files are replaced atomically (model/bundle/atomic.py), so a reader never sees half a file. The store
knows files only; which matrix a request gets (memory, disk or encoded) is app/runtime/labels.py's.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from app.runtime.errors import LabelSetError
from model.bundle.atomic import atomic_write
from model.bundle.label_sets import LabelSet, parse_label_set

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# A full disk, a quota or a file-size limit: the storage refuses the bytes (507), retrying won't help
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise LabelSetError(
            f"label set name {name[:80]!r} must be 1-64 letters, digits, '-' or '_', starting with a "
            "letter or digit",
            code="invalid_label_set_name",
        )
    return name


def _matrix_problem(m: np.ndarray, shape: tuple[int, int]) -> str | None:
    """What is wrong with a stored label matrix, or None. Its rows are L2-normalized by construction,
    so a row of another norm (or NaN) means damaged bytes even when the shape is right."""
    if m.shape != shape or m.dtype != np.float32:
        return f"holds {m.dtype} {m.shape}, expected float32 {shape}"
    norms = np.linalg.norm(m, axis=1)
    if not np.all(np.abs(norms - 1.0) <= 1e-3):  # `not <=` also catches NaN
        return "has rows that are not unit vectors (damaged data)"
    return None


class LabelSetStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._parsed: dict[str, tuple[tuple[int, int], LabelSet]] = {}

    def _file(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.json"

    def _matrices(self, name: str) -> Iterator[Path]:
        return self.root.glob(f"{name}.*.npy") if self.root.is_dir() else iter(())

    def _pending_file(self, name: str) -> Path:
        return self.root / ".pending" / f"{check_name(name)}.json"

    def _write(self, path: Path, ls: LabelSet) -> None:
        """Write a definition, or raise a LabelSetError naming why not (nothing changed then)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: f.write(json.dumps(ls.to_json(), indent=1).encode()))
        except OSError as e:  # the old definition (if any) stays, on disk and served
            if e.errno in NO_SPACE:
                raise LabelSetError(
                    f"no space left to store label set {ls.name!r} in {self.root}: {e.strerror}",
                    code="insufficient_storage",
                ) from None
            raise LabelSetError(
                f"cannot write {self.root}: {e.strerror}", code="label_sets_unwritable"
            ) from None

    @staticmethod
    def define(
        name: str, labels: list[str], templates: tuple[str, ...], template_set: str | None
    ) -> LabelSet:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return LabelSet(check_name(name), tuple(labels), templates, template_set, stamp)

    def put(
        self, name: str, labels: list[str], templates: tuple[str, ...], template_set: str | None
    ) -> LabelSet:
        """Store a definition in the name's place at once (its matrix is built on first use)."""
        ls = self.define(name, labels, templates, template_set)
        self._write(self._file(name), ls)
        self._drop_matrices_but(ls)
        return ls

    def stage(self, ls: LabelSet) -> None:
        """Store a definition beside the one served, until `promote` (a newer stage replaces it)."""
        self._write(self._pending_file(ls.name), ls)

    def pending(self, name: str) -> LabelSet | None:
        """The staged definition of a name, or None (also when its file is unreadable: logged)."""
        path = self._pending_file(name)
        try:
            return parse_label_set(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("staged label set %s is unreadable: %s: %s", path, type(e).__name__, e)
            return None

    def pending_sets(self) -> list[LabelSet]:
        folder = self.root / ".pending"
        names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        return [ls for ls in map(self.pending, filter(NAME.match, names)) if ls is not None]

    def promote(self, ls: LabelSet) -> bool:
        """Put the staged `ls` in its name's place (one rename), unless a newer definition was staged
        since (then that one's build promotes it) or it was deleted. True when promoted."""
        staged = self.pending(ls.name)
        if staged is None or staged.digest != ls.digest:
            return False
        try:
            os.replace(self._pending_file(ls.name), self._file(ls.name))
        except FileNotFoundError:  # deleted meanwhile
            return False
        self._parsed.pop(ls.name, None)
        self._drop_matrices_but(ls)
        return True

    def discard(self, ls: LabelSet) -> None:
        """Forget a staged definition (its build failed or was cancelled), unless a newer one replaced it."""
        staged = self.pending(ls.name)
        if staged is not None and staged.digest == ls.digest:
            self._pending_file(ls.name).unlink(missing_ok=True)

    def _drop_matrices_but(self, ls: LabelSet) -> None:
        for old in self._matrices(ls.name):  # matrices of an earlier definition of this name
            if not old.name.endswith(f".{ls.digest[:16]}.npy"):
                old.unlink(missing_ok=True)

    def get(self, name: str) -> LabelSet:
        """The set as stored now; parsed once per version of its file (replicas may change it)."""
        path = self._file(name)
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            cached = self._parsed.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            ls = parse_label_set(json.loads(path.read_text()))
            self._parsed[name] = (stamp, ls)
            return ls
        except FileNotFoundError:
            raise LabelSetError(f"no label set named {name!r}", code="label_set_not_found") from None
        except OSError as e:
            log.error("label set file %s is unreadable: %s", path, e)
            raise LabelSetError(
                f"label set {name!r} cannot be read: {e.strerror}", code="label_set_unreadable"
            ) from None
        # damaged on disk: not JSON, not UTF-8 (a ValueError), missing keys or of the wrong types
        except (ValueError, KeyError, TypeError) as e:
            log.error("label set file %s is damaged: %s: %s", path, type(e).__name__, e)
            raise LabelSetError(
                f"label set {name!r} cannot be read: its stored file is damaged; register it again (PUT)",
                code="label_set_unreadable",
            ) from None

    def list(self) -> list[LabelSet]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.glob("*.json")):
            try:
                out.append(self.get(p.stem))
            except LabelSetError:
                continue  # a stray or unreadable file: skip it here, report it when asked for by name
        return out

    def delete(self, name: str) -> None:
        """Delete the name's definition, the staged one too, and their matrices."""
        path, staged = self._file(name), self._pending_file(name)
        found = False
        for p in (staged, path):  # no exists() first: two DELETEs at once both saw the file
            try:
                p.unlink()
                found = True
            except FileNotFoundError:
                pass
        if not found:
            raise LabelSetError(f"no label set named {name!r}", code="label_set_not_found")
        self._parsed.pop(name, None)
        for m in self._matrices(name):
            m.unlink(missing_ok=True)

    def _matrix_file(self, ls: LabelSet, sha: str) -> Path:
        return self.root / f"{ls.name}.{sha[:16]}.{ls.digest[:16]}.npy"

    def load_matrix(self, ls: LabelSet, sha: str, dim: int) -> np.ndarray | None:
        """The set's stored matrix for the bundle `sha`, or None when there is none or it is damaged
        (then it is logged, and the caller encodes the set again)."""
        path = self._matrix_file(ls, sha)
        if not path.exists():
            return None
        try:  # np.load raises EOFError for an empty file, ValueError for a truncated or foreign one
            m = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            log.warning("%s is unreadable (%s: %s): encoding the set again", path, type(e).__name__, e)
            return None
        problem = _matrix_problem(m, (len(ls.labels), dim))
        if problem is not None:
            log.warning("%s %s: encoding the set again", path, problem)
            return None
        return m

    def save_matrix(self, ls: LabelSet, sha: str, m: np.ndarray) -> None:
        """Store the matrix for a restart or another replica; a failure only costs that (logged)."""
        path = self._matrix_file(ls, sha)
        try:
            atomic_write(path, lambda f: np.save(f, m, allow_pickle=False))
        except OSError as e:  # serve from memory; the next start encodes it again
            log.warning("cannot persist %s: %s", path, e)
