"""`zeroshot calibrate LABEL_SET FOLDER` as a user runs it: the fit written beside the set for the
bundle named, what it prints, and one-line errors for a folder that does not fit the set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.bundle.calibration_store import path_for, read_fits
from model.bundle.format import current_bundle
from model.data.shapes_folder import write_image_folder
from tests.conftest import DEFAULT_MODEL_DIR
from tests.model.test_cli import assert_one_line_error, zeroshot
from tests.servers import require_default_model

LABELS = ["red circle", "red square", "red triangle", "red star"]  # the generator's first four classes


def setup(tmp: Path) -> tuple[Path, Path]:
    """A label set of four classes, and a folder of their images plus `unknown/` (other classes)."""
    sets = tmp / "label-sets"
    sets.mkdir()
    definition = {"name": "reds", "labels": LABELS, "templates": ["a photo of a {}."],
                  "created_at": "2026-12-04T00:00:00+00:00"}  # fmt: skip
    (sets / "reds.json").write_text(json.dumps(definition))
    folder = write_image_folder(tmp / "images", per_class=6, classes=8, seed=3)
    (folder / "unknown").mkdir()
    for sub in [
        p for p in folder.iterdir() if p.name != "unknown" and p.name.replace("_", " ") not in LABELS
    ]:
        for img in sub.iterdir():
            shutil.move(str(img), folder / "unknown" / f"{sub.name}-{img.name}")
        sub.rmdir()
    return sets, folder


@pytest.mark.parametrize("model", ["default", "siglip"])
def test_calibrate_writes_the_fit_for_the_bundle_served(
    model: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if model == "default":
        require_default_model()
        models = DEFAULT_MODEL_DIR
    else:
        models = request.getfixturevalue("siglip_models") / "siglip"
    sets, folder = setup(tmp_path)
    r = zeroshot("calibrate", "reds", str(folder), "--label-sets-dir", str(sets), "--model", str(models))
    assert r.returncode == 0, r.stderr
    assert (
        "calibrated for" in r.stdout and "temperature" in r.stdout and "multi: per-label sigmoid" in r.stdout
    )
    (fit,) = read_fits(path_for(sets, "reds"))
    assert fit.sha == current_bundle(models).sha
    assert fit.figures["images"] == 48 and fit.figures["unknown_images"] == 24
    # a SigLIP bundle refits its own logit; a CLIP one the lexicon's reference
    assert fit.figures["multi_on"] == ("cosine" if model == "siglip" else "cosine - reference")
    if model == "default":  # a trained model: the fit has something to improve
        assert fit.figures["top1"] > 0.9 and fit.figures["ece_after"] <= fit.figures["ece_before"]


def test_a_folder_that_does_not_fit_the_set_is_a_one_line_error(tmp_path: Path) -> None:
    require_default_model()
    sets, folder = setup(tmp_path)
    (folder / "blue_heart").mkdir()
    shutil.copy(next((folder / "red_circle").iterdir()), folder / "blue_heart" / "x.png")
    r = zeroshot(
        "calibrate", "reds", str(folder), "--label-sets-dir", str(sets), "--model", str(DEFAULT_MODEL_DIR)
    )
    assert_one_line_error(r, "blue_heart")
    r = zeroshot(
        "calibrate", "nosuch", str(folder), "--label-sets-dir", str(sets), "--model", str(DEFAULT_MODEL_DIR)
    )
    assert_one_line_error(r, "no label set named 'nosuch'")
    assert not path_for(sets, "reds").exists()  # nothing written by a failed run
