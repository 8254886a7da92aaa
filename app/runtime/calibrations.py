"""The calibrations of the registered label sets, one file per set beside its definition.

The file format, and which fit applies to the bundle served, are model/bundle/calibration_store.py's;
this store reads each file once per version of it (replicas may rewrite it) and maps what goes wrong
to engine errors. A damaged file is reported (status "unreadable") and never used.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from app.runtime.errors import LabelSetError
from app.runtime.label_sets import NO_SPACE
from model.bundle.calibration_store import (
    Calibration,
    CalibrationError,
    Fit,
    path_for,
    read_fits,
    resolve,
    write_fit,
)
from model.bundle.label_sets import LabelSet

log = logging.getLogger(__name__)


class CalibrationStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._read: dict[str, tuple[tuple[int, int], list[Fit] | str]] = {}

    def _fits(self, name: str) -> list[Fit] | str:
        """The fits in the set's file, or what is wrong with it."""
        path = path_for(self.root, name)
        try:
            st = path.stat()
        except FileNotFoundError:
            return []
        except OSError as e:
            return f"cannot be read: {e.strerror}"
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._read.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        fits: list[Fit] | str
        try:
            fits = read_fits(path)
        except CalibrationError as e:
            log.error("calibration file %s is damaged: %s", path, e)
            fits = f"is damaged ({e}): calibrate the set again"
        with self._lock:
            self._read[name] = (stamp, fits)
        return fits

    def get(self, ls: LabelSet, sha: str) -> Calibration:
        """The set's calibration for the bundle `sha`: fitted (use it), stale, unreadable or none."""
        fits = self._fits(ls.name)
        if isinstance(fits, str):
            return Calibration("unreadable", reason=f"the calibration file {fits}")
        return resolve(fits, sha, ls.digest, len(ls.labels))

    def put(self, ls: LabelSet, fit: Fit) -> None:
        path = path_for(self.root, ls.name)
        try:
            write_fit(path, fit)
        except OSError as e:  # the previous file (if any) is whole: atomic_write
            code = "insufficient_storage" if e.errno in NO_SPACE else "label_sets_unwritable"
            raise LabelSetError(
                f"cannot store the calibration of {ls.name!r}: {e.strerror}", code=code
            ) from None

    def delete(self, name: str) -> None:
        path_for(self.root, name).unlink(missing_ok=True)
        with self._lock:
            self._read.pop(name, None)
