"""bench/preprocess.py runs end to end on tiny arguments and writes the rows its README table shows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_preprocess_bench_writes_a_row_per_thread_count_and_draft_setting(tmp_path: Path) -> None:
    out = tmp_path / "preprocess.json"
    cmd = [sys.executable, "bench/preprocess.py", "--images", "4", "--seconds", "0.2", "--threads", "1,2"]
    done = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "serial" in done.stdout and "draft on" in done.stdout
    result = json.loads(out.read_text())
    assert result["images"] == 4 and result["image_size"] == 224
    keys = [(r["threads"], r["pool"], r["draft"]) for r in result["rows"]]
    rows = [(1, False), (1, True), (2, True)]  # (threads, pool): the serial row, then each pool
    assert keys == [(*row, draft) for draft in (False, True) for row in rows]
    for r in result["rows"]:
        assert r["images"] >= 4 and r["images"] % 4 == 0  # whole passes over the images
        assert r["seconds"] >= 0.2 and r["images_per_s"] > 0
        assert r["images_per_s_per_thread"] == r["images_per_s"] / r["threads"]
    serial = [r for r in result["rows"] if not r["pool"]]
    assert [r["speedup"] for r in serial] == [1.0, 1.0]
