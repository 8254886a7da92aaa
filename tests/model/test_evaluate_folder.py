"""`zeroshot eval --folder`: the default model on a labelled image folder, through its ONNX bundle.

The folder holds rendered shapes of all 36 colour-shape classes (`red_circle/`, ...) as PNG and
JPEG files, plus broken files that must be skipped and counted. The figures must land in eval.json
and in the server's /v1/models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from model.bundle.format import current_bundle, set_current
from model.bundle.prompts import TemplateError, get_templates, load_templates
from model.cli import main
from model.data.synthetic import all_classes
from model.evaluate import evaluate_folder, format_report
from tests.conftest import DEFAULT_MODEL_DIR, make_shape_folder

PER_CLASS = 3
CLASSES = 36
BROKEN = {
    "red_circle/zz_truncated.jpg": "truncated",
    "blue_square/zz_text.jpg": "not a recognised image",
    "green_star/zz_empty.png": "empty",
}


def make_folder(root: Path) -> None:
    """PER_CLASS images of every class, PNG and JPEG in turn, then the broken files (sorted last)."""
    make_shape_folder(root, PER_CLASS, CLASSES)
    jpeg = (root / "red_circle" / "0036.jpg").read_bytes()
    (root / "red_circle" / "zz_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "blue_square" / "zz_text.jpg").write_text("a caption, not an image")
    (root / "green_star" / "zz_empty.png").write_bytes(b"")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A private copy of the default bundle (so eval.json writes never touch models/default)."""
    if not (DEFAULT_MODEL_DIR / "CURRENT").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} has no CURRENT: run `make setup` first (make test does)")
    tmp = tmp_path_factory.mktemp("evalfolder")
    models = tmp / "models"
    src = current_bundle(DEFAULT_MODEL_DIR).path
    bundle = models / "m" / src.name  # a bundle's folder name is its version
    shutil.copytree(src, bundle)
    set_current(models / "m", src.name)
    make_folder(tmp / "shapes")
    original = json.loads((bundle / "eval.json").read_text())
    report = evaluate_folder(bundle, tmp / "shapes", ["synthetic", "default"])
    return {"tmp": tmp, "models": models, "bundle": bundle, "report": report, "original": original}


def test_accuracy_is_far_above_chance(env: dict[str, Any]) -> None:
    report = env["report"]
    sm = report["summary"]
    assert sm["dataset"] == "folder" and sm["template_set"] == "synthetic" and sm["classes"] == CLASSES
    assert sm["images"] == CLASSES * PER_CLASS and sm["skipped"] == len(BROKEN)
    assert sm["top1"] >= 0.85, format_report(report)  # chance is 1/36 = 2.8%
    assert sm["top5"] >= sm["top1"] and sm["mean_per_class_recall"] >= 0.85
    assert sm["top1"] == report["results"]["synthetic"]["top1"]
    assert report["results"]["default"]["top1"] >= 0.5
    per_class = report["results"]["synthetic"]["per_class_top1"]
    assert sorted(per_class) == sorted(f"{c} {s}" for c, s in all_classes())  # underscores -> spaces
    reasons = {Path(f["path"]).relative_to(env["tmp"] / "shapes").as_posix(): f["reason"]
               for f in report["skipped_files"]}  # fmt: skip
    assert sorted(reasons) == sorted(BROKEN)
    for name, needle in BROKEN.items():
        assert needle in reasons[name], reasons


def test_figures_land_in_eval_json_and_v1_models(env: dict[str, Any]) -> None:
    saved = json.loads((env["bundle"] / "eval.json").read_text())
    sm = env["report"]["summary"]
    assert (
        saved["summary"] == sm
        and saved["results"]["default"]["top1"] == env["report"]["results"]["default"]["top1"]
    )
    # the synthetic report that was there is kept, not erased
    # (under its key: "synthetic", or "synthetic:int8" after `zeroshot eval --image-precision int8`)
    original = env["original"]
    key = "synthetic" + ("" if original.get("image_precision", "fp32") == "fp32" else ":int8")
    assert saved["other_reports"][key]["summary"]["heldout_top1"] == original["summary"]["heldout_top1"]
    settings = Settings(models_dir=env["models"], model_name="m", device="cpu")
    with TestClient(create_app(settings)) as c:
        shown = c.get("/v1/models").json()["eval"]
    for key in ("top1", "top5", "mean_per_class_recall", "images", "skipped", "template_set", "dataset"):
        assert shown[key] == sm[key], key


def test_limit_takes_classes_in_turn(env: dict[str, Any]) -> None:
    report = evaluate_folder(
        env["bundle"], env["tmp"] / "shapes", ["synthetic"], limit=CLASSES + 5, write=False
    )
    sm = report["summary"]
    assert sm["images"] == CLASSES + 5 and sm["skipped"] == 0  # broken files sort last in their class
    assert len(report["results"]["synthetic"]["per_class_top1"]) == CLASSES  # every class once first
    assert sm["top1"] >= 0.8


def test_template_files(env: dict[str, Any], tmp_path: Path) -> None:
    lines = tmp_path / "shapes.txt"
    lines.write_text("# shape prompts\na {}.\n\n  a picture of a {}.  \n")
    assert load_templates(str(lines)) == ("a {}.", "a picture of a {}.")
    as_json = tmp_path / "shapes.json"
    as_json.write_text(json.dumps(["an image of a {}.", "there is a {}."]))
    assert load_templates(str(as_json)) == ("an image of a {}.", "there is a {}.")
    assert (
        load_templates("imagenet80") == get_templates("imagenet80") and len(load_templates("imagenet7")) == 7
    )
    (tmp_path / "bad.txt").write_text("a {} and a {}\n")
    with pytest.raises(TemplateError, match=r"bad\.txt: template 0 .* exactly one"):
        load_templates(str(tmp_path / "bad.txt"))
    (tmp_path / "bad.json").write_text('["a {}", ')
    with pytest.raises(TemplateError, match="does not parse"):
        load_templates(str(tmp_path / "bad.json"))
    with pytest.raises(TemplateError, match=r"neither a template set \(default, imagenet7"):
        load_templates("klingon")
    report = evaluate_folder(env["bundle"], env["tmp"] / "shapes", [str(lines)], limit=72, write=False)
    assert report["summary"]["template_set"] == str(lines) and report["summary"]["top1"] >= 0.8


def zeroshot(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "model.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_eval_folder(env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / env["bundle"].name
    shutil.copytree(env["bundle"], bundle)
    folder = str(env["tmp"] / "shapes")
    r = zeroshot("eval", str(bundle), "--folder", folder, "--templates", "synthetic,default", "--limit", "72")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["templates", "top-1", "top-5", "mean", "per-class", "recall"]
    rows = {ln.split()[0]: [float(x.rstrip("%")) for x in ln.split()[1:]] for ln in lines[1:3]}
    assert set(rows) == {"synthetic", "default"} and rows["synthetic"][0] >= 80.0
    assert f"72 images of 36 classes in {Path(folder).resolve()}" in r.stdout
    saved = json.loads((bundle / "eval.json").read_text())["summary"]
    assert saved["images"] == 72 and abs(100 * saved["top1"] - rows["synthetic"][0]) < 0.051
    for args, needle in [
        (("--limit", "5"), "--limit applies to --folder evaluation only"),
        (("--folder", str(tmp_path / "nope")), "does not exist"),
        (("--folder", folder, "--templates", str(tmp_path / "t.txt")), "neither a template set"),
    ]:  # in-process: the same main() as the command, without four more interpreter start-ups
        assert main(["eval", str(bundle), *args]) == 1
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if ln.startswith("zeroshot: error: ")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err
    # a flag out of range is argparse's one line, exit 2, before anything is read
    with pytest.raises(SystemExit) as stopped:
        main(["eval", str(bundle), "--folder", folder, "--limit", "0"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "argument --limit: must be an integer >= 1, not '0'" in err, err
