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
        "model.bundle, model.tokenizer, model.preprocess, model.prompts",
        # the ONNX encoders, the classifier maths and `zeroshot eval` also run without torch
        "app.runtime.encoders, app.runtime.classifier, model.evaluate, model.data.synthetic",
        "app.main, app.serve",  # the whole service, and how `zeroshot serve` runs it
    ],
)
def test_modules_do_not_import_torch(modules: str) -> None:
    code = f"import {modules}; import sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
