"""bench/siglip.py --quick builds, exports and times both tiny models and writes figures, ratios and
its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ["image_b1", "image_b8", "text_dynamic", "text_full"]


@pytest.mark.slow
def test_the_quick_siglip_bench_times_both_models_and_writes_their_ratios(tmp_path: Path) -> None:
    out = tmp_path / "siglip.json"
    cmd = [sys.executable, "bench/siglip.py", "--quick", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["rounds"] == 1 and result["machine"]["nproc"] >= 1
    models = result["models"]
    assert sorted(models) == ["clip", "siglip"]
    for name, m in models.items():
        assert sorted(m["figures"]) == FIGURES, m["figures"]
        for f in FIGURES:
            assert len(m["figures"][f]["rounds"]) == 1 and m["figures"][f]["per_s"] > 0, (name, f)
        assert m["parameters"]["image"] > 0 and m["parameters"]["text"] > 0, m["parameters"]
        assert all(v > 0 for v in m["gflops"].values()) and len(m["gflops"]) == 3, m["gflops"]
    # CLIP pads to the longest prompt or to 77; SigLIP always to its own context (16 in the tiny config)
    clip_tokens, siglip_tokens = models["clip"]["text_tokens"], models["siglip"]["text_tokens"]
    assert 3 <= clip_tokens["text_dynamic"] < clip_tokens["text_full"] == 77, clip_tokens
    assert siglip_tokens["text_full"] == models["siglip"]["config"]["text"]["context_length"] == 16
    assert siglip_tokens["text_dynamic"] == clip_tokens["text_dynamic"]
    assert models["clip"]["gflops"]["text_dynamic"] < models["clip"]["gflops"]["text_full"]
    served = result["ratios"][
        "siglip text_full / clip text_dynamic"
    ]  # SigLIP at its context over CLIP as served
    siglip_rate = models["siglip"]["figures"]["text_full"]["per_s"]
    clip_rate = models["clip"]["figures"]["text_dynamic"]["per_s"]
    assert served["ratio"] == pytest.approx(siglip_rate / clip_rate)  # one round: the ratio of the rates
    assert len(result["ratios"]) == 5 and all(r["ratio"] > 0 for r in result["ratios"].values())
    assert "| figure | CLIP ViT-B/16 (tiny) | SigLIP-B/16 (tiny) |" in done.stdout
    assert "text, batch 32, as served: CLIP" in done.stdout
