"""Import a published CLIP checkpoint from a local file: `zeroshot import openai|open_clip|hf`.

Three sources, two naming schemes. OpenAI's release files are TorchScript archives whose state_dict
carries OpenAI's names (ours); open_clip saves the same names for its standard CLIP models, often
inside a training checkpoint {"epoch", "state_dict", ...} with DDP's `module.` prefixes; Hugging Face
folders (config.json + safetensors or pytorch_model.bin) use transformers' names, mapped in
model/weights.py; SigLIP folders (SiglipModel, model_type 'siglip') are mapped in model/siglip_weights.py
onto model/siglip.py, with their processor's preprocessing and tokenizer (model/siglip_import.py).
The imported model becomes an ONNX bundle (through the usual parity-checked export)
and a zeroshot training checkpoint, so it can be served and fine-tuned.
"""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from model.checkpoints import save_checkpoint
from model.clip import CLIP, Activation, count_parameters
from model.siglip import SigLIP, SiglipConfig
from model.siglip_weights import describe_siglip, is_siglip_config, siglip_from_hf
from model.weights import WeightsError, describe, model_from_hf, model_from_openai

log = logging.getLogger(__name__)

Source = Literal["openai", "open_clip", "hf"]
SOURCES: tuple[Source, ...] = ("openai", "open_clip", "hf")

# open_clip's ViT-H configs (model_configs/ViT-H-*.json) use 80 channels per head; every other ViT it
# or OpenAI publishes with our block shape uses 64. Weights cannot tell, so the width identifies them.
# (ViT-g and ViT-bigG also change the MLP ratio, which our blocks do not support: their shapes do not fit.)
_OPENCLIP_VISION_HEAD_WIDTH = {1280: 80}
M = TypeVar("M", CLIP, SigLIP)
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass
class Imported:
    model: CLIP | SigLIP
    source: Source
    path: Path
    activation: str

    @property
    def folder(self) -> Path:
        """The checkpoint's folder (where an hf import finds its processor and tokenizer files)."""
        return self.path if self.path.is_dir() else self.path.parent

    def summary(self) -> str:
        n, image = count_parameters(self.model), count_parameters(self.model.visual)
        cfg = self.model.config
        arch = describe_siglip(cfg) if isinstance(cfg, SiglipConfig) else describe(cfg)
        return (
            f"{arch}; activation {self.activation}; "
            f"{n / 1e6:.2f}M parameters (image tower {image / 1e6:.2f}M, text {(n - image) / 1e6:.2f}M)"
        )


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold code/ and constants.pkl; torch.save's zip files hold neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def read_tensor_file(path: Path) -> Any:
    """The contents of a TorchScript archive (its state_dict), a torch.save file or a safetensors file."""
    if not path.exists():
        raise WeightsError(f"{path} does not exist")
    if not path.is_file():
        raise WeightsError(f"{path} is not a file: give the checkpoint file itself")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # deprecated, but OpenAI's release files are TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as e:  # TorchScript raises RuntimeError and friends for foreign archives
            raise WeightsError(f"{path}: the TorchScript archive cannot be loaded: {e}") from None
    try:
        # weights_only: a checkpoint is data; never run the pickled code of a downloaded file
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not its own
        raise WeightsError(
            f"{path} is not a CLIP checkpoint: neither a TorchScript archive, a torch state_dict nor "
            f"safetensors ({type(e).__name__})"
        ) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file: {e}") from None


def state_dict_of(obj: Any, path: Path) -> dict[str, Any]:
    """Unwrap a training checkpoint ({"state_dict": ...}) and DDP's `module.` prefixes."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state_dict of named tensors")
    if all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def read_hf_folder(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and config.json of a folder written by transformers' `save_pretrained`."""
    if not path.exists():
        raise WeightsError(f"{path} does not exist")
    folder = path if path.is_dir() else path.parent
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise WeightsError(
            f"{folder} has no config.json: `import hf` takes a folder written by save_pretrained"
        ) from None
    except ValueError as e:
        raise WeightsError(f"{folder / 'config.json'} is not valid JSON: {e}") from None
    if config.get("model_type") != "clip" and not is_siglip_config(config):  # refuses NaFlex SigLIP 2
        raise WeightsError(
            f"unsupported architecture: model_type {config.get('model_type')!r} in {folder / 'config.json'}; "
            "transformers' CLIPModel ('clip') and SiglipModel ('siglip') are supported"
        )
    found = [folder / n for n in _HF_WEIGHTS if (folder / n).is_file()]
    files = [path] if path.is_file() and path.name != "config.json" else found[:1]
    if not files:
        raise WeightsError(f"{folder} has no weights: expected one of {', '.join(_HF_WEIGHTS)}")
    if files[0].name.endswith(".index.json"):  # sharded: the index maps each tensor to its file
        shards = json.loads(files[0].read_text()).get("weight_map", {}).values()
        files = [folder / s for s in sorted(set(shards))]
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(state_dict_of(read_tensor_file(f), f))
    return sd, config


def load_published(source: Source, path: str | Path, activation: Activation | None = None) -> Imported:
    """Read a published checkpoint into our CLIP; WeightsError says why when it cannot."""
    path = Path(path)
    if source == "hf":
        if activation is not None:
            raise WeightsError("--activation does not apply to hf: config.json's hidden_act says it")
        sd, config = read_hf_folder(path)
        if config.get("model_type") != "clip":
            siglip = _build(lambda: siglip_from_hf(sd, config))
            return Imported(siglip, source, path, siglip.config.activation)
        model = _build(lambda: model_from_hf(sd, config))
        return Imported(model, source, path, model.config.activation)
    if source not in ("openai", "open_clip"):
        raise WeightsError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    if source == "openai" and activation not in (None, "quick_gelu"):
        raise WeightsError("OpenAI's weights were trained with QuickGELU: --activation gelu does not apply")
    # open_clip's own configs (e.g. ViT-B-32) use nn.GELU; only its `-quickgelu` variants use QuickGELU
    act: Activation = activation or ("quick_gelu" if source == "openai" else "gelu")
    sd = state_dict_of(read_tensor_file(path), path)
    head_width = 64
    if source == "open_clip" and "visual.conv1.weight" in sd and "visual.proj" in sd:
        head_width = _OPENCLIP_VISION_HEAD_WIDTH.get(int(sd["visual.conv1.weight"].shape[0]), 64)
    model = _build(lambda: model_from_openai(sd, act, head_width))
    return Imported(model, source, path, act)


def _build(make: Callable[[], M]) -> M:
    try:
        return make()
    except WeightsError:
        raise
    except (ValueError, RuntimeError) as e:  # CLIP() refuses impossible configs with ValueError
        raise WeightsError(f"the inferred architecture cannot be built: {e}") from None


def save_imported_checkpoint(
    model: CLIP | SigLIP, path: Path, source: Mapping[str, str], inputs: dict[str, Any] | None = None
) -> None:
    """A checkpoint that `zeroshot export` and model.train.load_checkpoint accept (step 0, no optimizer);
    `inputs`: the model's tokenizer and preprocessing when not CLIP's (model/checkpoint_inputs.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "step": 0,
        "source": dict(source),
    } | ({"inputs": inputs} if inputs is not None else {})
    save_checkpoint(path, ckpt)
