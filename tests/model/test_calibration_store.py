"""Calibration files: which fit applies, stale and damaged files, and no half file after a crash."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.bundle.calibration_store import (
    KEEP_FITS,
    CalibrationError,
    Fit,
    path_for,
    read_fits,
    resolve,
    write_fit,
)
from model.bundle.openset import Rule


def fit(sha: str = "a" * 64, digest: str = "d1", n: int = 2, **figures: object) -> Fit:
    return Fit(sha, {"name": "m", "version": sha[:4]}, digest, "2026-12-02T00:00:00+00:00", 0.8,
               (20.0,) * n, (0.0,) * n, Rule("cosine", 0.3, "calibration"), dict(figures))  # fmt: skip


def test_a_fit_round_trips_and_applies_only_to_its_bundle_and_definition(tmp_path: Path) -> None:
    path = path_for(tmp_path, "pets")
    write_fit(path, fit())
    got = read_fits(path)
    assert got == [fit()]
    assert resolve(got, "a" * 64, "d1", 2).status == "fitted"
    other_model = resolve(got, "b" * 64, "d1", 2)
    assert other_model.status == "stale" and other_model.fit is None and "another model" in other_model.reason
    changed = resolve(got, "a" * 64, "d2", 2)
    assert changed.status == "stale" and "changed" in changed.reason
    assert resolve([], "a" * 64, "d1", 2).status == "none"
    assert resolve(got, "a" * 64, "d1", 3).status == "stale"  # a fit for another label count is not used


def test_a_new_bundle_adds_its_fit_and_the_oldest_go(tmp_path: Path) -> None:
    path = path_for(tmp_path, "pets")
    for i in range(KEEP_FITS + 2):
        write_fit(path, fit(sha=str(i) * 64))
    shas = [f.sha[0] for f in read_fits(path)]
    assert shas == [str(i) for i in range(KEEP_FITS + 1, 1, -1)]
    write_fit(path, fit(sha="3" * 64, digest="d9"))  # refitting a bundle replaces its fit
    assert [f.labels_digest for f in read_fits(path) if f.sha[0] == "3"] == ["d9"]


@pytest.mark.parametrize(
    "text",
    ["{broken", json.dumps({"format": 99, "fits": []}), json.dumps({"format": 1, "fits": [{"sha": "x"}]}),
     json.dumps({"format": 1, "fits": [{**fit().to_json(), "temperature": -1}]}),
     json.dumps({"format": 1, "fits": [{**fit().to_json(), "rule": {"score": "vibes", "threshold": 1}}]})],
)  # fmt: skip
def test_a_damaged_file_is_an_error_that_says_so(tmp_path: Path, text: str) -> None:
    path = path_for(tmp_path, "pets")
    path.write_text(text)
    with pytest.raises(CalibrationError):
        read_fits(path)
    write_fit(path, fit())  # and a new fit replaces it
    assert read_fits(path) == [fit()]


WRITER = """
import sys
from pathlib import Path
from model.bundle.calibration_store import Fit, write_fit
from model.bundle.openset import Rule
path = Path(sys.argv[1])
i = 0
while True:  # big fits, so that a kill lands mid-write now and then
    n = 20000 + i % 7
    write_fit(path, Fit(str(i % 9) * 64, {"name": "m", "version": str(i)}, "d", "t", 1.0,
                        (1.0,) * n, (0.0,) * n, Rule("cosine", 0.5), {"i": i}))
    print(i, flush=True)
    i += 1
"""


def test_a_crash_mid_write_never_leaves_half_a_file(tmp_path: Path) -> None:
    path = path_for(tmp_path, "pets")
    for kill in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one whole write done
        time.sleep(0.05 * (kill + 1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fits = read_fits(path)  # raises on a half file
        assert fits and all(len(f.a) >= 20000 for f in fits)
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(n.endswith(".tmp") for n in leftovers)  # at most the killed write's temporary file
