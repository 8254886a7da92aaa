"""The modules that the server imports must not pull in torch (the serving image carries none)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "modules",
    [
        "model.bundle.format, model.bundle.tokenizer, model.bundle.preprocess, model.bundle.prompts",
        # the ONNX encoders, the zero-shot maths and `zeroshot eval` also run without torch
        "model.bundle.encoders, model.bundle.zeroshot, model.evaluate, model.data.synthetic",
        "app.main, app.serve",  # the whole service, and how `zeroshot serve` runs it
    ],
)
def test_modules_do_not_import_torch(modules: str) -> None:
    code = f"import {modules}; import sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
