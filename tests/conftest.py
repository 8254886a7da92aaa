"""Shared fixtures: real photos, a small random model, and the path of the default bundle."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.siglip_checkpoint import siglip_models

__all__ = ["siglip_models"]  # a session fixture: a tiny SigLIP bundle, for the served-SigLIP tests

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = ROOT / "models" / "default"


def photos() -> dict[str, np.ndarray]:
    """Real photographs bundled with scikit-image (uint8 RGB)."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
    }


def openai_reference(module: str) -> ModuleType:
    """A file of OpenAI's reference implementation, as packaged by clip-anytorch (installed --no-deps).

    `import clip` pulls in torchvision, which cannot live beside this torch build, so the single
    file is loaded by path."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("clip-anytorch is not installed: pip install --no-deps clip-anytorch==2.6.0")
    path = Path(next(iter(spec.submodule_search_locations))) / f"{module}.py"
    name = f"_openai_clip_{module}"
    if name in sys.modules:
        return sys.modules[name]
    mspec = importlib.util.spec_from_file_location(name, path)
    assert mspec and mspec.loader
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[name] = mod
    mspec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def photo_arrays() -> dict[str, np.ndarray]:
    return photos()


def make_shape_folder(root: Path, per_class: int, classes: int = 36, seed: int = 31) -> Path:
    """An image folder `root/<colour>_<shape>/` of rendered synthetic shapes (model/data/shapes_folder.py)."""
    from model.data.shapes_folder import write_image_folder

    return write_image_folder(root, per_class, classes, seed)
