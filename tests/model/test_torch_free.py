"""The modules that the server imports must not pull in torch (the serving image carries none)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_torch_free_modules_do_not_import_torch() -> None:
    code = (
        "import model.bundle, model.tokenizer, model.preprocess, model.prompts; "
        "import sys; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_serving_path_and_evaluation_do_not_import_torch() -> None:
    """The ONNX encoders, the classifier maths and `zeroshot eval` run without torch."""
    code = (
        "import app.runtime.encoders, app.runtime.classifier, model.evaluate, model.data.synthetic; "
        "import sys; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
