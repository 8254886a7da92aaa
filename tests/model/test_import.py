"""`zeroshot import openai|open_clip|hf`: architecture inference, file formats, errors, and parity of
the imported ONNX bundles with independent implementations (not with our own model):

- a random `transformers` CLIPModel at ViT-B/32 size, saved with save_pretrained -> `import hf`,
  compared with transformers' get_image_features/get_text_features;
- a random open_clip ViT-B-32 (nn.GELU) saved as open_clip's DDP training checkpoint -> `import
  open_clip`, and a random open_clip ViT-B-32-quickgelu saved as an OpenAI-style fp16 TorchScript
  archive -> `import openai`, both compared with open_clip's own features. open_clip needs torchvision,
  which cannot live beside this venv's torch: tests/model/openclip_reference.py runs in .venv-openclip.

Features are compared L2-normalized, max abs diff <= 1e-4, on real photos (preprocessed with the
bundle's own preprocessing) and 150+ varied prompts, all through the bundle's ONNX encoders.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.bundle.encoders import OnnxEncoders
from model.bundle.format import Bundle, current_bundle, load_bundle
from model.bundle.preprocess import PreprocessConfig, preprocess_image
from model.bundle.prompts import fill, get_templates
from model.bundle.tokenizer import ClipTokenizer
from model.cli import main
from model.clip import CLIP, PRESETS, CLIPConfig, TextConfig, VisionConfig
from model.importer import load_published
from model.train import load_checkpoint, model_from_checkpoint
from model.weights import config_from_openai
from tests.conftest import ROOT, photos

TOL = 1e-4
OPENCLIP_PYTHON = ROOT / ".venv-openclip" / "bin" / "python"
REFERENCE_SCRIPT = Path(__file__).with_name("openclip_reference.py")
LABELS = [
    "dog",
    "tabby cat",
    "astronaut in a white suit",
    "cup of coffee",
    "rocket on a launch pad",
    "Golden Retriever",
    "a 1960s car",
    "résumé",
    "東京タワー",
    "pizza 🍕",
    "O'Reilly's book",
    "AT&amp;T logo",
    "two   spaces",
    "Ünïcödé façade",
]


def prompts() -> list[str]:
    texts = [p for label in LABELS for p in fill(get_templates("imagenet80")[:11], label)]
    texts += ["", "a", "x " * 120, "12345 67.89", "HELLO World!!!", "line\nbreak\ttab"]
    assert len(texts) >= 150
    return texts


def photo_pixels(pre: PreprocessConfig) -> np.ndarray:
    return np.stack([preprocess_image(Image.fromarray(a), pre) for a in photos().values()])


def import_cli(kind: str, path: Path, out: Path, *extra: str) -> Bundle:
    rc = main(["import", kind, str(path), "--out", str(out), "--version", "v1", *extra])
    assert rc == 0
    return current_bundle(out)


def bundle_features(bundle: Bundle, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels made with the bundle's own preprocessing, and its ONNX image and text features."""
    enc = OnnxEncoders(bundle, device="cpu")
    pixels = photo_pixels(enc.preprocess)
    return pixels, enc.encode_images(pixels), enc.encode_texts(texts, batch_size=64)  # dynamic padding


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


# --- architecture inference -----------------------------------------------------------------------


def _meta_state_dict(cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # shapes only: no memory, no time, even for RN50x64
        return CLIP(cfg).state_dict()


def _effective_heads(cfg: CLIPConfig) -> CLIPConfig:
    return replace(cfg, vision=replace(cfg.vision, heads=cfg.vision.num_heads()))


def _follows_openai_heads(cfg: CLIPConfig) -> bool:
    v = cfg.vision
    rule = v.width * 32 // 64 if v.kind == "resnet" else v.width // 64
    return v.num_heads() == rule and cfg.text.heads == cfg.text.width // 64


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_inferred_from_each_preset(name: str) -> None:
    cfg = PRESETS[name]
    got = config_from_openai(_meta_state_dict(cfg), cfg.activation)
    if _follows_openai_heads(cfg):  # every OpenAI architecture: the weights say it all
        assert _effective_heads(got) == _effective_heads(cfg)
    else:  # our own small presets choose head counts that no weight shape records
        assert replace(got, vision=replace(got.vision, heads=0), text=replace(got.text, heads=0)) == replace(
            cfg, vision=replace(cfg.vision, heads=0), text=replace(cfg.text, heads=0)
        )
        assert (got.vision.num_heads(), got.text.heads) != (cfg.vision.num_heads(), cfg.text.heads)


_TEXT_640 = TextConfig(width=640, heads=10)
OPENAI_RELEASES = {  # OpenAI's published models that are not presets (dimensions from its model card)
    "ViT-L/14@336px": CLIPConfig(
        768, VisionConfig("vit", 336, 1024, 24, 14), TextConfig(width=768, heads=12)
    ),
    "RN101": CLIPConfig(512, VisionConfig("resnet", 224, 64, (3, 4, 23, 3)), TextConfig()),
    "RN50x4": CLIPConfig(640, VisionConfig("resnet", 288, 80, (4, 6, 10, 6)), _TEXT_640),
    "RN50x16": CLIPConfig(
        768, VisionConfig("resnet", 384, 96, (6, 8, 18, 8)), TextConfig(width=768, heads=12)
    ),
    "RN50x64": CLIPConfig(
        1024, VisionConfig("resnet", 448, 128, (3, 15, 36, 10)), TextConfig(width=1024, heads=16)
    ),
}


@pytest.mark.parametrize("name", sorted(OPENAI_RELEASES))
def test_config_inferred_for_openai_releases(name: str) -> None:
    cfg = OPENAI_RELEASES[name]
    sd = _meta_state_dict(cfg)
    sd["input_resolution"] = torch.tensor(cfg.vision.image_size)  # as OpenAI's archives carry
    assert config_from_openai(sd) == cfg


# --- file formats, on a small random model ---------------------------------------------------------

SMALL = CLIPConfig(64, VisionConfig("vit", 32, 64, 2, 16), TextConfig(width=64, heads=1, layers=2))


@pytest.fixture(scope="module")
def small_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in CLIP(SMALL).state_dict().items()}


def _variants(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    return {
        "plain": sd,
        "module_prefix": prefixed,
        "training_checkpoint": {"epoch": 2, "name": "run", "state_dict": prefixed},
        "training_checkpoint_no_prefix": {"epoch": 2, "state_dict": sd},
    }


@pytest.mark.parametrize(
    "variant",
    ["plain", "module_prefix", "training_checkpoint", "training_checkpoint_no_prefix", "safetensors"],
)
def test_open_clip_state_dict_with_and_without_module_prefix(
    variant: str, small_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / ("w.safetensors" if variant == "safetensors" else "w.pt")
    if variant == "safetensors":
        from safetensors.torch import save_file

        save_file(small_sd, str(path))
    else:
        torch.save(_variants(small_sd)[variant], path)
    imported = load_published("open_clip", path)
    assert imported.activation == "gelu"  # open_clip's default
    assert imported.model.config == replace(SMALL, activation="gelu")
    got = imported.model.state_dict()
    assert set(got) == set(small_sd)
    assert all(torch.equal(got[k], small_sd[k]) for k in small_sd)


def test_openai_plain_state_dict_fp16_and_archive_entries(
    small_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    sd: dict[str, Any] = {k: v.half() if v.is_floating_point() else v for k, v in small_sd.items()}
    sd |= {
        "input_resolution": torch.tensor(32),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(49408),
    }
    torch.save(sd, tmp_path / "w.pt")
    imported = load_published("openai", tmp_path / "w.pt")
    assert imported.activation == "quick_gelu" and imported.model.config == SMALL
    w = imported.model.state_dict()["token_embedding.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, small_sd["token_embedding.weight"].half().float())


def test_import_defaults_no_publish_and_checkpoint(
    small_sd: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.save({"state_dict": {f"module.{k}": v for k, v in small_sd.items()}}, tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)  # the default checkpoint path is relative: runs/import-NAME/imported.pt
    assert main(["import", "open_clip", "w.pt", "--out", "models/small", "--no-publish"]) == 0
    assert not (tmp_path / "models" / "small" / "CURRENT").exists()
    (version,) = [p for p in (tmp_path / "models" / "small").iterdir() if p.is_dir()]
    bundle = load_bundle(version)
    ckpt_path = tmp_path / "runs" / "import-small" / "imported.pt"
    assert bundle.manifest["source"] == {
        "kind": "open_clip",
        "path": "w.pt",
        "checkpoint": "runs/import-small/imported.pt",
    }
    assert bundle.manifest["architecture"]["activation"] == "gelu"
    assert PreprocessConfig.from_dict(bundle.manifest["preprocessing"]) == PreprocessConfig(image_size=32)
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["step"] == 0 and ckpt["source"]["kind"] == "open_clip"
    model = model_from_checkpoint(ckpt)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in small_sd.items())


@pytest.mark.parametrize("layout", ["sharded_safetensors", "pytorch_model_bin"])
def test_hf_folder_layouts(layout: str, tmp_path: Path) -> None:
    """The other two ways transformers stores a model; tiny, so compared in torch only."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tiny = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2, "num_hidden_layers": 2}
    cfg = transformers.CLIPConfig(
        text_config=tiny, vision_config={**tiny, "image_size": 32, "patch_size": 16}, projection_dim=32
    )
    hf = transformers.CLIPModel(cfg).eval()
    if layout == "sharded_safetensors":
        hf.save_pretrained(tmp_path, max_shard_size="2MB")
        assert len(list(tmp_path.glob("model-*.safetensors"))) > 1  # read through the index
    else:
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    imported = load_published("hf", tmp_path)
    assert imported.model.config.vision.heads == 2 and imported.model.config.text.heads == 2  # config.json
    pixels = torch.randn(3, 3, 32, 32)
    ids = torch.from_numpy(ClipTokenizer.clip_bpe().encode_batch(["a dog", "résumé", "x " * 90], pad_to=77))
    with torch.no_grad():
        ref = [hf.get_image_features(pixel_values=pixels), hf.get_text_features(input_ids=ids)]
        got = [imported.model.encode_image(pixels), imported.model.encode_text(ids)]
    for r, g in zip(ref, got, strict=True):
        r = getattr(r, "pooler_output", r)
        assert max_diff(F.normalize(g, dim=-1).numpy(), F.normalize(r, dim=-1).numpy()) <= TOL


# --- errors: one line, exit 1, nothing written -----------------------------------------------------


def _broken(sd: dict[str, torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    sd = dict(sd)
    if case == "missing tensors":
        del sd["ln_final.weight"]
    elif case == "missing embedding":
        del sd["token_embedding.weight"]
    elif case == "extra tensors":
        sd["logit_bias"] = torch.zeros(1)  # SigLIP-style open_clip models carry one
    elif case == "unsupported tower":
        sd = {k: v for k, v in sd.items() if not k.startswith("visual.")}
        sd["visual.trunk.stem.0.weight"] = torch.zeros(8, 3, 4, 4)  # a timm image tower
    elif case == "shapes":
        sd["transformer.resblocks.0.mlp.c_fc.weight"] = torch.zeros(300, 64)  # MLP ratio not 4
    return sd


ERRORS = {  # case -> what the one-line message must say
    "missing file": "does not exist",
    "folder for openai": "is not a file",
    "not a checkpoint": "is not a CLIP checkpoint",
    "not a state_dict": "not a state_dict",
    "missing tensors": "missing tensors for ViT-64x2/16",
    "missing embedding": "token_embedding.weight is missing",
    "extra tensors": "unsupported architecture: tensors that ViT-64x2/16",
    "unsupported tower": "unsupported image tower",
    "shapes": "shapes do not fit",
    "hf without config": "has no config.json",
    "hf not clip": "unsupported architecture: model_type 'bert'",
    "openai with gelu": "trained with QuickGELU",
}


def _error_case(case: str, sd: dict[str, torch.Tensor], d: Path) -> list[str]:
    """Write the broken input for `case` into d; return the import arguments that read it."""
    f = d / "w.pt"
    if case == "missing file":
        return ["openai", str(d / "nope.pt")]
    if case == "folder for openai":
        return ["openai", str(d)]
    if case == "not a checkpoint":
        f.write_text("hello")
    elif case == "not a state_dict":
        torch.save([1, 2], f)
    elif case.startswith("hf"):
        if case == "hf not clip":
            (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
        return ["hf", str(d)]
    elif case == "openai with gelu":
        torch.save(sd, f)
        return ["openai", str(f), "--activation", "gelu"]
    else:
        torch.save(_broken(sd, case), f)
    return ["openai" if case in ("missing embedding", "shapes") else "open_clip", str(f)]


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_one_line(
    case: str, small_sd: dict[str, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    args = _error_case(case, small_sd, src)
    out = tmp_path / "models" / "m"
    rc = main(["import", *args[:2], "--out", str(out), "--checkpoint-out", str(tmp_path / "c.pt"), *args[2:]])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln]
    assert rc == 1
    assert len(lines) == 1 and lines[0].startswith("zeroshot: error: "), err
    assert ERRORS[case] in lines[0], lines[0]
    assert not out.exists() and not (tmp_path / "c.pt").exists()


# --- parity with transformers (hf) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_import(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """transformers' features for the photos and prompts, and the bundle `zeroshot import hf` made."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    # gelu (not CLIP's quick_gelu) so that the test shows the activation is read from config.json
    cfg = transformers.CLIPConfig(
        text_config={"hidden_act": "gelu"}, vision_config={"hidden_act": "gelu"}, projection_dim=512
    )
    hf = transformers.CLIPModel(cfg).eval()
    assert hf.config.vision_config.hidden_size == 768 and hf.config.vision_config.patch_size == 32
    hf.save_pretrained(d / "hf")
    assert (d / "hf" / "model.safetensors").is_file() and (d / "hf" / "config.json").is_file()
    pixels = photo_pixels(PreprocessConfig(image_size=224))
    ids = ClipTokenizer.clip_bpe().encode_batch(prompts(), pad_to=77)
    with torch.no_grad():
        img = hf.get_image_features(pixel_values=torch.from_numpy(pixels))
        txt = hf.get_text_features(input_ids=torch.from_numpy(ids))
    img, txt = getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)  # transformers 5
    del hf
    bundle = import_cli("hf", d / "hf", d / "models" / "hf", "--checkpoint-out", str(d / "hf.pt"))
    return {
        "pixels": pixels,
        "image": F.normalize(img, dim=-1).numpy(),
        "text": F.normalize(txt, dim=-1).numpy(),
        "bundle": bundle,
    }


def test_hf_import_matches_transformers(hf_import: dict[str, Any]) -> None:
    bundle = hf_import["bundle"]
    assert bundle.manifest["architecture"]["activation"] == "gelu"  # from config.json
    assert bundle.manifest["source"]["kind"] == "hf"
    pixels, img, txt = bundle_features(bundle, prompts())
    assert np.array_equal(pixels, hf_import["pixels"])
    assert max_diff(img, hf_import["image"]) <= TOL
    assert max_diff(txt, hf_import["text"]) <= TOL
    assert max_diff(img[0], img[1]) > 0.01  # the photos really give different features


# --- parity with open_clip (open_clip and openai) --------------------------------------------------


@pytest.fixture(scope="module")
def openclip_ref(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run tests/model/openclip_reference.py in .venv-openclip on our pixels and token ids."""
    if not OPENCLIP_PYTHON.exists():
        pytest.fail(
            f"{OPENCLIP_PYTHON} is missing: `make setup` creates .venv-openclip (open_clip + torchvision)"
        )
    d = tmp_path_factory.mktemp("openclip")
    pixels = photo_pixels(PreprocessConfig(image_size=224))
    texts = prompts()
    ids = ClipTokenizer.clip_bpe().encode_batch(texts, pad_to=77)
    arrays = {"pixels": pixels, "ids": ids, "texts": np.array(texts)}
    arrays |= {f"photo_{i}": a for i, a in enumerate(photos().values())}  # for open_clip's preprocessing
    np.savez(d / "inputs.npz", **arrays)
    r = subprocess.run(
        [str(OPENCLIP_PYTHON), str(REFERENCE_SCRIPT), str(d)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ref = dict(np.load(d / "features.npz"))
    return {"dir": d, "pixels": pixels, "ids": ids, **ref}


@pytest.fixture(scope="module")
def openclip_bundle(openclip_ref: dict[str, Any]) -> Bundle:
    d = openclip_ref["dir"]
    return import_cli(
        "open_clip", d / "open_clip.pt", d / "models" / "oc", "--checkpoint-out", str(d / "oc.pt")
    )


@pytest.fixture(scope="module")
def openai_bundle(openclip_ref: dict[str, Any]) -> Bundle:
    d = openclip_ref["dir"]
    return import_cli("openai", d / "openai.pt", d / "models" / "oa", "--checkpoint-out", str(d / "oa.pt"))


def test_reference_files_are_what_the_sources_publish(openclip_ref: dict[str, Any]) -> None:
    d = openclip_ref["dir"]
    assert str(openclip_ref["versions"][0]).startswith("2.14.1")  # written by another torch than ours
    ckpt = torch.load(d / "open_clip.pt", map_location="cpu", weights_only=True)
    assert {"epoch", "state_dict"} <= set(ckpt)
    assert all(k.startswith("module.") for k in ckpt["state_dict"])
    with warnings.catch_warnings():  # torch.jit is deprecated, but it is how OpenAI's clip.load reads them
        warnings.simplefilter("ignore", DeprecationWarning)
        sd = torch.jit.load(str(d / "openai.pt"), map_location="cpu").state_dict()
    assert sd["visual.proj"].dtype == torch.float16 and int(sd["input_resolution"]) == 224
    # open_clip's own tokenizer and preprocessing agree with ours, so only the models are compared
    assert np.array_equal(openclip_ref["open_clip_ids"], openclip_ref["ids"])
    assert max_diff(openclip_ref["open_clip_pixels"], openclip_ref["pixels"]) <= 1e-6


def test_open_clip_import_matches_open_clip(openclip_ref: dict[str, Any], openclip_bundle: Bundle) -> None:
    assert openclip_bundle.manifest["architecture"]["activation"] == "gelu"
    pixels, img, txt = bundle_features(openclip_bundle, prompts())
    assert np.array_equal(pixels, openclip_ref["pixels"])
    assert max_diff(img, openclip_ref["open_clip_image"]) <= TOL
    assert max_diff(txt, openclip_ref["open_clip_text"]) <= TOL
    assert max_diff(img[0], img[1]) > 0.01


def test_openai_archive_import_matches_open_clip_quickgelu(
    openclip_ref: dict[str, Any], openai_bundle: Bundle
) -> None:
    assert openai_bundle.manifest["architecture"]["activation"] == "quick_gelu"
    pixels, img, txt = bundle_features(openai_bundle, prompts())
    assert np.array_equal(pixels, openclip_ref["pixels"])
    assert max_diff(img, openclip_ref["openai_image"]) <= TOL
    assert max_diff(txt, openclip_ref["openai_text"]) <= TOL
    assert max_diff(txt[0], txt[1]) > 0.01


def test_wrong_activation_is_detectable(openclip_ref: dict[str, Any]) -> None:
    """The QuickGELU rule matters: the same weights with the other activation miss the reference."""
    imported = load_published("open_clip", openclip_ref["dir"] / "open_clip.pt", activation="quick_gelu")
    with torch.no_grad():
        txt = F.normalize(imported.model.encode_text(torch.from_numpy(openclip_ref["ids"][:32])), dim=-1)
    assert max_diff(txt.numpy(), openclip_ref["open_clip_text"][:32]) > 5 * TOL


def test_imported_checkpoint_reloads(openclip_ref: dict[str, Any], openclip_bundle: Bundle) -> None:
    d = openclip_ref["dir"]
    assert openclip_bundle.manifest["source"] == {
        "kind": "open_clip",
        "path": str(d / "open_clip.pt"),
        "checkpoint": str(d / "oc.pt"),
    }
    model = model_from_checkpoint(load_checkpoint(d / "oc.pt"))
    with torch.no_grad():
        txt = F.normalize(model.encode_text(torch.from_numpy(openclip_ref["ids"][:32])), dim=-1)
    assert max_diff(txt.numpy(), openclip_ref["open_clip_text"][:32]) <= TOL
